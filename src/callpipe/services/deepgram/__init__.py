"""Deepgram live speech-to-text over a WebSocket (``/v1/listen``).

:class:`DeepgramSTTService` keeps one streaming connection per call:

* Caller audio is queued by :meth:`DeepgramSTTService.process_audio` (which never waits
  on the network) and a sender task writes it to the socket as binary messages. The queue
  holds at most about two seconds: if the socket stops draining, the oldest audio is
  dropped, so a dead connection never grows memory.
* ``Results`` messages become :class:`InterimTranscriptionFrame` (``is_final`` false) and
  :class:`TranscriptionFrame` (``is_final`` true with a non-empty transcript).
* With no audio sent for ``keepalive_secs``, a ``{"type": "KeepAlive"}`` text message keeps
  the stream open (Deepgram closes a stream that receives nothing for about 10 s).
* A dropped connection is re-opened with exponential backoff; audio queued meanwhile (up
  to the two-second bound) is sent once it is back. If every attempt fails, a non-fatal
  :class:`ErrorFrame` goes upstream and the call carries on without transcription.
* On :class:`EndFrame` the queued audio is sent, then ``{"type": "CloseStream"}``; Deepgram
  answers with its last results and a ``Metadata`` message and closes the socket. A
  :class:`CancelFrame` sends ``CloseStream`` too but does not wait for the answer.
* TTFB metrics: from the end of the caller's speech (the VAD's ``speech_ended_at``) to
  the final transcript covering it, one :class:`MetricsFrame` per turn.

Encoding: ``linear16`` sends PCM16 at ``sample_rate`` (default: the pipeline's input
rate). ``mulaw`` sends G.711 μ-law at 8 kHz - a phone call's own format, a quarter of
the bytes of 16 kHz PCM. Today the μ-law is re-encoded here from the PCM frame with
:func:`callpipe.audio.ulaw_encode` (after resampling to 8 kHz when the pipeline runs at
another rate); passing the caller's PCMU payload straight from the serializer, with no
transcoding at all, is a possible future optimisation.

The wire protocol (URL, control messages, results, handshake errors) is pure logic in
:mod:`callpipe.services.deepgram.wire`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import time
from collections.abc import Mapping
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI
from websockets.protocol import State

from callpipe.audio import StreamResampler, ulaw_encode
from callpipe.pipeline.frames import (
    CancelFrame,
    EndFrame,
    Frame,
    InputAudioRawFrame,
    MetricsData,
    MetricsFrame,
    StartFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from callpipe.pipeline.processor import FrameDirection
from callpipe.services.deepgram.options import apply_settings, check_arguments
from callpipe.services.deepgram.turn_latency import SpeechToFinal
from callpipe.services.deepgram.wire import (
    CLOSE_STREAM,
    KEEPALIVE,
    PLAIN_CLOSE_CODES,
    DeepgramEncoding,
    Rejected,
    handshake_error,
    listen_url,
    results_text,
    websocket_root,
)
from callpipe.services.settings import DeepgramSTTSettings, STTSettings, base_url_from_env
from callpipe.services.stt import STTService

logger = logging.getLogger("callpipe.services")

# Audio queued while the socket is slow or down; beyond this the oldest is dropped.
_MAX_BUFFER_SECS = 2.0
# One binary message carries at most this much queued audio (catching up after a reconnect
# in a few messages instead of a hundred small ones; Deepgram accepts any size).
_MAX_MESSAGE_SECS = 0.25
_MAX_BACKOFF_SECS = 5.0
# A connection that lasted this long (or delivered any message) was healthy: the attempt
# counter starts again after it drops.
_STABLE_SECS = 5.0


class DeepgramSTTService(STTService):
    """Streaming speech-to-text with Deepgram's live API (one WebSocket per call).

    ``sample_rate`` is the rate sent to Deepgram: by default the pipeline's input rate
    for ``linear16`` and 8000 for ``mulaw``; audio at another rate is resampled.
    ``endpointing_ms`` is the silence after which Deepgram marks ``speech_final`` (None
    sends ``endpointing=false``). ``params`` adds or overrides query parameters (for
    example ``{"keyterm": "callpipe"}``). ``reconnect_attempts`` bounds the retries of
    one outage; the delay starts at ``reconnect_backoff_secs`` and doubles (at most 5 s).

    Pipecat's shapes work too: ``settings=DeepgramSTTService.Settings(...)``,
    ``audio_passthrough=True`` (the audio also goes on downstream), ``base_url`` as a bare
    host; with no key or URL, ``DEEPGRAM_API_KEY``/``DEEPGRAM_BASE_URL`` are used.
    """

    Settings = DeepgramSTTSettings

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        model: str = "nova-3",
        encoding: DeepgramEncoding = "linear16",
        sample_rate: int | None = None,
        endpointing_ms: int | None = 300,
        language: str = "en",
        keepalive_secs: float = 5.0,
        reconnect_attempts: int = 3,
        reconnect_backoff_secs: float = 0.5,
        connect_timeout_secs: float = 10.0,
        close_timeout_secs: float = 2.0,
        params: Mapping[str, str] | None = None,
        settings: STTSettings | None = None,
        audio_passthrough: bool = False,
        name: str | None = None,
    ) -> None:
        if settings is not None:
            language, model, endpointing_ms, params = apply_settings(
                settings, language=language, model=model, endpointing_ms=endpointing_ms, params=params
            )
        # No key or URL given means DEEPGRAM_API_KEY / DEEPGRAM_BASE_URL; Pipecat's
        # ``base_url`` may be a bare host.
        api_key = api_key if api_key is not None else os.environ.get("DEEPGRAM_API_KEY", "")
        base_url = websocket_root(base_url_from_env("DEEPGRAM_BASE_URL", base_url, "wss://api.deepgram.com"))
        super().__init__(language=language, name=name)
        self.audio_passthrough = audio_passthrough
        check_arguments(encoding, sample_rate, api_key, keepalive_secs, reconnect_attempts)
        self._api_key = api_key
        self.base_url = base_url
        self.model = model
        self.encoding: DeepgramEncoding = encoding
        self.endpointing_ms = endpointing_ms
        self.keepalive_secs = keepalive_secs
        self.reconnect_attempts = reconnect_attempts
        self.reconnect_backoff_secs = reconnect_backoff_secs
        self.connect_timeout_secs = connect_timeout_secs
        self.close_timeout_secs = close_timeout_secs
        self._requested_rate = sample_rate
        self._extra_params = dict(params or {})
        # The rate sent to Deepgram, fixed at the StartFrame.
        self.stream_sample_rate = 0
        self._resamplers: dict[int, StreamResampler] = {}
        self._audio: collections.deque[bytes] = collections.deque()
        self._audio_bytes = 0
        self._audio_ready = asyncio.Event()
        self._overflowing = False
        self.dropped_audio_bytes = 0
        self._ws: ClientConnection | None = None
        self._runner: asyncio.Task[None] | None = None
        self._closing = False
        self._close_requested = False
        self._failed = False
        self._last_sent = time.monotonic()
        self._received = 0
        self._turn_latency = SpeechToFinal()
        # Counters, for logs and tests.
        self.connections = 0
        self.keepalives_sent = 0

    # ------------------------------------------------------------------ properties

    @property
    def url(self) -> str:
        """The ``/v1/listen`` URL with its query (the key travels in a header, never here)."""
        return listen_url(
            self.base_url,
            model=self.model,
            encoding=self.encoding,
            sample_rate=self.stream_sample_rate or self._default_rate(),
            endpointing_ms=self.endpointing_ms,
            language=self.language,
            extra_params=self._extra_params,
        )

    @property
    def connected(self) -> bool:
        """Whether a stream to Deepgram is open right now."""
        return self._ws is not None

    @property
    def buffered_audio_secs(self) -> float:
        """Seconds of caller audio queued and not yet sent."""
        return self._audio_bytes / self._bytes_per_sec() if self.stream_sample_rate else 0.0

    def _default_rate(self) -> int:
        if self._requested_rate:
            return self._requested_rate
        return 8000 if self.encoding == "mulaw" else (self.sample_rate or 16000)

    def _bytes_per_sec(self) -> int:
        return self.stream_sample_rate * (1 if self.encoding == "mulaw" else 2)

    # ---------------------------------------------------------------------- frames

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Open the stream at the start, close it at the end, time transcripts per turn."""
        if isinstance(frame, InputAudioRawFrame):
            await super().process_frame(frame, direction)  # the per-frame path: nothing else to do
            return
        if isinstance(frame, EndFrame):
            # Before passing the EndFrame on, so the last transcript precedes it.
            await self._shutdown(graceful=True)
        elif isinstance(frame, CancelFrame):
            self._closing = True
            await self._send_close_stream_now()
        elif isinstance(frame, UserStartedSpeakingFrame):
            self._turn_latency.speech_started()
        elif isinstance(frame, UserStoppedSpeakingFrame):
            latency = self._turn_latency.speech_ended(frame.speech_ended_at or time.monotonic())
            if latency is not None:
                await self._report_ttfb(latency)
        await super().process_frame(frame, direction)
        if isinstance(frame, StartFrame):
            self._start()
        elif isinstance(frame, CancelFrame):
            await self._shutdown(graceful=False)

    async def process_audio(self, frame: InputAudioRawFrame) -> None:
        """Queue one frame of caller audio for the sender task (never waits on the socket)."""
        if self._failed or self._closing or not self.stream_sample_rate:
            return
        pcm = frame.audio
        if frame.sample_rate != self.stream_sample_rate:
            resampler = self._resamplers.get(frame.sample_rate)
            if resampler is None:
                resampler = self._resamplers[frame.sample_rate] = StreamResampler(
                    frame.sample_rate, self.stream_sample_rate
                )
            pcm = resampler.process(pcm)
        payload = ulaw_encode(pcm) if self.encoding == "mulaw" else pcm
        if not payload:
            return  # never send an empty message: Deepgram reads it as end of stream
        self._audio.append(payload)
        self._audio_bytes += len(payload)
        limit = _MAX_BUFFER_SECS * self._bytes_per_sec()
        if self._audio_bytes > limit:
            if not self._overflowing:
                self._overflowing = True
                logger.warning(
                    "%s: Deepgram is not taking audio (connected=%s); dropping the oldest beyond %.0f s",
                    self.name,
                    self.connected,
                    _MAX_BUFFER_SECS,
                )
            while self._audio_bytes > limit and len(self._audio) > 1:
                dropped = self._audio.popleft()
                self._audio_bytes -= len(dropped)
                self.dropped_audio_bytes += len(dropped)
        self._audio_ready.set()

    # ------------------------------------------------------------------ connection

    def _start(self) -> None:
        if self._runner is not None:
            return
        self.stream_sample_rate = self._default_rate()
        self._runner = self.create_task(self._run(), "deepgram")

    async def _connect(self) -> ClientConnection:
        try:
            ws = await connect(
                self.url,
                additional_headers={"Authorization": f"Token {self._api_key}"},
                open_timeout=self.connect_timeout_secs,
                close_timeout=1.0,
                max_size=2**22,
            )
        except InvalidStatus as exc:
            raise handshake_error(exc) from None
        self.connections += 1
        return ws

    async def _run(self) -> None:
        """Connect, serve, and reconnect with backoff until closed or out of attempts."""
        failures = 0
        last_error = ""
        while not self._stopping():
            try:
                ws = await self._connect()
            except Rejected as exc:
                await self._give_up(f"{self.name}: {exc}")
                return
            except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
                last_error = str(exc) or type(exc).__name__
            else:
                started = time.monotonic()
                self._received = 0
                logger.info("%s: Deepgram stream open (%s)", self.name, self.url)
                await self._serve(ws)
                if self._stopping():
                    return
                code, reason = ws.close_code, ws.close_reason
                last_error = f"closed with code {code}{f' ({reason})' if reason else ''}"
                if reason or code not in PLAIN_CLOSE_CODES:
                    # Deepgram reports stream errors in the close frame (e.g. "NET-0001").
                    await self.push_error(f"{self.name}: Deepgram {last_error}")
                healthy = self._received > 0 or time.monotonic() - started >= _STABLE_SECS
                logger.warning(
                    "%s: Deepgram stream %s after %.1fs; reconnecting",
                    self.name,
                    last_error,
                    time.monotonic() - started,
                )
                if healthy:
                    failures = 0
                    continue
            failures += 1
            if failures > self.reconnect_attempts:
                await self._give_up(
                    f"{self.name}: Deepgram unavailable after {failures} attempts "
                    f"({last_error}); continuing without transcription"
                )
                return
            delay = min(self.reconnect_backoff_secs * 2 ** (failures - 1), _MAX_BACKOFF_SECS)
            logger.warning(
                "%s: no usable Deepgram stream (%s); retry %d/%d in %.1fs",
                self.name,
                last_error,
                failures,
                self.reconnect_attempts,
                delay,
            )
            await asyncio.sleep(delay)

    def _stopping(self) -> bool:
        # A method, not the attribute: the flag changes while this task awaits.
        return self._closing

    async def _give_up(self, message: str) -> None:
        logger.error("%s", message)
        self._failed = True
        self._audio.clear()
        self._audio_bytes = 0
        await self.push_error(message)

    async def _serve(self, ws: ClientConnection) -> None:
        """Run one connection: a sender task, and results read here until it closes."""
        self._ws = ws
        self._last_sent = time.monotonic()
        sender = self.create_task(self._send_loop(ws), "deepgram-send")
        try:
            async for message in ws:
                self._received += 1
                if isinstance(message, str):
                    await self._on_message(message)
        except ConnectionClosed:
            pass
        finally:
            self._ws = None
            sender.cancel()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 1.0)

    async def _send_loop(self, ws: ClientConnection) -> None:
        """Write queued audio; KeepAlive when idle; CloseStream once asked and drained."""
        max_message = int(_MAX_MESSAGE_SECS * self._bytes_per_sec())
        while True:
            if not self._audio:
                if self._close_requested:
                    with contextlib.suppress(ConnectionClosed):
                        await ws.send(CLOSE_STREAM)
                    return
                idle = time.monotonic() - self._last_sent
                if idle >= self.keepalive_secs:
                    try:
                        await ws.send(KEEPALIVE)
                    except ConnectionClosed:
                        return
                    self.keepalives_sent += 1
                    self._last_sent = time.monotonic()
                    continue
                self._audio_ready.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._audio_ready.wait(), self.keepalive_secs - idle)
                continue
            # Take the chunks out before sending: process_audio may drop from the front
            # of the queue while this send waits. On failure they go back for the next
            # connection.
            chunks: list[bytes] = []
            size = 0
            while self._audio and (not chunks or size + len(self._audio[0]) <= max_message):
                chunk = self._audio.popleft()
                chunks.append(chunk)
                size += len(chunk)
            self._audio_bytes -= size
            try:
                await ws.send(b"".join(chunks))
            except ConnectionClosed:
                self._audio.extendleft(reversed(chunks))
                self._audio_bytes += size
                return
            self._last_sent = time.monotonic()
            if self._overflowing and not self._audio:
                self._overflowing = False

    async def _on_message(self, message: str) -> None:
        try:
            data: Any = json.loads(message)
        except ValueError:
            logger.warning("%s: ignoring a non-JSON message from Deepgram: %.100r", self.name, message)
            return
        if not isinstance(data, dict):
            return
        kind = data.get("type")
        if kind == "Results":
            text = results_text(data)
            if not text:
                return
            if data.get("is_final"):
                latency = self._turn_latency.final(time.monotonic())
                if latency is not None:
                    await self._report_ttfb(latency)
                await self.push_transcription(text, final=True)
            else:
                await self.push_transcription(text, final=False)
        elif kind == "Metadata":
            logger.debug("%s: Deepgram metadata request_id=%s", self.name, data.get("request_id"))
        elif kind == "Error":
            # Assumption: the docs describe stream errors as close frames only; Deepgram's
            # SDKs also define an "Error" message, so one is reported if it ever arrives.
            detail = data.get("description") or data.get("message") or data.get("variant") or "error"
            await self.push_error(f"{self.name}: Deepgram error: {detail}")
        # SpeechStarted, UtteranceEnd and future message types need nothing here.

    # --------------------------------------------------------------------- metrics

    # TTFB for streaming STT: from the end of the caller's speech (the VAD's
    # ``speech_ended_at``) to the final transcript that covers it (see turn_latency.py).

    async def _report_ttfb(self, value: float) -> None:
        if not self.metrics_enabled:
            return
        logger.info("metrics %s ttfb=%.1fms", self.name, value * 1000)
        data = MetricsData(name="ttfb", value=max(0.0, value), processor=self.name, model=self.model)
        await self.push_frame(MetricsFrame(data=[data]))

    # --------------------------------------------------------------------- closing

    async def _send_close_stream_now(self) -> None:
        ws = self._ws
        if ws is None:
            return
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ws.send(CLOSE_STREAM), 0.5)

    async def _shutdown(self, *, graceful: bool) -> None:
        """Stop the stream; ``graceful`` sends queued audio and CloseStream, and waits
        (at most ``close_timeout_secs``) for Deepgram's last results and its close."""
        self._closing = True
        runner = self._runner
        ws = self._ws
        if runner is None or runner.done():
            return
        if graceful and ws is not None:
            self._close_requested = True
            self._audio_ready.set()
            await asyncio.wait({runner}, timeout=self.close_timeout_secs)
        if not runner.done():
            # A CancelFrame has already cancelled it: cancelling again would cut short
            # the close handshake running in its ``finally``.
            if not runner.cancelling():
                runner.cancel()
            await asyncio.wait({runner}, timeout=1.5)
        if ws is not None and ws.state is not State.CLOSED:
            ws.transport.abort()

    async def cleanup(self) -> None:
        """Close the stream (if still open) and stop every task."""
        await self._shutdown(graceful=False)
        await super().cleanup()
