"""A fake OpenAI Realtime API: the WebSocket wire protocol, served by FastAPI, for tests and demos.

Point :class:`callpipe.services.openai_realtime.OpenAIRealtimeService` at
``ws://127.0.0.1:<port>/v1`` (``callpipe fake-realtime --port P`` runs one). It speaks the
GA event names (``response.output_audio.delta``, ``audio.input.format``); a session that
configures itself the beta way (``input_audio_format: "g711_ulaw"``) gets the beta names
(``response.audio.delta``, ``response.audio_transcript.delta``).

Implemented: ``session.update`` -> ``session.updated``; ``input_audio_buffer.append`` with
server VAD from the audio's energy (``speech_started``/``speech_stopped``, a commit, an
input transcription, and a response when ``create_response``); ``input_audio_buffer.commit``
and ``response.create`` for client-side turn-taking; ``conversation.item.create`` (history,
``function_call_output``); ``response.cancel``; ``conversation.item.truncate`` (checked
against the item's audio length); ``response.done`` with usage; ``error`` for anything else.
A reply streams its μ-law audio faster than real time with transcript deltas, then an
optional function call. Faults: :meth:`FakeRealtimeState.drop_connection` (the socket is
closed mid-reply), ``refuse`` (the handshake is refused: the service is down).

Everything received is recorded per connection (:class:`RealtimeConnection`) so tests can
assert on it: event types, appended audio bytes, truncates, created items.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from fastapi import FastAPI, WebSocket
from fastapi.responses import JSONResponse
from starlette.websockets import WebSocketDisconnect

from callpipe.audio import ulaw_decode, ulaw_encode

__all__ = [
    "FakeRealtimeReply",
    "FakeRealtimeState",
    "RealtimeConnection",
    "create_fake_realtime_app",
    "serve_fake_realtime",
    "tone_ulaw",
]

logger = logging.getLogger("callpipe.sim")

_ids = itertools.count(1)
_BYTES_PER_MS = 8  # μ-law at 8 kHz


def _id(prefix: str) -> str:
    return f"{prefix}_{next(_ids):06d}"


def tone_ulaw(secs: float, freq: float = 440.0, level: float = 0.3) -> bytes:
    """``secs`` of a sine tone as μ-law at 8 kHz (the fake model's "voice")."""
    samples = int(secs * 8000)
    peak = int(32767 * level)
    pcm = b"".join(
        int(peak * math.sin(2 * math.pi * freq * i / 8000)).to_bytes(2, "little", signed=True)
        for i in range(samples)
    )
    return ulaw_encode(pcm)


@dataclass(slots=True)
class FakeRealtimeReply:
    """What the fake model answers: ``text`` spoken as ``audio`` (μ-law; a tone by default), then a tool call."""

    text: str = ""
    audio: bytes | None = None
    tool: str | None = None
    arguments: dict[str, Any] = field(default_factory=dict)

    def audio_bytes(self) -> bytes:
        """The reply's μ-law audio (0.25 s of tone per word when none was given)."""
        if self.audio is not None:
            return self.audio
        words = len(self.text.split())
        if not words:
            return b""
        return tone_ulaw(0.25 * words)


@dataclass
class RealtimeConnection:
    """What one client connection sent (and what the fake did), for tests."""

    model: str
    headers: dict[str, str]
    events: list[dict[str, Any]] = field(default_factory=list)
    audio: bytearray = field(default_factory=bytearray)
    truncates: list[dict[str, Any]] = field(default_factory=list)
    items: list[dict[str, Any]] = field(default_factory=list)
    session: dict[str, Any] = field(default_factory=dict)
    speech_started_at: list[float] = field(default_factory=list)
    closed: bool = False

    def types(self) -> list[str]:
        """The event types received, in order."""
        return [str(e.get("type")) for e in self.events]

    @property
    def beta(self) -> bool:
        """Whether the client configured the session the beta way (``input_audio_format``)."""
        return "input_audio_format" in self.session


Responder = Callable[[RealtimeConnection, list[dict[str, Any]]], FakeRealtimeReply]


class FakeRealtimeState:
    """The fake's configuration, its faults and every connection it served."""

    def __init__(
        self,
        *,
        api_key: str | None = None,
        replies: Sequence[FakeRealtimeReply | str] = (),
        transcripts: Sequence[str] = ("hello there",),
        greeting: FakeRealtimeReply | str | None = None,
        chunk_ms: int = 100,
        chunk_delay: float = 0.005,
        first_audio_delay: float = 0.02,
        energy_threshold: float = 500.0,
        silence_ms: int = 300,
    ) -> None:
        self.api_key = api_key
        self.replies = [FakeRealtimeReply(r) if isinstance(r, str) else r for r in replies] or [
            FakeRealtimeReply("You said something.")
        ]
        self.transcripts = list(transcripts)
        self.greeting = FakeRealtimeReply(greeting) if isinstance(greeting, str) else greeting
        self.chunk_ms = chunk_ms
        self.chunk_delay = chunk_delay
        self.first_audio_delay = first_audio_delay
        self.energy_threshold = energy_threshold
        self.silence_ms = silence_ms
        self.refuse = False
        self.connections: list[RealtimeConnection] = []
        self.responses = 0
        self._drop_after: int | None = None

    def drop_connection(self, after_deltas: int = 2) -> None:
        """Close the socket abruptly during the next reply, after ``after_deltas`` audio deltas."""
        self._drop_after = after_deltas

    def take_drop(self) -> int | None:
        """The pending drop (consumed)."""
        drop, self._drop_after = self._drop_after, None
        return drop

    def next_reply(self, conn: RealtimeConnection, history: list[dict[str, Any]]) -> FakeRealtimeReply:
        """The reply to give now: after a tool result "Done.", else the script in order (the last repeats)."""
        if history and history[-1].get("type") == "function_call_output":
            return FakeRealtimeReply("Done.")
        index = min(self.responses, len(self.replies) - 1)
        self.responses += 1
        return self.replies[index]

    @property
    def last(self) -> RealtimeConnection:
        """The newest connection."""
        return self.connections[-1]


class _Session:
    """One connection: reads client events, runs the VAD and streams replies."""

    def __init__(self, ws: WebSocket, state: FakeRealtimeState, conn: RealtimeConnection) -> None:
        self.ws = ws
        self.state = state
        self.conn = conn
        self.history: list[dict[str, Any]] = []
        self.response: asyncio.Task[None] | None = None
        self.response_id = ""
        self.item_audio_ms: dict[str, int] = {}
        self.turn_detection: dict[str, Any] | None = {"type": "server_vad", "create_response": True}
        self.speaking = False
        self.loud_ms = 0
        self.quiet_ms = 0
        self.speech_start_ms = 0
        self.transcript_index = 0
        self.send_lock = asyncio.Lock()

    # ----------------------------------------------------------------- sending

    async def send(self, type_: str, **fields: Any) -> None:
        async with self.send_lock:
            await self.ws.send_text(json.dumps({"type": type_, "event_id": _id("event"), **fields}))

    async def error(self, message: str, code: str = "invalid_request_error", event_id: str = "") -> None:
        await self.send(
            "error",
            error={"type": "invalid_request_error", "code": code, "message": message, "event_id": event_id},
        )

    # ------------------------------------------------------------------- loop

    async def run(self) -> None:
        await self.send(
            "session.created", session={"id": _id("sess"), "type": "realtime", "model": self.conn.model}
        )
        try:
            while True:
                text = await self.ws.receive_text()
                try:
                    event = json.loads(text)
                except json.JSONDecodeError:
                    await self.error("the event is not JSON")
                    continue
                if not isinstance(event, dict):
                    await self.error("an event is a JSON object")
                    continue
                self.conn.events.append(event)
                await self.handle(event)
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            self.conn.closed = True
            if self.response is not None:
                self.response.cancel()

    async def handle(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "session.update":
            await self.session_update(event.get("session") or {})
        elif kind == "input_audio_buffer.append":
            await self.append(str(event.get("audio", "")))
        elif kind == "input_audio_buffer.commit":
            await self.commit(self.audio_ms())
        elif kind == "input_audio_buffer.clear":
            await self.send("input_audio_buffer.cleared")
        elif kind == "conversation.item.create":
            item = dict(event.get("item") or {})
            item.setdefault("id", _id("item"))
            self.history.append(item)
            self.conn.items.append(item)
            await self.send("conversation.item.created", item=item)
        elif kind == "response.create":
            await self.start_response(event.get("response") or {})
        elif kind == "response.cancel":
            await self.cancel_response()
        elif kind == "conversation.item.truncate":
            await self.truncate(event)
        else:
            await self.error(f"Invalid value: {kind!r}", "unknown_event", str(event.get("event_id", "")))

    async def session_update(self, session: dict[str, Any]) -> None:
        self.conn.session.update(session)
        audio_in = (session.get("audio") or {}).get("input") or {}
        if "turn_detection" in audio_in:
            self.turn_detection = audio_in["turn_detection"]
        elif "turn_detection" in session:
            self.turn_detection = session["turn_detection"]
        await self.send("session.updated", session=self.conn.session)

    # -------------------------------------------------------------------- VAD

    def audio_ms(self) -> int:
        return len(self.conn.audio) // _BYTES_PER_MS

    async def append(self, audio_b64: str) -> None:
        try:
            chunk = base64.b64decode(audio_b64, validate=True)
        except ValueError:
            await self.error("audio is not base64")
            return
        self.conn.audio += chunk
        if self.turn_detection is None or not chunk:
            return
        samples = np.frombuffer(ulaw_decode(chunk), dtype=np.int16).astype(np.float64)
        energy = float(np.sqrt(np.mean(samples * samples))) if samples.size else 0.0
        ms = len(chunk) // _BYTES_PER_MS
        if energy >= self.state.energy_threshold:
            self.loud_ms += ms
            self.quiet_ms = 0
            if not self.speaking and self.loud_ms >= 40:
                self.speaking = True
                self.speech_start_ms = self.audio_ms() - self.loud_ms
                self.conn.speech_started_at.append(time.monotonic())
                await self.send(
                    "input_audio_buffer.speech_started",
                    audio_start_ms=self.speech_start_ms,
                    item_id=_id("item"),
                )
                if self.turn_detection.get("interrupt_response", True):
                    await self.cancel_response()
        else:
            self.loud_ms = 0
            self.quiet_ms += ms
            if self.speaking and self.quiet_ms >= self.state.silence_ms:
                self.speaking = False
                end_ms = self.audio_ms() - self.quiet_ms
                await self.send("input_audio_buffer.speech_stopped", audio_end_ms=end_ms, item_id=_id("item"))
                await self.commit(end_ms)
                if self.turn_detection.get("create_response", True):
                    await self.start_response({})

    async def commit(self, end_ms: int) -> None:
        item_id = _id("item")
        await self.send("input_audio_buffer.committed", item_id=item_id, previous_item_id=None)
        transcripts = self.state.transcripts
        text = transcripts[min(self.transcript_index, len(transcripts) - 1)] if transcripts else ""
        self.transcript_index += 1
        item = {
            "id": item_id,
            "type": "message",
            "role": "user",
            "content": [{"type": "input_audio", "transcript": text}],
        }
        self.history.append(item)
        await self.send(
            "conversation.item.input_audio_transcription.completed",
            item_id=item_id,
            content_index=0,
            transcript=text,
        )

    # -------------------------------------------------------------- responses

    async def start_response(self, options: dict[str, Any]) -> None:
        if self.response is not None and not self.response.done():
            await self.error("a response is already in progress", "conversation_already_has_active_response")
            return
        greeting = self.state.greeting if not self.history and self.state.greeting else None
        reply = greeting or self.state.next_reply(self.conn, self.history)
        self.response = asyncio.ensure_future(self.stream(reply))

    async def cancel_response(self) -> None:
        task = self.response
        if task is None or task.done():
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await self.send(
            "response.done",
            response={"id": self.response_id, "status": "cancelled", "output": [], "usage": None},
        )

    def names(self) -> tuple[str, str]:
        if self.conn.beta:
            return "response.audio", "response.audio_transcript"
        return "response.output_audio", "response.output_audio_transcript"

    async def stream(self, reply: FakeRealtimeReply) -> None:
        self.response_id = rid = _id("resp")
        audio_name, transcript_name = self.names()
        await self.send("response.created", response={"id": rid, "status": "in_progress", "output": []})
        output: list[dict[str, Any]] = []
        audio = reply.audio_bytes()
        drop = self.state.take_drop()
        await asyncio.sleep(self.state.first_audio_delay)
        if audio or reply.text:
            item_id = _id("item")
            item: dict[str, Any] = {
                "id": item_id,
                "type": "message",
                "role": "assistant",
                "status": "in_progress",
                "content": [],
            }
            await self.send("response.output_item.added", response_id=rid, output_index=0, item=item)
            where = {"response_id": rid, "item_id": item_id, "output_index": 0, "content_index": 0}
            step = self.state.chunk_ms * _BYTES_PER_MS
            chunks = [audio[i : i + step] for i in range(0, len(audio), step)]
            words = reply.text.split()
            per_chunk = math.ceil(len(words) / max(1, len(chunks))) if words else 0
            for index, chunk in enumerate(chunks):
                if drop is not None and index >= drop:
                    logger.info("fake realtime: dropping the connection mid-reply (as asked)")
                    await self.ws.close(code=1011)
                    return
                self.item_audio_ms[item_id] = self.item_audio_ms.get(item_id, 0) + len(chunk) // _BYTES_PER_MS
                await self.send(f"{audio_name}.delta", **where, delta=base64.b64encode(chunk).decode())
                for n in range(index * per_chunk, min(len(words), (index + 1) * per_chunk)):
                    delta = words[n] if n == 0 else f" {words[n]}"
                    await self.send(f"{transcript_name}.delta", **where, delta=delta)
                await asyncio.sleep(self.state.chunk_delay)
            await self.send(f"{audio_name}.done", **where)
            await self.send(f"{transcript_name}.done", **where, transcript=reply.text)
            item.update(status="completed", content=[{"type": "output_audio", "transcript": reply.text}])
            self.history.append(item)
            output.append(item)
            await self.send("response.output_item.done", response_id=rid, output_index=0, item=item)
        if reply.tool:
            output.append(await self.function_call(rid, len(output), reply))
        audio_in, audio_out = self.audio_ms() // 50, len(audio) // 400
        usage = {
            "total_tokens": audio_in + audio_out + 30,
            "input_tokens": 20 + audio_in,
            "output_tokens": 10 + audio_out,
            "input_token_details": {"audio_tokens": audio_in, "text_tokens": 20},
            "output_token_details": {"audio_tokens": audio_out, "text_tokens": 10},
        }
        await self.send(
            "response.done", response={"id": rid, "status": "completed", "output": output, "usage": usage}
        )

    async def function_call(self, rid: str, index: int, reply: FakeRealtimeReply) -> dict[str, Any]:
        call_id = _id("call")
        item = {
            "id": _id("item"),
            "type": "function_call",
            "call_id": call_id,
            "name": reply.tool,
            "arguments": json.dumps(reply.arguments),
        }
        await self.send("response.output_item.added", response_id=rid, output_index=index, item=item)
        await self.send(
            "response.function_call_arguments.done",
            response_id=rid,
            item_id=item["id"],
            output_index=index,
            call_id=call_id,
            name=reply.tool,
            arguments=item["arguments"],
        )
        self.history.append(item)
        await self.send("response.output_item.done", response_id=rid, output_index=index, item=item)
        return item

    async def truncate(self, event: dict[str, Any]) -> None:
        item_id = str(event.get("item_id", ""))
        end_ms = event.get("audio_end_ms")
        self.conn.truncates.append(event)
        if item_id not in self.item_audio_ms:
            await self.error(f"no audio item {item_id!r}", "item_not_found", str(event.get("event_id", "")))
            return
        if not isinstance(end_ms, int) or end_ms < 0 or end_ms > self.item_audio_ms[item_id]:
            await self.error("audio_end_ms is beyond the item's audio", "invalid_value")
            return
        await self.send("conversation.item.truncated", item_id=item_id, content_index=0, audio_end_ms=end_ms)


def create_fake_realtime_app(state: FakeRealtimeState | None = None) -> FastAPI:
    """The fake Realtime API; its state is ``app.state.realtime``."""
    app = FastAPI()
    app.state.realtime = state = state or FakeRealtimeState()

    @app.websocket("/v1/realtime")
    async def realtime(websocket: WebSocket) -> None:
        headers = {k.lower(): v for k, v in websocket.headers.items()}
        if state.refuse:
            await websocket.send_denial_response(JSONResponse({"error": {"message": "unavailable"}}, 503))
            return
        if state.api_key is not None and headers.get("authorization") != f"Bearer {state.api_key}":
            body = {
                "error": {"type": "invalid_request_error", "code": "invalid_api_key", "message": "bad key"}
            }
            await websocket.send_denial_response(JSONResponse(body, 401))
            return
        conn = RealtimeConnection(model=websocket.query_params.get("model", ""), headers=headers)
        state.connections.append(conn)
        await websocket.accept()
        await _Session(websocket, state, conn).run()

    return app


def serve_fake_realtime(host: str, port: int, *, api_key: str | None = None) -> None:
    """Run the fake on ``host:port`` until interrupted (``callpipe fake-realtime``)."""
    import uvicorn

    state = FakeRealtimeState(api_key=api_key, greeting="Hello, this is the fake realtime model.")
    uvicorn.run(create_fake_realtime_app(state), host=host, port=port, log_level="info")
