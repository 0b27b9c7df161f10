"""A speech-to-speech bot app and a bare Telnyx phone line, for the realtime tests and benchmark.

:func:`create_realtime_bot_app` serves ``/ws`` with the pipeline the guide describes,
``[transport.input(), OpenAIRealtimeService, transport.output()]``, with the audio passed
through. :class:`PhoneLine` plays Telnyx's side of one call over a real WebSocket: it
streams 20 ms of the caller's audio (``say`` queues payloads, silence otherwise), plays
what it receives in real time (so it can say what the caller heard when a ``clear``
arrives), echoes marks once the audio before them has played, and records everything.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, WebSocket
from websockets.asyncio.client import ClientConnection, connect

from callpipe.audio.vad import SileroVADAnalyzer, VADParams
from callpipe.pipeline.pipeline import Pipeline
from callpipe.pipeline.task import PipelineParams, PipelineRunner, PipelineTask
from callpipe.records.model import CallRecord
from callpipe.records.observer import CallObserver, current_observer
from callpipe.services.openai_realtime import OpenAIRealtimeService
from callpipe.sim.bots import accept_telnyx_stream, telnyx_serializer
from callpipe.telnyx import protocol
from callpipe.transports.fastapi import FastAPIWebsocketParams, FastAPIWebsocketTransport

__all__ = ["PhoneLine", "RealtimeBotCall", "create_realtime_bot_app"]

SILENCE_ULAW = b"\xff" * 160


@dataclass
class RealtimeBotCall:
    """One call of the realtime bot: its service and transport (for assertions)."""

    service: OpenAIRealtimeService
    transport: FastAPIWebsocketTransport
    finished: threading.Event = field(default_factory=threading.Event)
    observer: CallObserver | None = None


def create_realtime_bot_app(
    make_service: Callable[[], OpenAIRealtimeService],
    *,
    api_key: str | None = None,
    api_base_url: str | None = None,
    passthrough: bool = True,
    observe: bool = False,
    vad: bool = False,
) -> tuple[FastAPI, list[RealtimeBotCall]]:
    """``/ws`` running ``make_service()`` between the call's input and output.

    ``vad``: run callpipe's Silero VAD on the input (for ``turn_detection="local"``).
    ``observe``: keep a call record (``RealtimeBotCall.observer``) as ``callpipe serve`` does.
    """
    app = FastAPI()
    calls: list[RealtimeBotCall] = []

    @app.websocket("/ws")
    async def websocket_endpoint(websocket: WebSocket) -> None:
        call_data = await accept_telnyx_stream(websocket)
        if call_data is None:
            return
        # The realtime model speaks the call's own codec both ways.
        serializer = telnyx_serializer(
            call_data,
            inbound_encoding=call_data["outbound_encoding"],
            api_key=api_key,
            api_base_url=api_base_url,
        )
        transport = FastAPIWebsocketTransport(
            websocket=websocket,
            params=FastAPIWebsocketParams(
                serializer=serializer,
                audio_in_passthrough=passthrough,
                vad_analyzer=SileroVADAnalyzer(params=VADParams(stop_secs=0.2)) if vad else None,
            ),
        )
        call = RealtimeBotCall(make_service(), transport)
        if observe:
            call.observer = CallObserver(CallRecord(call_control_id=call_data["call_control_id"]))
            current_observer.set(call.observer)
        calls.append(call)
        task = PipelineTask(
            Pipeline([transport.input(), call.service, transport.output()]),
            params=PipelineParams(audio_in_sample_rate=8000, audio_out_sample_rate=8000),
            idle_timeout_secs=None,
        )
        try:
            await PipelineRunner().run(task)
        finally:
            call.finished.set()

    return app, calls


class PhoneLine:
    """Telnyx's side of one call (PCMU unless told otherwise), recording what it gets."""

    def __init__(self, url: str, *, encoding: str = "PCMU", sample_rate: int = 8000) -> None:
        self.url = url
        self.encoding = encoding
        self.sample_rate = sample_rate
        self.frame_bytes = {"PCMU": 160, "PCMA": 160, "L16": sample_rate // 50 * 2}.get(encoding, 160)
        self.silence = (
            SILENCE_ULAW
            if encoding == "PCMU"
            else (b"\xd5" * 160 if encoding == "PCMA" else bytes(self.frame_bytes))
        )
        self.call_control_id = f"v3:rt-{uuid.uuid4().hex[:12]}"
        self.sent: bytearray = bytearray()  # every payload byte sent, silence included
        self.media: list[tuple[float, bytes]] = []  # (arrival, payload) of the bot's audio
        self.clears: list[float] = []
        self.marks: list[str] = []
        self.heard_at_clear: list[float] = []  # ms of bot audio played when each clear arrived
        self.closed = asyncio.Event()
        self._speech: collections.deque[bytes] = collections.deque()
        self._ws: ClientConnection | None = None
        self._tasks: list[asyncio.Task[None]] = []
        # Playback: the time the queued audio ends playing, and marks waiting for it.
        self._play_end = 0.0
        self._playing_since: float | None = None
        self._played_ms = 0.0  # of the current uninterrupted playback, up to _play_end
        self._pending_marks: collections.deque[tuple[float, str]] = collections.deque()

    async def __aenter__(self) -> PhoneLine:
        self._ws = await connect(self.url)
        await self._ws.send(protocol.build_connected())
        await self._ws.send(
            protocol.build_start(
                stream_id="stream-1",
                call_control_id=self.call_control_id,
                encoding=self.encoding,
                sample_rate=self.sample_rate,
            )
        )
        self._tasks = [asyncio.ensure_future(self._stream()), asyncio.ensure_future(self._receive())]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._ws is not None:
            await self._ws.close()

    def say(self, payload: bytes) -> None:
        """Queue the caller's audio (wire payload bytes), sent 20 ms at a time."""
        for i in range(0, len(payload), self.frame_bytes):
            self._speech.append(payload[i : i + self.frame_bytes].ljust(self.frame_bytes, self.silence[:1]))

    @property
    def speaking(self) -> bool:
        """Whether queued caller speech is still being sent."""
        return bool(self._speech)

    def bot_audio(self) -> bytes:
        """Every payload byte of the bot's audio received, in order."""
        return b"".join(payload for _, payload in self.media)

    async def _stream(self) -> None:
        assert self._ws is not None
        start = time.monotonic()
        n = 0
        while True:
            payload = self._speech.popleft() if self._speech else self.silence
            self.sent += payload
            n += 1
            await self._ws.send(
                protocol.build_inbound_media(
                    payload, stream_id="stream-1", sequence_number=n + 1, chunk=n, timestamp=n * 20
                )
            )
            await self._echo_due_marks()
            await asyncio.sleep(max(0.0, start + n * 0.02 - time.monotonic()))

    async def _echo_due_marks(self) -> None:
        now = time.monotonic()
        while self._pending_marks and self._pending_marks[0][0] <= now:
            _, name = self._pending_marks.popleft()
            assert self._ws is not None
            await self._ws.send(protocol.build_mark_echo(name, stream_id="stream-1", sequence_number=0))

    async def _receive(self) -> None:
        assert self._ws is not None
        try:
            async for text in self._ws:
                self._on_message(json.loads(text))
        except Exception:
            pass
        finally:
            self.closed.set()

    def _on_message(self, message: dict[str, Any]) -> None:
        now = time.monotonic()
        event = message.get("event")
        if event == "media":
            payload = base64.b64decode(message["media"]["payload"])
            self.media.append((now, payload))
            if self._play_end < now:
                self._play_end = now  # playback starts (or restarts after a gap) on arrival
                self._playing_since = now
            self._play_end += len(payload) / (self.frame_bytes * 50)
        elif event == "mark":
            name = message["mark"]["name"]
            self.marks.append(name)
            self._pending_marks.append((max(now, self._play_end), name))
        elif event == "clear":
            self.clears.append(now)
            since = self._playing_since
            self.heard_at_clear.append(0.0 if since is None else (min(now, self._play_end) - since) * 1000)
            self._play_end = now
            self._playing_since = None
            self._pending_marks.clear()
