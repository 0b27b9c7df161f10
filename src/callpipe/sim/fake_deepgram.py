"""A fake Deepgram live-transcription server (``/v1/listen``) speaking Deepgram's wire protocol.

Tests run it under :class:`callpipe.server.background.BackgroundServer` and point
:class:`callpipe.services.deepgram.DeepgramSTTService` at ``server.ws_url``. It does what
the real service does on the wire, as far as Deepgram's public docs describe it:

* Handshake: ``Authorization: Token <key>`` is required. A bad or missing key is refused
  with HTTP 401 before the upgrade, with the reason in a ``dg-error`` header and a JSON
  body; unsupported query parameters get HTTP 400 the same way. An accepted stream
  carries a ``dg-request-id`` response header.
* Audio arrives as binary messages in the ``encoding``/``sample_rate`` of the query
  (``linear16``, ``mulaw`` or ``alaw`` here). Speech is "recognised" by energy: after
  ``min_speech_ms`` of loud audio an interim ``Results`` (``is_final`` false, the first
  half of the words) is sent when ``interim_results=true``; when ``endpointing`` ms of
  silence follow, a final ``Results`` (``is_final`` and ``speech_final`` true) carries the
  configured transcript. Transcripts are taken in turn from ``transcripts``.
* Text messages: ``KeepAlive`` (recorded, keeps the stream open), ``Finalize`` (finishes
  the current utterance now, ``from_finalize`` true) and ``CloseStream`` (finishes the
  utterance, sends a ``Metadata`` summary and closes with 1000).
* A stream that receives nothing for ``idle_timeout_secs`` (Deepgram: about 10 s) is closed
  with code 1011 and a ``NET-0001`` reason.

Fault switches live on :class:`FakeDeepgramState` (``app.state.deepgram``) and may be
changed while a test runs: ``result_delay_secs`` (results are sent that much later),
``drop_after_messages`` (once that many more client messages have arrived, the stream that
receives the next one is closed with 1001 "going away"; one-shot), ``error_after_messages``
(the same, but closed with ``error_close``, a Deepgram-style error close frame) and
``reject_connections`` (refuse that many handshakes with HTTP 503).

Assumptions where the docs are silent: the exact timing of interim results (one per
utterance here), and the shape of the 401 body (``err_code``/``err_msg`` as in Deepgram's
REST errors). A real network drop (no close frame) cannot be produced through ASGI, so a
"drop" is a 1001 close.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from fastapi import FastAPI, WebSocket
from fastapi.responses import JSONResponse
from starlette.websockets import WebSocketDisconnect, WebSocketState

from callpipe.audio import alaw_decode, ulaw_decode

_ENCODINGS = ("linear16", "mulaw", "alaw")


@dataclass
class FakeDeepgramSession:
    """One accepted stream: what the client sent and what the fake answered."""

    request_id: str
    query: dict[str, str]
    headers: dict[str, str]
    encoding: str
    sample_rate: int
    audio: bytearray = field(default_factory=bytearray)
    audio_messages: int = 0
    control: list[dict[str, Any]] = field(default_factory=list)
    sent: list[dict[str, Any]] = field(default_factory=list)
    opened_at: float = field(default_factory=time.monotonic)
    closed_at: float | None = None
    close_code: int | None = None
    closed_by: str = ""

    def control_of(self, kind: str) -> list[dict[str, Any]]:
        """Text messages of ``type`` ``kind`` received from the client."""
        return [m for m in self.control if m.get("type") == kind]

    def results(self, *, final: bool | None = None) -> list[dict[str, Any]]:
        """``Results`` messages sent (only finals or only interims when ``final`` is given)."""
        out = [m for m in self.sent if m.get("type") == "Results"]
        if final is not None:
            out = [m for m in out if bool(m.get("is_final")) is final]
        return out

    @property
    def audio_secs(self) -> float:
        """Seconds of audio received."""
        width = 2 if self.encoding == "linear16" else 1
        return len(self.audio) / width / self.sample_rate


@dataclass
class FakeDeepgramState:
    """Configuration, fault switches and everything recorded by the fake."""

    api_key: str
    transcripts: list[str]
    min_speech_ms: int = 150
    speech_rms: float = 500.0
    idle_timeout_secs: float = 10.0
    result_delay_secs: float = 0.0
    drop_after_messages: int | None = None
    error_after_messages: int | None = None
    error_close: tuple[int, str] = (1011, "NET-0000: the service encountered an internal error")
    reject_connections: int = 0
    sessions: list[FakeDeepgramSession] = field(default_factory=list)
    rejected: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    _next: int = 0

    def next_transcript(self) -> str:
        """The transcript of the next utterance (the list is used in turn, then repeats)."""
        text = self.transcripts[self._next % len(self.transcripts)]
        self._next += 1
        return text

    @property
    def last(self) -> FakeDeepgramSession:
        """The most recent stream."""
        return self.sessions[-1]


class _Recognizer:
    """Energy-based "speech recognition" for one stream, in 10 ms blocks."""

    def __init__(self, state: FakeDeepgramState, sample_rate: int, endpointing_ms: int | None) -> None:
        self.state = state
        self.block = max(1, sample_rate // 100)
        self.sample_rate = sample_rate
        self.endpointing_ms = endpointing_ms
        self.pending = np.zeros(0, dtype=np.int16)
        self.clock_ms = 0  # audio time of the next block
        self.start_ms: int | None = None
        self.speech_ms = 0
        self.silence_ms = 0
        self.interim_sent = False
        self.transcript = ""

    def feed(self, pcm: np.ndarray[Any, np.dtype[np.int16]]) -> list[tuple[str, int, int]]:
        """Add samples; return events ``(kind, start_ms, end_ms)``: "interim" or "final"."""
        events: list[tuple[str, int, int]] = []
        samples = np.concatenate([self.pending, pcm]) if self.pending.size else pcm
        whole = samples.size - samples.size % self.block
        self.pending = samples[whole:].copy()
        for offset in range(0, whole, self.block):
            block = samples[offset : offset + self.block].astype(np.float64)
            loud = float(np.sqrt(np.mean(block * block))) >= self.state.speech_rms
            events.extend(self._step(loud))
            self.clock_ms += 10
        return events

    def _step(self, loud: bool) -> list[tuple[str, int, int]]:
        if loud:
            if self.start_ms is None:
                self.start_ms = self.clock_ms
                self.speech_ms = 0
                self.interim_sent = False
            self.speech_ms += 10
            self.silence_ms = 0
            if self.speech_ms >= self.state.min_speech_ms and not self.interim_sent:
                self.interim_sent = True
                self.transcript = self.state.next_transcript()
                return [("interim", self.start_ms, self.clock_ms + 10)]
            return []
        if self.start_ms is None:
            return []
        self.silence_ms += 10
        if self.endpointing_ms is not None and self.silence_ms >= max(self.endpointing_ms, 10):
            return self.finish()
        return []

    def finish(self) -> list[tuple[str, int, int]]:
        """End the current utterance now (endpoint, Finalize or CloseStream)."""
        if self.start_ms is None:
            return []
        start, end = self.start_ms, self.clock_ms - self.silence_ms
        recognised = self.speech_ms >= self.state.min_speech_ms
        self.start_ms = None
        self.speech_ms = self.silence_ms = 0
        return [("final", start, end)] if recognised else []


def _results(
    session: FakeDeepgramSession,
    model: str,
    text: str,
    start_ms: int,
    end_ms: int,
    *,
    final: bool,
    speech_final: bool,
    from_finalize: bool = False,
) -> dict[str, Any]:
    words = text.split()
    span = max(end_ms - start_ms, 10) / 1000
    step = span / max(len(words), 1)
    start = start_ms / 1000
    return {
        "type": "Results",
        "channel_index": [0, 1],
        "duration": round(span, 3),
        "start": round(start, 3),
        "is_final": final,
        "speech_final": speech_final,
        "from_finalize": from_finalize,
        "channel": {
            "alternatives": [
                {
                    "transcript": text,
                    "confidence": 0.98,
                    "words": [
                        {
                            "word": w.strip(".,!?").lower(),
                            "start": round(start + i * step, 3),
                            "end": round(start + (i + 1) * step, 3),
                            "confidence": 0.98,
                            "punctuated_word": w,
                        }
                        for i, w in enumerate(words)
                    ],
                }
            ]
        },
        "metadata": {
            "request_id": session.request_id,
            "model_info": {"name": model, "version": "fake", "arch": "fake"},
            "model_uuid": "00000000-0000-0000-0000-000000000000",
        },
    }


def _countdown(state: FakeDeepgramState, switch: str) -> bool:
    """Count one received message against a one-shot fault; True when it fires now."""
    left: int | None = getattr(state, switch)
    if left is None:
        return False
    if left > 0:
        setattr(state, switch, left - 1)
        return False
    setattr(state, switch, None)
    return True


def _refuse(state: FakeDeepgramState, status: int, error: str, headers: dict[str, str]) -> JSONResponse:
    request_id = str(uuid.uuid4())
    state.rejected.append((status, headers))
    code = {401: "INVALID_AUTH", 400: "Bad Request"}.get(status, "UNAVAILABLE")
    return JSONResponse(
        {"err_code": code, "err_msg": error, "request_id": request_id},
        status_code=status,
        headers={"dg-error": error, "dg-request-id": request_id},
    )


def _handshake_refusal(
    state: FakeDeepgramState, headers: dict[str, str], query: dict[str, str]
) -> JSONResponse | None:
    """Deepgram's HTTP refusal of a handshake (401 bad key, 503 fault, 400 bad query), else ``None``."""
    scheme, _, key = headers.get("authorization", "").partition(" ")
    if scheme.lower() != "token" or key.strip() != state.api_key:
        return _refuse(state, 401, "Invalid credentials.", headers)
    if state.reject_connections > 0:
        state.reject_connections -= 1
        return _refuse(state, 503, "Service temporarily unavailable.", headers)
    encoding = query.get("encoding", "linear16")
    rate_text = query.get("sample_rate", "")
    if encoding not in _ENCODINGS or not rate_text.isdigit() or int(rate_text) <= 0:
        error = f"unsupported encoding/sample_rate for this fake: {encoding!r}/{rate_text!r}"
        return _refuse(state, 400, error, headers)
    return None


def create_fake_deepgram_app(
    api_key: str = "dg-test",
    *,
    transcript: str | Sequence[str] = "hello there",
    min_speech_ms: int = 150,
    speech_rms: float = 500.0,
    idle_timeout_secs: float = 10.0,
    result_delay_secs: float = 0.0,
) -> FastAPI:
    """A FastAPI app serving a fake ``/v1/listen``; its state is ``app.state.deepgram``.

    ``transcript`` is what each utterance is recognised as (a sequence is used in turn).
    Audio whose RMS over 10 ms reaches ``speech_rms`` counts as speech; an utterance
    needs ``min_speech_ms`` of it.
    """
    transcripts = [transcript] if isinstance(transcript, str) else list(transcript)
    if not transcripts:
        raise ValueError("at least one transcript is needed")
    state = FakeDeepgramState(
        api_key=api_key,
        transcripts=transcripts,
        min_speech_ms=min_speech_ms,
        speech_rms=speech_rms,
        idle_timeout_secs=idle_timeout_secs,
        result_delay_secs=result_delay_secs,
    )
    app = FastAPI(title="fake Deepgram")
    app.state.deepgram = state

    @app.websocket("/v1/listen")
    async def listen(websocket: WebSocket) -> None:
        headers = {k.lower(): v for k, v in websocket.headers.items()}
        query = dict(websocket.query_params)
        refusal = _handshake_refusal(state, headers, query)
        if refusal is not None:
            await websocket.send_denial_response(refusal)
            return
        encoding = query.get("encoding", "linear16")
        rate_text = query.get("sample_rate", "")
        endpointing_text = query.get("endpointing", "10")
        endpointing = None if endpointing_text == "false" else int(endpointing_text or 10)
        session = FakeDeepgramSession(
            request_id=str(uuid.uuid4()),
            query=query,
            headers=headers,
            encoding=encoding,
            sample_rate=int(rate_text),
        )
        state.sessions.append(session)
        await websocket.accept(headers=[(b"dg-request-id", session.request_id.encode())])
        await _Stream(websocket, state, session, endpointing).run()

    return app


class _Stream:
    """One accepted stream: reads client messages, writes results in order (delayed)."""

    def __init__(
        self,
        websocket: WebSocket,
        state: FakeDeepgramState,
        session: FakeDeepgramSession,
        endpointing: int | None,
    ) -> None:
        self.ws = websocket
        self.state = state
        self.session = session
        self.model = session.query.get("model", "nova-3")
        self.interim = session.query.get("interim_results", "false") == "true"
        self.recognizer = _Recognizer(state, session.sample_rate, endpointing)
        self.outbox: asyncio.Queue[tuple[float, dict[str, Any] | tuple[int, str]]] = asyncio.Queue()

    async def run(self) -> None:
        writer = asyncio.ensure_future(self._write())
        try:
            drain = await self._read()
            if drain and not writer.done():
                # Queued results, then the close, go out in order (bounded).
                await asyncio.wait({writer}, timeout=self.state.result_delay_secs + 2.0)
        finally:
            writer.cancel()
            if self.session.closed_at is None:
                self.session.closed_at = time.monotonic()

    def _queue(self, item: dict[str, Any] | tuple[int, str], *, delayed: bool = True) -> None:
        due = time.monotonic() + (self.state.result_delay_secs if delayed else 0.0)
        self.outbox.put_nowait((due, item))

    async def _write(self) -> None:
        while True:
            due, item = await self.outbox.get()
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if isinstance(item, tuple):
                await self._close(*item, by="server")
                return
            if self.ws.application_state is not WebSocketState.CONNECTED:
                return
            try:
                await self.ws.send_text(json.dumps(item))
            except Exception:
                return
            self.session.sent.append(item)

    async def _close(self, code: int, reason: str, *, by: str) -> None:
        if self.session.close_code is None:
            self.session.close_code = code
            self.session.closed_by = by
            self.session.closed_at = time.monotonic()
        with contextlib.suppress(Exception):
            await self.ws.close(code=code, reason=reason)

    def _emit(self, events: list[tuple[str, int, int]], *, from_finalize: bool = False) -> None:
        text = self.recognizer.transcript
        for kind, start, end in events:
            if kind == "interim":
                if self.interim:
                    words = text.split()
                    partial = " ".join(words[: max(1, len(words) // 2)])
                    self._queue(
                        _results(
                            self.session, self.model, partial, start, end, final=False, speech_final=False
                        )
                    )
            else:
                self._queue(
                    _results(
                        self.session,
                        self.model,
                        text,
                        start,
                        end,
                        final=True,
                        speech_final=not from_finalize,
                        from_finalize=from_finalize,
                    )
                )

    def _decode(self, data: bytes) -> np.ndarray[Any, np.dtype[np.int16]]:
        if self.session.encoding == "mulaw":
            data = ulaw_decode(data)
        elif self.session.encoding == "alaw":
            data = alaw_decode(data)
        elif len(data) % 2:
            data = data[:-1]
        return np.frombuffer(data, dtype="<i2")

    async def _read(self) -> bool:
        """Read until the stream ends; True when the writer should still drain its queue."""
        while True:
            try:
                message = await asyncio.wait_for(self.ws.receive(), self.state.idle_timeout_secs)
            except TimeoutError:
                self._queue(
                    (1011, "NET-0001: no audio or text message within the timeout window"), delayed=False
                )
                return True
            except (WebSocketDisconnect, RuntimeError):
                return False
            if message["type"] == "websocket.disconnect":
                if self.session.close_code is None:
                    self.session.close_code = int(message.get("code") or 1005)
                    self.session.closed_by = "client"
                return False
            if _countdown(self.state, "drop_after_messages"):
                # A stream going away mid-call, without a Deepgram error code.
                await self._close(1001, "", by="server")
                return False
            if _countdown(self.state, "error_after_messages"):
                await self._close(*self.state.error_close, by="server")
                return False
            data = message.get("bytes")
            if data is not None:
                self.session.audio += data
                self.session.audio_messages += 1
                self._emit(self.recognizer.feed(self._decode(data)))
                continue
            text = message.get("text") or ""
            try:
                control = json.loads(text)
            except ValueError:
                control = {"type": "<invalid>", "raw": text}
            if not isinstance(control, dict):
                control = {"type": "<invalid>", "raw": text}
            self.session.control.append(control)
            kind = control.get("type")
            if kind == "Finalize":
                self._emit(self.recognizer.finish(), from_finalize=True)
            elif kind == "CloseStream":
                self._emit(self.recognizer.finish())
                self._queue(self._metadata())
                self._queue((1000, ""))
                # Deepgram stops reading once asked to close; the writer finishes the rest.
                return True

    def _metadata(self) -> dict[str, Any]:
        return {
            "type": "Metadata",
            "transaction_key": "deprecated",
            "request_id": self.session.request_id,
            "sha256": hashlib.sha256(bytes(self.session.audio)).hexdigest(),
            "created": dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z"),
            "duration": round(self.session.audio_secs, 3),
            "channels": 1,
        }
