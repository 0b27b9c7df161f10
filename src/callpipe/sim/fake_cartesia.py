"""A fake Cartesia text-to-speech server (``/tts/websocket``) speaking Cartesia's wire protocol.

Tests run it under :class:`callpipe.server.background.BackgroundServer` and point
:class:`callpipe.services.cartesia.CartesiaTTSService` at ``server.ws_url``. What it does,
following Cartesia's public docs:

* Handshake: the key may come as an ``X-API-Key`` header, ``Authorization: Bearer`` or an
  ``api_key`` query parameter, and the version as a ``Cartesia-Version`` header or a
  ``cartesia_version`` query parameter (which wins). A bad key is refused with HTTP 401
  before the upgrade; a missing version with HTTP 400.
* Generation requests carry ``context_id``, ``model_id``, ``transcript``, ``voice``
  (``{"mode": "id", "id": ...}``), ``output_format`` (``container: raw``; ``pcm_s16le``,
  ``pcm_f32le``, ``pcm_mulaw`` or ``pcm_alaw``; a Cartesia sample rate), ``language`` and
  ``continue``. Inputs on one context must keep every field but ``transcript``,
  ``continue``, ``flush`` and ``duration``; a mismatch is an error, as is a malformed request.
* Inputs of a context are processed in order. Each transcript is "spoken" as a sine tone
  lasting ``secs_per_char`` per character, sent as base64 ``chunk`` messages of ``chunk_ms``
  each (tagged with the context's current ``flush_id``); a ``flush: true`` input answers
  ``flush_done`` once everything before it has been sent, then increments ``flush_id``;
  ``continue: false`` ends the context with ``done`` after its audio.
* ``{"context_id": ..., "cancel": true}`` stops the context at once: nothing more is sent
  for it.

Fault switches on :class:`FakeCartesiaState` (``app.state.cartesia``), changeable while a
test runs: ``delay_secs`` (pause before each chunk), ``first_chunk_delay_secs`` (pause before
the first chunk of each transcript), ``error_on`` (a transcript containing that text gets
an ``error`` message, ``done: true``, instead of audio), ``drop_after_chunks`` (after that
many more chunks the socket is closed with 1011; one-shot) and ``reject_connections``
(refuse that many handshakes with HTTP 503).

Assumptions where the docs are silent: ``flush_done`` comes after the flushed audio;
``flush_id`` starts at ``first_flush_id`` (the docs' example says 1); a cancel gets no
answer; errors use the ``{"type": "error", "error": ..., "status_code": ..., "done": true}``
shape of the 2024-11-13 reference. A network drop without a close frame cannot be
produced through ASGI, so a "drop" is a 1011 close.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from fastapi import FastAPI, WebSocket
from fastapi.responses import JSONResponse
from starlette.websockets import WebSocketDisconnect

from callpipe.audio import alaw_encode, ulaw_encode

SAMPLE_RATES = (8000, 16000, 22050, 24000, 44100, 48000)
ENCODINGS = ("pcm_s16le", "pcm_f32le", "pcm_mulaw", "pcm_alaw")
# Fields allowed to differ between the inputs of one context.
_PER_INPUT = frozenset({"transcript", "continue", "flush", "duration", "context_id"})


@dataclass
class FakeCartesiaContext:
    """Everything the fake saw and sent for one ``context_id``."""

    context_id: str
    first_request: dict[str, Any]
    transcripts: list[str] = field(default_factory=list)
    inputs: list[dict[str, Any]] = field(default_factory=list)
    flushes: int = 0
    chunks: int = 0
    audio_bytes: int = 0
    closed: bool = False
    cancelled: bool = False
    done_sent: bool = False
    errors: list[str] = field(default_factory=list)
    sent: list[dict[str, Any]] = field(default_factory=list)

    @property
    def sample_rate(self) -> int:
        """The sample rate of the context's audio."""
        return int(self.first_request["output_format"]["sample_rate"])

    @property
    def encoding(self) -> str:
        """The encoding of the context's audio."""
        return str(self.first_request["output_format"]["encoding"])


@dataclass
class FakeCartesiaConnection:
    """One accepted WebSocket: its handshake and every message received on it."""

    headers: dict[str, str]
    query: dict[str, str]
    version: str
    messages: list[dict[str, Any]] = field(default_factory=list)
    opened_at: float = field(default_factory=time.monotonic)
    closed_at: float | None = None
    closed_by: str = ""


@dataclass
class FakeCartesiaState:
    """Configuration, fault switches and what the fake recorded."""

    api_key: str
    chunk_ms: int = 40
    delay_secs: float = 0.0
    first_chunk_delay_secs: float = 0.0
    secs_per_char: float = 1 / 14
    tone_hz: float = 220.0
    first_flush_id: int = 1
    error_on: str | None = None
    drop_after_chunks: int | None = None
    reject_connections: int = 0
    connections: list[FakeCartesiaConnection] = field(default_factory=list)
    contexts: dict[str, FakeCartesiaContext] = field(default_factory=dict)
    rejected: list[tuple[int, dict[str, str]]] = field(default_factory=list)

    def cancels(self) -> list[str]:
        """Context ids the client cancelled, in order."""
        return [str(m["context_id"]) for c in self.connections for m in c.messages if m.get("cancel") is True]

    def audio_secs(self, context_id: str) -> float:
        """Seconds of audio sent for a context."""
        ctx = self.contexts[context_id]
        width = {"pcm_s16le": 2, "pcm_f32le": 4}.get(ctx.encoding, 1)
        return ctx.audio_bytes / width / ctx.sample_rate


def _speech(text: str, state: FakeCartesiaState, rate: int, encoding: str) -> bytes:
    secs = max(0.1, len(text.strip()) * state.secs_per_char)
    t = np.arange(int(secs * rate)) / rate
    wave = 0.3 * np.sin(2 * np.pi * state.tone_hz * t)
    if encoding == "pcm_f32le":
        return wave.astype("<f4").tobytes()
    pcm = (wave * 32767).astype("<i2").tobytes()
    if encoding == "pcm_mulaw":
        return ulaw_encode(pcm)
    if encoding == "pcm_alaw":
        return alaw_encode(pcm)
    return pcm


def _validate(request: dict[str, Any]) -> str | None:
    """Why a generation request is malformed, or None."""
    for key in ("model_id", "transcript", "voice", "output_format"):
        if key not in request:
            return f"missing field {key!r}"
    if not isinstance(request["transcript"], str):
        return "transcript must be a string"
    voice = request["voice"]
    if not isinstance(voice, dict) or voice.get("mode") != "id" or not voice.get("id"):
        return "voice must be {'mode': 'id', 'id': <voice id>}"
    fmt = request["output_format"]
    if not isinstance(fmt, dict) or fmt.get("container") != "raw":
        return "this fake only serves output_format.container 'raw'"
    if fmt.get("encoding") not in ENCODINGS:
        return f"unsupported encoding {fmt.get('encoding')!r}"
    if fmt.get("sample_rate") not in SAMPLE_RATES:
        return f"unsupported sample_rate {fmt.get('sample_rate')!r}"
    return None


def create_fake_cartesia_app(
    api_key: str = "ct-test",
    *,
    chunk_ms: int = 40,
    delay_secs: float = 0.0,
    first_chunk_delay_secs: float = 0.0,
    secs_per_char: float = 1 / 14,
    first_flush_id: int = 1,
) -> FastAPI:
    """A FastAPI app serving a fake ``/tts/websocket``; its state is ``app.state.cartesia``."""
    state = FakeCartesiaState(
        api_key=api_key,
        chunk_ms=chunk_ms,
        delay_secs=delay_secs,
        first_chunk_delay_secs=first_chunk_delay_secs,
        secs_per_char=secs_per_char,
        first_flush_id=first_flush_id,
    )
    app = FastAPI(title="fake Cartesia")
    app.state.cartesia = state

    @app.websocket("/tts/websocket")
    async def tts_websocket(websocket: WebSocket) -> None:
        headers = {k.lower(): v for k, v in websocket.headers.items()}
        query = dict(websocket.query_params)
        bearer = headers.get("authorization", "")
        key = (
            query.get("api_key")
            or headers.get("x-api-key")
            or (bearer[7:] if bearer.lower().startswith("bearer ") else "")
        )
        version = query.get("cartesia_version") or headers.get("cartesia-version", "")
        refusal: tuple[int, str] | None = None
        if key != state.api_key:
            refusal = (401, "Invalid API key")
        elif not version:
            refusal = (400, "Missing Cartesia-Version header or cartesia_version query parameter")
        elif state.reject_connections > 0:
            state.reject_connections -= 1
            refusal = (503, "Service temporarily unavailable")
        if refusal is not None:
            state.rejected.append((refusal[0], headers))
            await websocket.send_denial_response(JSONResponse({"error": refusal[1]}, status_code=refusal[0]))
            return
        connection = FakeCartesiaConnection(headers=headers, query=query, version=version)
        state.connections.append(connection)
        await websocket.accept()
        await _Session(websocket, state, connection).run()

    return app


class _Session:
    """One connection: reads requests, runs one worker per context, serialises sends."""

    def __init__(
        self, websocket: WebSocket, state: FakeCartesiaState, connection: FakeCartesiaConnection
    ) -> None:
        self.ws = websocket
        self.state = state
        self.connection = connection
        self.send_lock = asyncio.Lock()
        self.inboxes: dict[str, asyncio.Queue[dict[str, Any]]] = {}
        self.workers: dict[str, asyncio.Task[None]] = {}
        self.dropped = False

    async def run(self) -> None:
        try:
            while True:
                try:
                    text = await self.ws.receive_text()
                except (WebSocketDisconnect, RuntimeError, KeyError):
                    if not self.connection.closed_by:
                        self.connection.closed_by = "client"
                    return
                try:
                    message = json.loads(text)
                except ValueError:
                    message = None
                if not isinstance(message, dict):
                    await self._send(
                        {"type": "error", "done": True, "status_code": 400, "error": "invalid JSON"}
                    )
                    continue
                self.connection.messages.append(message)
                await self._handle(message)
        finally:
            self.connection.closed_at = time.monotonic()
            for worker in self.workers.values():
                worker.cancel()

    async def _handle(self, message: dict[str, Any]) -> None:
        context_id = str(message.get("context_id") or "")
        if message.get("cancel") is True:
            ctx = self.state.contexts.get(context_id)
            if ctx is not None:
                ctx.cancelled = True
            worker = self.workers.pop(context_id, None)
            if worker is not None:
                worker.cancel()
            self.inboxes.pop(context_id, None)
            return
        problem = _validate(message)
        if problem is not None:
            await self._error(context_id, problem)
            return
        if not context_id:
            await self._error("", "context_id is required by this fake")
            return
        ctx = self.state.contexts.get(context_id)
        if ctx is None:
            ctx = self.state.contexts[context_id] = FakeCartesiaContext(context_id, first_request=message)
        elif ctx.closed or ctx.cancelled or ctx.errors:
            await self._error(context_id, "context is no longer accepting inputs")
            return
        else:
            changed = sorted(
                k
                for k in set(message) | set(ctx.first_request)
                if k not in _PER_INPUT and message.get(k) != ctx.first_request.get(k)
            )
            if changed:
                await self._error(context_id, f"inputs on a context must keep the same {', '.join(changed)}")
                return
        ctx.inputs.append(message)
        if message["transcript"]:
            ctx.transcripts.append(message["transcript"])
        if message.get("flush") is True:
            ctx.flushes += 1
        if message.get("continue") is not True:
            ctx.closed = True
        inbox = self.inboxes.get(context_id)
        if inbox is None:
            inbox = self.inboxes[context_id] = asyncio.Queue()
            self.workers[context_id] = asyncio.ensure_future(self._work(ctx, inbox))
        inbox.put_nowait(message)

    async def _work(self, ctx: FakeCartesiaContext, inbox: asyncio.Queue[dict[str, Any]]) -> None:
        flush_id = self.state.first_flush_id
        while True:
            request = await inbox.get()
            transcript: str = request["transcript"]
            if transcript:
                if self.state.error_on is not None and self.state.error_on in transcript:
                    await self._error(ctx.context_id, f"could not generate {transcript!r}")
                    return
                await self._speak(ctx, transcript, flush_id)
            if request.get("flush") is True:
                await self._send(
                    {
                        "type": "flush_done",
                        "done": False,
                        "flush_done": True,
                        "flush_id": flush_id,
                        "status_code": 206,
                        "context_id": ctx.context_id,
                    },
                    ctx,
                )
                flush_id += 1
            if request.get("continue") is not True:
                ctx.done_sent = True
                await self._send(
                    {"type": "done", "done": True, "status_code": 206, "context_id": ctx.context_id}, ctx
                )
                return

    async def _speak(self, ctx: FakeCartesiaContext, transcript: str, flush_id: int) -> None:
        audio = _speech(transcript, self.state, ctx.sample_rate, ctx.encoding)
        width = {"pcm_s16le": 2, "pcm_f32le": 4}.get(ctx.encoding, 1)
        step = max(width, ctx.sample_rate * self.state.chunk_ms // 1000 * width)
        for index, offset in enumerate(range(0, len(audio), step)):
            delay = self.state.delay_secs + (self.state.first_chunk_delay_secs if index == 0 else 0.0)
            if delay > 0:
                await asyncio.sleep(delay)
            piece = audio[offset : offset + step]
            await self._send(
                {
                    "type": "chunk",
                    "data": base64.b64encode(piece).decode(),
                    "done": False,
                    "status_code": 206,
                    "step_time": 1.0,
                    "flush_id": flush_id,
                    "context_id": ctx.context_id,
                },
                ctx,
            )
            ctx.chunks += 1
            ctx.audio_bytes += len(piece)
            left = self.state.drop_after_chunks
            if left is not None:
                if left <= 1:
                    self.state.drop_after_chunks = None
                    await self._drop()
                    return
                self.state.drop_after_chunks = left - 1

    async def _drop(self) -> None:
        self.dropped = True
        self.connection.closed_by = "server"
        with contextlib.suppress(Exception):
            await self.ws.close(code=1011, reason="")
        for worker in list(self.workers.values()):
            if worker is not asyncio.current_task():
                worker.cancel()

    async def _error(self, context_id: str, error: str) -> None:
        ctx = self.state.contexts.get(context_id)
        if ctx is not None:
            ctx.errors.append(error)
        message: dict[str, Any] = {"type": "error", "done": True, "status_code": 400, "error": error}
        if context_id:
            message["context_id"] = context_id
        await self._send(message, ctx)

    async def _send(self, message: dict[str, Any], ctx: FakeCartesiaContext | None = None) -> None:
        if self.dropped:
            return
        async with self.send_lock:
            # A cancelled context gets nothing more, even a message already being prepared.
            if ctx is not None and ctx.cancelled:
                return
            with contextlib.suppress(Exception):
                await self.ws.send_text(json.dumps(message))
                if ctx is not None:
                    ctx.sent.append(message)
