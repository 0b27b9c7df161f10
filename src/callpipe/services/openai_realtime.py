"""OpenAI Realtime (speech-to-speech) on the phone path: one processor instead of STT + LLM + TTS.

::

    transport = FastAPIWebsocketTransport(websocket, FastAPIWebsocketParams(
        serializer=serializer, audio_in_passthrough=True))
    realtime = OpenAIRealtimeService(os.environ["OPENAI_API_KEY"], instructions=PROMPT,
                                     tools=TelephonyTools.schemas())
    Pipeline([transport.input(), realtime, transport.output()])

On a PCMU call the audio is never decoded: the caller's μ-law payloads (passed through by
the input, ``audio_in_passthrough``) go to ``input_audio_buffer.append`` as they are, and the
model's μ-law goes to the output as :class:`OutputEncodedAudioFrame`, which queues it on the
call's timeline untouched. PCMA/L16/G.722 calls (or a transport without passthrough)
convert once at the edge: the input to μ-law here, the output in the transport.

Turn-taking is the model's server VAD by default: ``speech_started`` asks the input for
the same barge-in as callpipe's own VAD (``clear`` to Telnyx at once), and the output then
reports how much of the model's audio item the caller heard (:class:`PlaybackCutFrame`),
which becomes ``conversation.item.truncate`` with that ``audio_end_ms``, so the model's
memory matches the caller's ears. ``turn_detection="local"`` uses callpipe's VAD (give the
transport a ``SileroVADAnalyzer``): its stop commits the buffer and asks for a response.

Tools are the LLM path's (``register_function``, :class:`TelephonyTools`); results go back
as ``function_call_output`` items and the model is asked to go on; ``end_call`` lets the
goodbye play out, then hangs up. ``LLMRunFrame`` asks for the greeting (``greet_on_connect=False``:
only then, e.g. from :class:`~callpipe.telephony.voicemail.VoicemailPolicy` once a person
answered) and ``TTSSpeakFrame`` has the model say that text (a voicemail message). A dropped socket is reconnected and the conversation so
far (transcripts) re-sent; if the service cannot be reached, ``fallback_audio`` (μ-law
8 kHz, e.g. "sorry, please call back later") plays and the call ends cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection, connect

from callpipe.audio import StreamResampler, get_codec, ulaw_encode
from callpipe.pipeline.frames import (
    CancelFrame,
    EndFrame,
    EndTaskFrame,
    Frame,
    InputAudioRawFrame,
    InputDTMFFrame,
    InputEncodedAudioFrame,
    InterruptionFrame,
    OutputEncodedAudioFrame,
    PlaybackCutFrame,
    StartFrame,
    TTSSpeakFrame,
    TTSStoppedFrame,
    UserStoppedSpeakingFrame,
)
from callpipe.pipeline.processor import FrameDirection
from callpipe.records import observer as records
from callpipe.services import realtime_protocol as proto
from callpipe.services.llm import FunctionSchema, LLMRunFrame, LLMService
from callpipe.services.openai_realtime_events import RealtimeEventHandler
from callpipe.services.realtime_protocol import RealtimeConfig, TurnDetection

__all__ = ["DEFAULT_MODEL", "OpenAIRealtimeService"]

logger = logging.getLogger("callpipe.services")

DEFAULT_MODEL = "gpt-realtime"
DEFAULT_BASE_URL = "https://api.openai.com/v1"
_RECONNECT_DELAYS = (0.1, 0.3, 1.0, 2.0)


class OpenAIRealtimeService(RealtimeEventHandler):
    """A Realtime API session per call: audio in, audio + transcripts + tool calls out.

    ``base_url`` (or ``OPENAI_BASE_URL``) points it at a compatible server (http(s) or ws(s);
    ``/realtime`` is appended). ``greeting``: the model is asked to say it when the call
    starts (``greet_on_connect=False``: when an ``LLMRunFrame`` comes). ``reconnect_attempts``: connection attempts in a row before giving up.
    """

    def __init__(
        self,
        api_key: str | None = None,
        *,
        model: str = DEFAULT_MODEL,
        voice: str = "marin",
        instructions: str = "",
        tools: list[FunctionSchema] | None = None,
        base_url: str | None = None,
        turn_detection: TurnDetection = "server_vad",
        transcription_model: str | None = "gpt-4o-mini-transcribe",
        greeting: str | None = None,
        greet_on_connect: bool = True,
        fallback_audio: bytes | None = None,
        reconnect_attempts: int = 3,
        connect_timeout_secs: float = 5.0,
        ping_interval_secs: float = 10.0,
        name: str | None = None,
    ) -> None:
        config = RealtimeConfig(
            model=model,
            voice=voice,
            instructions=instructions,
            tools=list(tools or []),
            turn_detection=turn_detection,
            transcription_model=transcription_model,
        )
        super().__init__(config, model=model, name=name)
        self.api_key = api_key or os.environ.get("OPENAI_API_KEY", "")
        self.base_url = base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
        self.url = proto.realtime_url(self.base_url, model)
        self.greeting = greeting
        self.greet_on_connect = greet_on_connect
        self._asked: list[dict[str, Any]] = []  # responses asked for before the session was up
        self.fallback_audio = fallback_audio
        self.reconnect_attempts = reconnect_attempts
        self.connect_timeout_secs = connect_timeout_secs
        self.ping_interval_secs = ping_interval_secs
        self.connections = 0
        self._session: asyncio.Task[None] | None = None
        self._stopping = False
        self._resampler: StreamResampler | None = None

    # ------------------------------------------------------------------ frames

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Audio to the model; barge-in and cuts to the session; end and cancel close it."""
        if isinstance(frame, InputEncodedAudioFrame):
            await self._send_audio(frame.payload if frame.codec == "PCMU" else self._to_ulaw(frame))
            return
        if isinstance(frame, InputAudioRawFrame):
            await self._send_audio(self._pcm_to_ulaw(frame.audio, frame.sample_rate))
            return
        await super(LLMService, self).process_frame(frame, direction)
        if isinstance(frame, StartFrame):
            self._observer = records.current()
            await self.push_frame(frame, direction)
            self._session = self.create_task(self._run(), "realtime-session")
            return
        if isinstance(frame, PlaybackCutFrame):
            await self._truncate(frame)
        elif isinstance(frame, InterruptionFrame):
            await self._cancel_response()
        elif isinstance(frame, UserStoppedSpeakingFrame) and self.config.turn_detection == "local":
            await self._send({"type": "input_audio_buffer.commit"})
            await self._send({"type": "response.create"})
        elif isinstance(frame, LLMRunFrame):
            await self._ask(f"Greet the caller by saying: {self.greeting}" if self.greeting else None)
        elif isinstance(frame, TTSSpeakFrame):
            await self._ask(f"Say exactly this, word for word, and nothing else: {frame.text}")
            return  # spoken by the model: no TTS after it
        elif isinstance(frame, InputDTMFFrame):
            entry = self._add_history("user", f"(The caller pressed the {frame.button} key.)")
            await self._send(proto.history_item(entry))
            await self._send({"type": "response.create"})
        elif isinstance(frame, EndFrame):
            await self._finish_reply()
            self._stopping = True
            await self.push_frame(frame, direction)
            await self._close()
            return
        elif isinstance(frame, CancelFrame):
            self._stopping = True
            await self._close()
        await self.push_frame(frame, direction)

    # ------------------------------------------------------------------- audio

    async def _send_audio(self, ulaw: bytes) -> None:
        ws = self._ws
        if ws is None or not ulaw:
            return  # not connected (yet, or reconnecting): the model cannot hear this
        self._appended_bytes += len(ulaw)
        with contextlib.suppress(websockets.ConnectionClosed):  # the session task reconnects
            await ws.send(proto.append_audio(ulaw))

    def _to_ulaw(self, frame: InputEncodedAudioFrame) -> bytes:
        codec = getattr(self, "_in_codec", None)
        if codec is None or codec.name != frame.codec:
            codec = self._in_codec = get_codec(frame.codec, frame.sample_rate)
        return self._pcm_to_ulaw(codec.decode(frame.payload), codec.sample_rate)

    def _pcm_to_ulaw(self, pcm: bytes, rate: int) -> bytes:
        resampler = self._resampler
        if resampler is None or resampler.in_rate != rate:
            resampler = self._resampler = StreamResampler(rate, 8000)
        return ulaw_encode(resampler.process(pcm))

    # ----------------------------------------------------------------- session

    async def _run(self) -> None:
        failures = 0
        last_error = ""
        while not self._stopping:
            try:
                ws = await connect(
                    self.url,
                    additional_headers={"Authorization": f"Bearer {self.api_key}"},
                    open_timeout=self.connect_timeout_secs,
                    ping_interval=self.ping_interval_secs,
                    max_size=2**24,
                )
            except (OSError, TimeoutError, websockets.InvalidHandshake, websockets.InvalidURI) as exc:
                failures += 1
                last_error = _describe(exc)
                if failures >= self.reconnect_attempts:
                    await self._unavailable(last_error)
                    return
                await asyncio.sleep(_RECONNECT_DELAYS[min(failures, len(_RECONNECT_DELAYS)) - 1])
                continue
            failures = 0
            await self._serve(ws)
            if not self._stopping:
                logger.warning("realtime connection dropped; reconnecting with the conversation so far")
                if self._observer is not None:
                    self._observer.event("service", "realtime_reconnect")

    async def _serve(self, ws: ClientConnection) -> None:
        restoring = self.connections > 0
        self.connections += 1
        interrupted_reply = self._responding
        try:
            await ws.send(json.dumps(proto.session_update(self.config)))
            if restoring:
                for entry in self.history:
                    await ws.send(json.dumps(proto.history_item(entry)))
            self._ws = ws
            if restoring and interrupted_reply:
                await self._end_reply()  # what arrived of the lost reply plays; the model says it again
                await ws.send(json.dumps({"type": "response.create"}))
            elif not restoring and self.greeting and self.greet_on_connect:
                instructions = f"Greet the caller by saying: {self.greeting}"
                await ws.send(
                    json.dumps({"type": "response.create", "response": {"instructions": instructions}})
                )
            asked, self._asked = self._asked, []
            for event in asked:
                await ws.send(json.dumps(event))
            async for message in ws:
                event = json.loads(message)
                if isinstance(event, dict):
                    await self._on_event(event)
        except websockets.ConnectionClosed:
            pass
        finally:
            self._ws = None

    async def _unavailable(self, reason: str) -> None:
        logger.error("the realtime service is unavailable: %s", reason)
        if self._observer is not None:
            self._observer.error("realtime_unavailable", reason)
        if self.fallback_audio:
            await self.push_frame(
                OutputEncodedAudioFrame(payload=self.fallback_audio, codec="PCMU", sample_rate=8000)
            )
            await self.push_frame(TTSStoppedFrame())
        await self.push_frame(
            EndTaskFrame(reason="the realtime service is unavailable"), FrameDirection.UPSTREAM
        )

    async def _ask(self, instructions: str | None) -> None:
        """Ask for a response now (or as soon as the session is up); an end waits for it."""
        event: dict[str, Any] = {"type": "response.create"}
        if instructions:
            event["response"] = {"instructions": instructions}
        # Counted as under way from now: an EndFrame right behind (the voicemail policy's
        # hang-up after its message) lets it arrive first (bounded, _finish_reply).
        self._responding = True
        self._response_done.clear()
        if self._ws is None:
            self._asked.append(event)
        else:
            await self._send(event)

    async def _close(self) -> None:
        ws = self._ws
        if ws is not None:
            await ws.close()
        await self.cancel_task(self._session)
        self._session = None

    async def cleanup(self) -> None:
        """Close the session."""
        self._stopping = True
        await self._close()
        await super().cleanup()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, websockets.InvalidStatus):
        return f"HTTP {exc.response.status_code} from the realtime server"
    return f"{type(exc).__name__}: {exc}"
