"""Cartesia text-to-speech over its WebSocket API (``/tts/websocket``).

:class:`CartesiaTTSService` keeps one WebSocket per service (per call), opened when the
pipeline starts so the first reply pays no handshake, and re-opened after a drop.

Contexts: Cartesia keeps prosody across inputs sent on the same ``context_id`` (a
"continuation"), and recommends one context per conversational turn and a new one after
an interruption. The :class:`~callpipe.services.tts.TTSService` base hands this class one
sentence at a time, in order, so each reply gets one context:

* each sentence is sent with ``continue: true``, followed by a *flush* (an empty
  transcript with ``continue: true`` and ``flush: true``). Cartesia then generates
  everything received so far and answers ``flush_done`` after that audio, which is how
  :meth:`CartesiaTTSService.run_tts` knows where the sentence's audio ends;
* at the end of the reply the context is closed with an empty transcript and
  ``continue: false`` (Cartesia answers ``done``, which is not waited for);
* on barge-in the base class cancels synthesis, and the context is cancelled
  (``{"context_id": ..., "cancel": true}``) so Cartesia stops generating; the next reply
  starts a new context.

Audio arrives as ``{"type": "chunk", "data": <base64>}`` in the requested
``output_format``: ``pcm_s16le`` (passed through) or ``pcm_mulaw`` (a third of the bytes on
the wire for 8 kHz phone audio, decoded to PCM here with :func:`callpipe.audio.ulaw_decode`
because the pipeline carries PCM everywhere). An ``error`` message, a dropped socket or
no answer within ``response_timeout_secs`` makes :meth:`run_tts` raise, and the base
class reports a non-fatal :class:`ErrorFrame`; the call goes on.

Authentication uses the ``X-API-Key`` and ``Cartesia-Version`` handshake headers (the
``api_key``/``cartesia_version`` query parameters exist for browsers, which cannot set
headers; keeping the key out of the URL keeps it out of proxy logs).

Assumptions where Cartesia's docs are silent: ``flush_done`` arrives after the last
chunk of the audio it flushes (the docs describe flushing as turning N transcripts into
N audio streams); ``flush_id`` numbering is not relied on (the docs say it starts at 1,
some users report 0) because a context has one sentence in flight at a time here; a bad
key is refused at the handshake with HTTP 401 (or 403).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from callpipe.audio import ulaw_decode
from callpipe.pipeline.frames import (
    CancelFrame,
    EndFrame,
    Frame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    StartFrame,
)
from callpipe.pipeline.processor import FrameDirection
from callpipe.services.settings import TTSSettings, base_url_from_env, pick
from callpipe.services.tts import TTSService

logger = logging.getLogger("callpipe.services")

CartesiaEncoding = Literal["pcm_s16le", "pcm_mulaw"]

# Output sample rates Cartesia offers for raw audio.
SUPPORTED_SAMPLE_RATES = (8000, 16000, 22050, 24000, 44100, 48000)
_MAX_BACKOFF_SECS = 5.0


class CartesiaError(RuntimeError):
    """Cartesia refused a request, reported an error, or the connection to it failed."""


@dataclass(slots=True)
class _Dropped:
    """Queue marker: the socket closed while this context was waiting for audio."""

    reason: str


@dataclass(slots=True)
class _Context:
    """One Cartesia context: the messages routed to it and the half sample carried over."""

    id: str
    queue: asyncio.Queue[dict[str, Any] | _Dropped] = field(default_factory=asyncio.Queue)
    carry: bytes = b""


def _check_arguments(
    api_key: str,
    voice_id: str | None,
    encoding: str,
    sample_rate: int,
    reconnect_attempts: int,
    response_timeout_secs: float,
) -> None:
    """A clear ``ValueError`` for a constructor argument Cartesia or the service cannot use."""
    if not api_key:
        raise ValueError("a Cartesia API key is required")
    if not voice_id:
        raise ValueError(
            "a Cartesia voice is required: voice_id=... or settings=CartesiaTTSService.Settings(voice=...)"
        )
    if encoding not in ("pcm_s16le", "pcm_mulaw"):
        raise ValueError(f"encoding must be 'pcm_s16le' or 'pcm_mulaw', got {encoding!r}")
    if reconnect_attempts < 0 or response_timeout_secs <= 0:
        raise ValueError("reconnect_attempts must not be negative and response_timeout_secs positive")
    if sample_rate not in SUPPORTED_SAMPLE_RATES:
        raise ValueError(f"Cartesia offers sample rates {SUPPORTED_SAMPLE_RATES}, not {sample_rate}")


class CartesiaTTSService(TTSService):
    """Streaming speech synthesis with Cartesia's WebSocket API (one context per reply).

    ``sample_rate`` is the rate asked of Cartesia and the rate of the audio frames pushed
    (one of :data:`SUPPORTED_SAMPLE_RATES`). ``encoding`` is the wire format: PCM16 is
    pushed either way. ``response_timeout_secs`` bounds the wait for each message of a
    sentence, so a wedged socket cannot stall the reply forever. ``reconnect_attempts``
    bounds the retries of one (re)connection, with a delay starting at
    ``reconnect_backoff_secs`` and doubling.

    Pipecat's shapes work too: ``settings=CartesiaTTSService.Settings(voice=...)`` (or the
    older ``voice_id=``), ``url=`` (the full ``wss://…/tts/websocket``); with no key or URL,
    ``CARTESIA_API_KEY``/``CARTESIA_BASE_URL`` are used.
    """

    Settings = TTSSettings

    def __init__(
        self,
        api_key: str | None = None,
        *,
        voice_id: str | None = None,
        base_url: str | None = None,
        url: str | None = None,
        model: str = "sonic-2",
        sample_rate: int = 8000,
        encoding: CartesiaEncoding = "pcm_s16le",
        cartesia_version: str = "2025-04-16",
        language: str = "en",
        response_timeout_secs: float = 10.0,
        connect_timeout_secs: float = 10.0,
        reconnect_attempts: int = 2,
        reconnect_backoff_secs: float = 0.5,
        settings: TTSSettings | None = None,
        name: str | None = None,
    ) -> None:
        # Pipecat's shapes: settings (``voice``) win over keywords (``voice_id``); ``url`` is
        # Pipecat's full ``wss://…/tts/websocket``; no key or URL means CARTESIA_API_KEY /
        # CARTESIA_BASE_URL.
        settings = settings or TTSSettings()
        voice_id = pick(settings.voice, voice_id)
        model = pick(settings.model, model)
        language = pick(settings.language, language)
        api_key = api_key if api_key is not None else os.environ.get("CARTESIA_API_KEY", "")
        base_url = base_url_from_env("CARTESIA_BASE_URL", base_url or url, "wss://api.cartesia.ai")
        base_url = base_url.removesuffix("/tts/websocket")
        super().__init__(sample_rate=sample_rate, voice=voice_id or "", name=name)
        _check_arguments(api_key, voice_id, encoding, sample_rate, reconnect_attempts, response_timeout_secs)
        self._api_key = api_key
        self.voice_id = voice_id
        self.base_url = base_url
        self.model = model
        self.encoding: CartesiaEncoding = encoding
        self.cartesia_version = cartesia_version
        self.language = language
        self.response_timeout_secs = response_timeout_secs
        self.connect_timeout_secs = connect_timeout_secs
        self.reconnect_attempts = reconnect_attempts
        self.reconnect_backoff_secs = reconnect_backoff_secs
        self._ws: ClientConnection | None = None
        self._connect_lock = asyncio.Lock()
        self._contexts: dict[str, _Context] = {}
        self._reply: _Context | None = None
        self._auth_error: str | None = None
        self._closing = False
        # Counters, for logs and tests.
        self.connections = 0

    # ------------------------------------------------------------------ properties

    @property
    def url(self) -> str:
        """The WebSocket URL (no credentials in it)."""
        return f"{self.base_url}/tts/websocket"

    @property
    def connected(self) -> bool:
        """Whether the WebSocket to Cartesia is open right now."""
        return self._ws is not None

    @property
    def context_id(self) -> str | None:
        """The context of the reply being spoken, if one is open."""
        return self._reply.id if self._reply is not None else None

    # ---------------------------------------------------------------------- frames

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Connect at the start; drop the reply's context on barge-in; close at the end."""
        if isinstance(frame, CancelFrame):
            self._closing = True  # before the base cancels the tasks: no reconnecting
        await super().process_frame(frame, direction)
        if isinstance(frame, StartFrame):
            self.create_task(self._preconnect(), "cartesia-connect")
        elif isinstance(frame, InterruptionFrame) and direction is FrameDirection.DOWNSTREAM:
            # The base has cancelled synthesis (which abandons a context mid-sentence);
            # a reply waiting between sentences still has an open context.
            if self._reply is not None:
                self._abandon(self._reply)
        elif isinstance(frame, EndFrame | CancelFrame):
            # EndFrame: the base has spoken everything queued before it.
            await self._close_socket()

    async def push_frame(self, frame: Frame, direction: FrameDirection = FrameDirection.DOWNSTREAM) -> None:
        """Close the reply's context when the base marks the reply's end."""
        # The base's synthesis worker pushes LLMFullResponseEndFrame after the last sentence
        # of a reply, in order with the audio: the moment to tell Cartesia no more is coming.
        if direction is FrameDirection.DOWNSTREAM and isinstance(frame, LLMFullResponseEndFrame):
            await self._finish_reply()
        await super().push_frame(frame, direction)

    # ------------------------------------------------------------------- synthesis

    async def run_tts(self, text: str) -> AsyncIterator[bytes]:
        """Send one sentence on the reply's context and yield its PCM as it streams in."""
        ws = await self._ensure_connected()
        ctx = self._reply
        if ctx is None or ctx.id not in self._contexts:
            ctx = self._reply = _Context(id=str(uuid.uuid4()))
            self._contexts[ctx.id] = ctx
        finished = False
        try:
            try:
                # Cartesia joins the transcripts of a context verbatim: keep the space.
                await ws.send(json.dumps(self._request(ctx.id, f"{text} ", more=True)))
                await ws.send(json.dumps(self._request(ctx.id, "", more=True, flush=True)))
            except ConnectionClosed as exc:
                raise CartesiaError(f"connection to Cartesia lost: {_describe_close(exc)}") from None
            while True:
                try:
                    message = await asyncio.wait_for(ctx.queue.get(), self.response_timeout_secs)
                except TimeoutError:
                    raise CartesiaError(
                        f"no answer from Cartesia in {self.response_timeout_secs:g}s"
                    ) from None
                if isinstance(message, _Dropped):
                    raise CartesiaError(f"connection to Cartesia lost mid-reply: {message.reason}")
                kind = message.get("type")
                if kind == "chunk":
                    pcm = self._decode(ctx, message.get("data"))
                    if pcm:
                        yield pcm
                elif kind == "flush_done":
                    finished = True
                    return
                elif kind == "done":
                    # Cartesia ended the context itself: this sentence is complete, and the
                    # next one needs a new context.
                    finished = True
                    self._forget(ctx)
                    return
                elif kind == "error":
                    raise CartesiaError(f"Cartesia error: {_error_text(message)}")
                # Timestamps and future message types carry nothing needed here.
        finally:
            if not finished:
                # Interrupted (cancelled or closed early), failed, or timed out: Cartesia
                # must stop generating for this context, and it is not used again.
                self._abandon(ctx)

    def _request(
        self, context_id: str, transcript: str, *, more: bool, flush: bool = False
    ) -> dict[str, Any]:
        # Every input on a context must repeat the same fields except transcript/continue.
        request: dict[str, Any] = {
            "context_id": context_id,
            "model_id": self.model,
            "transcript": transcript,
            "voice": {"mode": "id", "id": self.voice_id},
            "output_format": {"container": "raw", "encoding": self.encoding, "sample_rate": self.sample_rate},
            "language": self.language,
            "continue": more,
        }
        if flush:
            request["flush"] = True
        return request

    def _decode(self, ctx: _Context, data: Any) -> bytes:
        if not isinstance(data, str) or not data:
            return b""
        try:
            raw = base64.b64decode(data)
        except (binascii.Error, ValueError):
            logger.warning("%s: ignoring an undecodable audio chunk from Cartesia", self.name)
            return b""
        if self.encoding == "pcm_mulaw":
            return ulaw_decode(raw)
        # Keep whole samples: a chunk ending mid-sample carries its odd byte to the next.
        raw = ctx.carry + raw
        cut = len(raw) - len(raw) % 2
        ctx.carry = raw[cut:]
        return raw[:cut]

    # -------------------------------------------------------------------- contexts

    def _forget(self, ctx: _Context) -> bool:
        if self._reply is ctx:
            self._reply = None
        return self._contexts.pop(ctx.id, None) is not None

    def _abandon(self, ctx: _Context) -> None:
        """Stop using ``ctx`` and ask Cartesia to cancel it (without waiting)."""
        if not self._forget(ctx):
            return  # already finished, abandoned, or its socket is gone
        ws = self._ws
        if ws is not None:
            message = {"context_id": ctx.id, "cancel": True}
            self.create_task(self._send_quietly(ws, message), "cartesia-cancel")

    async def _finish_reply(self) -> None:
        ctx = self._reply
        if ctx is None or not self._forget(ctx):
            return
        ws = self._ws
        if ws is not None:
            # An empty transcript with continue=false closes a context whose last input was
            # not known in advance. Its "done" answer is not needed, so it is not awaited.
            await self._send_quietly(ws, self._request(ctx.id, "", more=False))

    async def _send_quietly(self, ws: ClientConnection, message: dict[str, Any]) -> None:
        try:
            await asyncio.wait_for(ws.send(json.dumps(message)), 2.0)
        except (ConnectionClosed, TimeoutError) as exc:
            logger.debug("%s: could not send %s: %s", self.name, list(message), exc)

    # ------------------------------------------------------------------ connection

    async def _preconnect(self) -> None:
        try:
            await self._ensure_connected()
        except CartesiaError as exc:
            logger.error("%s: %s", self.name, exc)
            await self.push_error(f"{self.name}: {exc}")

    async def _ensure_connected(self) -> ClientConnection:
        """The open socket, connecting (with bounded retries) if there is none."""
        ws = self._ws
        if ws is not None:
            return ws
        async with self._connect_lock:
            if self._ws is not None:
                return self._ws
            if self._auth_error is not None:
                raise CartesiaError(self._auth_error)  # a rejected key will not heal
            last_error = ""
            for attempt in range(self.reconnect_attempts + 1):
                if attempt:
                    delay = min(self.reconnect_backoff_secs * 2 ** (attempt - 1), _MAX_BACKOFF_SECS)
                    logger.warning(
                        "%s: connecting to Cartesia failed (%s); retry %d/%d in %.1fs",
                        self.name,
                        last_error,
                        attempt,
                        self.reconnect_attempts,
                        delay,
                    )
                    await asyncio.sleep(delay)
                try:
                    ws = await connect(
                        self.url,
                        additional_headers={
                            "X-API-Key": self._api_key,
                            "Cartesia-Version": self.cartesia_version,
                        },
                        open_timeout=self.connect_timeout_secs,
                        close_timeout=1.0,
                        max_size=2**24,
                    )
                except InvalidStatus as exc:
                    status = exc.response.status_code
                    detail = exc.response.body.decode("utf-8", "replace").strip()[:200] or "no detail"
                    if status in (401, 403):
                        self._auth_error = f"Cartesia rejected the API key (HTTP {status}): {detail}"
                        raise CartesiaError(self._auth_error) from None
                    last_error = f"HTTP {status}: {detail}"
                except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
                    last_error = str(exc) or type(exc).__name__
                else:
                    self._ws = ws
                    self.connections += 1
                    self.create_task(self._receive(ws), "cartesia-receive")
                    logger.info("%s: connected to Cartesia (%s)", self.name, self.url)
                    return ws
            raise CartesiaError(
                f"cannot connect to Cartesia at {self.url} after {self.reconnect_attempts + 1} attempts: {last_error}"
            )

    async def _receive(self, ws: ClientConnection) -> None:
        """Route every message to its context until the socket closes."""
        reason = "closed"
        try:
            async for message in ws:
                if isinstance(message, str):
                    self._route(message)
            reason = _describe_close_of(ws)
        except ConnectionClosed as exc:
            reason = _describe_close(exc)
        finally:
            if self._ws is ws:
                self._ws = None
            # Contexts live on a socket: every one still waiting fails, and the next
            # sentence starts a new context on a new socket.
            contexts = list(self._contexts.values())
            self._contexts.clear()
            self._reply = None
            for ctx in contexts:
                ctx.queue.put_nowait(_Dropped(reason))
            if not self._closing:
                logger.warning("%s: Cartesia connection lost (%s); reconnecting", self.name, reason)
                self.create_task(self._reconnect(), "cartesia-reconnect")

    def _route(self, text: str) -> None:
        try:
            message: Any = json.loads(text)
        except ValueError:
            logger.warning("%s: ignoring a non-JSON message from Cartesia: %.100r", self.name, text)
            return
        if not isinstance(message, dict):
            return
        context_id = message.get("context_id")
        ctx = self._contexts.get(context_id) if isinstance(context_id, str) else None
        if ctx is not None:
            ctx.queue.put_nowait(message)
        elif message.get("type") == "error" and not context_id:
            # An error that names no context concerns the whole connection.
            for waiting in self._contexts.values():
                waiting.queue.put_nowait(message)
            logger.warning("%s: Cartesia error: %s", self.name, _error_text(message))
        # Anything else belongs to a context already finished or cancelled (a late chunk,
        # the "done" that answers a close): nothing waits for it.

    async def _reconnect(self) -> None:
        try:
            await self._ensure_connected()
        except CartesiaError as exc:
            # The next sentence tries again (and reports the error if it still fails).
            logger.warning("%s: %s", self.name, exc)

    async def _close_socket(self) -> None:
        self._closing = True
        ws, self._ws = self._ws, None
        if ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 1.0)

    async def cleanup(self) -> None:
        """Close the socket and stop every task."""
        await self._close_socket()
        await super().cleanup()


def _error_text(message: dict[str, Any]) -> str:
    # Error shapes differ between API versions: "error" (older), "title"/"message" (newer).
    parts = [str(message[key]) for key in ("title", "message", "error") if message.get(key)]
    if message.get("status_code"):
        parts.append(f"status {message['status_code']}")
    return ": ".join(parts) or json.dumps(message)[:200]


def _describe_close(exc: ConnectionClosed) -> str:
    frame = exc.rcvd
    if frame is None:
        return "no close frame (connection dropped)"
    return f"code {frame.code}{f' ({frame.reason})' if frame.reason else ''}"


def _describe_close_of(ws: ClientConnection) -> str:
    code, reason = ws.close_code, ws.close_reason
    return f"code {code}{f' ({reason})' if reason else ''}"
