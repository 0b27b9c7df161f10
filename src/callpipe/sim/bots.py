"""Stand-in bots for tests, benchmarks and load: no STT, LLM or TTS, just canned speech.

:class:`CannedReplyProcessor` greets the caller and answers every end of a user turn with
the same pre-recorded audio. Put between ``transport.input()`` and ``transport.output()``
it exercises everything a real bot does on the audio path (VAD, turn-taking, paced
output, barge-in, marks, hang-up) while the speech services cost nothing, so what is
measured is the framework.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, WebSocket

from callpipe.audio.vad import SileroVADAnalyzer, VADParams
from callpipe.pipeline.frames import (
    EndTaskFrame,
    Frame,
    InputDTMFFrame,
    InterruptionFrame,
    OutputAudioRawFrame,
    StartFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
    UserStoppedSpeakingFrame,
)
from callpipe.pipeline.pipeline import Pipeline
from callpipe.pipeline.processor import FrameDirection, FrameProcessor
from callpipe.pipeline.task import PipelineParams, PipelineRunner, PipelineTask
from callpipe.runner import TelephonyHandshakeError, parse_telephony_websocket
from callpipe.transports.fastapi import FastAPIWebsocketParams, FastAPIWebsocketTransport
from callpipe.transports.serializers import TelnyxFrameSerializer, TelnyxSerializerParams

logger = logging.getLogger("callpipe.sim")


class CannedReplyProcessor(FrameProcessor):
    """Speaks ``greeting`` at start and ``reply`` after each user turn.

    Audio is PCM16 mono at ``sample_rate``, pushed in ``chunk_secs`` frames the way a TTS
    service streams it. ``reply_words`` are spread evenly over the reply as
    :class:`TTSTextFrame` so an aggregator after the output can tell what was heard.
    ``hang_up_digit``: a DTMF key that ends the call gracefully.
    """

    def __init__(
        self,
        reply: bytes,
        sample_rate: int,
        *,
        greeting: bytes | None = None,
        reply_words: Sequence[str] = (),
        chunk_secs: float = 0.04,
        hang_up_digit: str | None = "#",
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        self.reply = reply
        self.greeting = greeting
        self.sample_rate = sample_rate
        self.reply_words = list(reply_words)
        self.chunk_bytes = max(2, int(sample_rate * chunk_secs) * 2)
        self.hang_up_digit = hang_up_digit
        self.turns = 0
        self.dtmf: list[str] = []
        self.interruptions = 0
        self.interrupted_at: list[float] = []

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """React to start, end of user turns, DTMF and interruptions; pass everything on."""
        await super().process_frame(frame, direction)
        if isinstance(frame, InterruptionFrame):
            # Before pushing: the output transport sends ``clear`` during the push.
            self.interruptions += 1
            self.interrupted_at.append(time.monotonic())
        await self.push_frame(frame, direction)
        if direction is not FrameDirection.DOWNSTREAM:
            return
        if isinstance(frame, StartFrame) and self.greeting:
            await self.speak(self.greeting)
        elif isinstance(frame, UserStoppedSpeakingFrame):
            self.turns += 1
            await self.speak(self.reply, self.reply_words)
        elif isinstance(frame, InputDTMFFrame):
            self.dtmf.append(frame.button)
            if frame.button == self.hang_up_digit:
                await self.push_frame(
                    EndTaskFrame(reason=f"caller pressed {frame.button}"), FrameDirection.UPSTREAM
                )

    async def speak(self, audio: bytes, words: Sequence[str] = ()) -> None:
        """Push ``audio`` as a TTS reply, with ``words`` spread evenly over it."""
        await self.push_frame(TTSStartedFrame())
        size = self.chunk_bytes
        chunks = [audio[i : i + size] for i in range(0, len(audio), size)]
        word_at = {int(i * len(chunks) / len(words)): word for i, word in enumerate(words)} if words else {}
        for index, chunk in enumerate(chunks):
            word = word_at.get(index)
            if word is not None:
                await self.push_frame(TTSTextFrame(word))
            frame: OutputAudioRawFrame = TTSAudioRawFrame(audio=chunk, sample_rate=self.sample_rate)
            await self.push_frame(frame)
        await self.push_frame(TTSStoppedFrame())


@dataclass(kw_only=True)
class CannedBotConfig:
    """How :func:`create_canned_bot_app` builds each call's pipeline."""

    reply: bytes
    sample_rate: int = 8000
    greeting: bytes | None = None
    reply_words: Sequence[str] = ()
    vad_params: VADParams = field(default_factory=lambda: VADParams(stop_secs=0.2))
    inbound_encoding: str = "PCMU"
    api_key: str | None = None
    api_base_url: str | None = None
    audio_out_lead_secs: float = 0.08
    receive_timeout_secs: float | None = 10.0
    media_reorder_frames: int = 0
    allow_interruptions: bool = True
    interruption_min_secs: float = 0.0
    interruption_min_words: int = 0
    idle_timeout_secs: float | None = 300.0
    # Extra processors for a call (tests): built per call from its index (0, 1, ...).
    before_output: Callable[[int], Sequence[FrameProcessor]] | None = None
    after_output: Callable[[int], Sequence[FrameProcessor]] | None = None
    # Keep every call's :class:`CannedBotCall` (tests inspect them). A long-running server
    # (the benchmark's bot) sets False: kept calls hold their whole pipeline, so the heap
    # and every full garbage collection would grow with each call served.
    keep_calls: bool = True


@dataclass
class CannedBotCall:
    """What one call of the canned bot left behind (for tests).

    ``finished`` is a :class:`threading.Event`: the bot runs on the server's thread,
    tests usually on another loop (use :meth:`wait_finished` from async code).
    """

    call_data: dict[str, Any]
    responder: CannedReplyProcessor
    heard: list[str]
    transport: FastAPIWebsocketTransport
    finished: threading.Event

    async def wait_finished(self, timeout: float = 5.0) -> None:
        """Wait (from any event loop) until the call's pipeline has ended; TimeoutError if not."""
        deadline = time.monotonic() + timeout
        while not self.finished.is_set():
            if time.monotonic() > deadline:
                raise TimeoutError("the bot's pipeline did not finish in time")
            await asyncio.sleep(0.01)


class _HeardRecorder(FrameProcessor):
    """After the output transport: collects the words the caller actually heard."""

    def __init__(self, heard: list[str]) -> None:
        super().__init__()
        self._heard = heard

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, TTSTextFrame):
            self._heard.append(frame.text)
        await self.push_frame(frame, direction)


async def accept_telnyx_stream(websocket: WebSocket) -> dict[str, Any] | None:
    """Accept ``websocket`` and read Telnyx's handshake: the call's data, or ``None`` if refused."""
    await websocket.accept()
    try:
        _, call_data = await parse_telephony_websocket(websocket)
    except TelephonyHandshakeError:
        return None
    return call_data


def telnyx_serializer(
    call_data: dict[str, Any], *, inbound_encoding: str, api_key: str | None, api_base_url: str | None
) -> TelnyxFrameSerializer:
    """The call's serializer, hanging up through the Call Control API when there is an ``api_key``."""
    return TelnyxFrameSerializer(
        stream_id=call_data["stream_id"],
        outbound_encoding=call_data["outbound_encoding"],
        inbound_encoding=inbound_encoding,
        call_control_id=call_data["call_control_id"],
        api_key=api_key,
        params=TelnyxSerializerParams(auto_hang_up=bool(api_key), api_base_url=api_base_url),
    )


def _canned_transport(
    websocket: WebSocket, call_data: dict[str, Any], config: CannedBotConfig
) -> FastAPIWebsocketTransport:
    serializer = telnyx_serializer(
        call_data,
        inbound_encoding=config.inbound_encoding,
        api_key=config.api_key,
        api_base_url=config.api_base_url,
    )
    return FastAPIWebsocketTransport(
        websocket=websocket,
        params=FastAPIWebsocketParams(
            audio_in_enabled=True,
            audio_out_enabled=True,
            add_wav_header=False,
            serializer=serializer,
            vad_analyzer=SileroVADAnalyzer(params=config.vad_params),
            audio_out_lead_secs=config.audio_out_lead_secs,
            receive_timeout_secs=config.receive_timeout_secs,
            media_reorder_frames=config.media_reorder_frames,
        ),
    )


def _canned_task(pipeline: Pipeline, config: CannedBotConfig) -> PipelineTask:
    return PipelineTask(
        pipeline,
        params=PipelineParams(
            audio_in_sample_rate=config.sample_rate,
            audio_out_sample_rate=config.sample_rate,
            allow_interruptions=config.allow_interruptions,
            interruption_min_secs=config.interruption_min_secs,
            interruption_min_words=config.interruption_min_words,
        ),
        idle_timeout_secs=config.idle_timeout_secs,
    )


def create_canned_bot_app(config: CannedBotConfig) -> tuple[FastAPI, list[CannedBotCall]]:
    """A FastAPI app with ``/ws`` running the canned bot, built as Pipecat's Telnyx guide does.

    Returns the app and a list that receives a :class:`CannedBotCall` per call (stays
    empty with ``config.keep_calls`` false).
    """
    app = FastAPI()
    calls: list[CannedBotCall] = []
    served = itertools.count()

    @app.websocket("/ws")
    async def websocket_endpoint(websocket: WebSocket) -> None:
        call_data = await accept_telnyx_stream(websocket)
        if call_data is None:
            return
        transport = _canned_transport(websocket, call_data, config)
        responder = CannedReplyProcessor(
            config.reply, config.sample_rate, greeting=config.greeting, reply_words=config.reply_words
        )
        heard: list[str] = []
        call = CannedBotCall(call_data, responder, heard, transport, threading.Event())
        if config.keep_calls:
            calls.append(call)
        index = next(served)
        before = list(config.before_output(index)) if config.before_output else []
        after = list(config.after_output(index)) if config.after_output else []
        pipeline = Pipeline(
            [transport.input(), *before, responder, transport.output(), *after, _HeardRecorder(heard)]
        )
        try:
            await PipelineRunner().run(_canned_task(pipeline, config))
        finally:
            call.finished.set()

    return app, calls
