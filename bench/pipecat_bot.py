"""The canned bot on Pipecat 1.14, built the way Pipecat's Telnyx guide builds a bot.

Runs under Pipecat's own virtualenv (it must not import callpipe)::

    /tmp/pipecat-venv/bin/python bench/pipecat_bot.py --port 8766 \\
        --reply bench/data/reply_8k.wav --greeting bench/data/greeting_8k.wav

It is the Pipecat twin of ``callpipe.sim.bots.create_canned_bot_app``: ``/ws`` accepts a
Telnyx media stream, greets the caller and answers every end of a user turn with the
same pre-recorded audio, pushed as a TTS service would push it. No STT, LLM or TTS, so
what is measured is the framework.

Turn detection, as Pipecat 1.14 wires it: ``FastAPIWebsocketParams`` no longer has a
``vad_analyzer`` field (pydantic silently drops it), so the Silero VAD runs in a
``VADProcessor`` and a ``UserTurnProcessor`` turns its events into user turns (what the
guide's ``LLMUserAggregatorParams(vad_analyzer=...)`` does inside the user aggregator).
Start strategies are Pipecat's defaults (VAD, transcription). The default stop strategy
(the Smart Turn v3 model) is replaced by ``SpeechTimeoutUserTurnStopStrategy`` with no
speech timeout and no transcript wait, so a user turn ends when Silero VAD reports the
end of speech (``stop_secs``), as in callpipe.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
import wave
from collections.abc import Sequence
from pathlib import Path

import uvicorn
from fastapi import FastAPI, WebSocket
from fastapi.responses import PlainTextResponse
from loguru import logger
from pipecat.audio.vad.silero import SileroVADAnalyzer
from pipecat.audio.vad.vad_analyzer import VADParams
from pipecat.frames.frames import (
    EndWorkerFrame,
    Frame,
    InputDTMFFrame,
    InterruptionFrame,
    StartFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
    UserStoppedSpeakingFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.audio.vad_processor import VADProcessor
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.runner.utils import parse_telephony_websocket
from pipecat.serializers.telnyx import TelnyxFrameSerializer
from pipecat.transports.websocket.fastapi import FastAPIWebsocketParams, FastAPIWebsocketTransport
from pipecat.turns.user_stop import SpeechTimeoutUserTurnStopStrategy
from pipecat.turns.user_turn_processor import UserTurnProcessor
from pipecat.turns.user_turn_strategies import UserTurnStrategies
from pipecat.utils.text.base_text_aggregator import TextType
from pipecat.workers.runner import WorkerRunner

SAMPLE_RATE = 8000


class CannedReply(FrameProcessor):
    """Speaks ``greeting`` at start and ``reply`` after each user turn (Pipecat style).

    The twin of callpipe's ``CannedReplyProcessor``: PCM16 mono at ``sample_rate``,
    pushed in ``chunk_secs`` :class:`TTSAudioRawFrame` chunks between
    :class:`TTSStartedFrame` and :class:`TTSStoppedFrame`, with ``reply_words`` spread
    evenly as :class:`TTSTextFrame`. ``hang_up_digit`` ends the call gracefully.
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

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """React to start, end of user turns, DTMF and interruptions; pass everything on."""
        await super().process_frame(frame, direction)
        if isinstance(frame, InterruptionFrame):
            self.interruptions += 1
        await self.push_frame(frame, direction)
        if direction is not FrameDirection.DOWNSTREAM:
            return
        if isinstance(frame, StartFrame) and self.greeting:
            await self.speak(self.greeting)
        elif isinstance(frame, UserStoppedSpeakingFrame):
            self.turns += 1
            await self.speak(self.reply, self.reply_words)
        elif isinstance(frame, InputDTMFFrame):
            self.dtmf.append(str(frame.button))
            if frame.button == self.hang_up_digit:
                await self.push_frame(EndWorkerFrame(reason=f"caller pressed {frame.button}"))

    async def speak(self, audio: bytes, words: Sequence[str] = ()) -> None:
        """Push ``audio`` as a TTS reply, with ``words`` spread evenly over it."""
        context_id = str(uuid.uuid4())
        await self.push_frame(TTSStartedFrame(context_id=context_id))
        size = self.chunk_bytes
        chunks = [audio[i : i + size] for i in range(0, len(audio), size)]
        word_at = {int(i * len(chunks) / len(words)): word for i, word in enumerate(words)} if words else {}
        for index, chunk in enumerate(chunks):
            word = word_at.get(index)
            if word is not None:
                await self.push_frame(TTSTextFrame(word, text_type=TextType.WORD, context_id=context_id))
            await self.push_frame(
                TTSAudioRawFrame(
                    audio=chunk, sample_rate=self.sample_rate, num_channels=1, context_id=context_id
                )
            )
        await self.push_frame(TTSStoppedFrame(context_id=context_id))


def read_pcm(path: str | Path, sample_rate: int = SAMPLE_RATE) -> bytes:
    """The frames of a mono 16-bit WAV file at ``sample_rate``."""
    with wave.open(str(path), "rb") as wav:
        if (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) != (1, 2, sample_rate):
            raise SystemExit(f"{path}: expected mono 16-bit {sample_rate} Hz")
        return wav.readframes(wav.getnframes())


def create_app(reply: bytes, greeting: bytes | None, stop_secs: float) -> FastAPI:
    """A FastAPI app with ``/ws`` (one canned-bot pipeline per call), ``/healthz`` and ``/debug/tasks``."""
    app = FastAPI()

    @app.get("/healthz", response_class=PlainTextResponse)
    async def healthz() -> str:
        return "ok"

    @app.get("/debug/tasks")
    async def debug_tasks() -> dict[str, int]:
        return {"tasks": len(asyncio.all_tasks())}

    @app.websocket("/ws")
    async def websocket_endpoint(websocket: WebSocket) -> None:
        await websocket.accept()
        _, call_data = await parse_telephony_websocket(websocket)
        serializer = TelnyxFrameSerializer(
            stream_id=call_data["stream_id"],
            outbound_encoding=call_data["outbound_encoding"],
            inbound_encoding="PCMU",
            # 1.14 normalizes Telnyx's call_control_id onto ``call_id``.
            call_control_id=call_data["call_id"],
            api_key=None,
            params=TelnyxFrameSerializer.InputParams(auto_hang_up=False),
        )
        transport = FastAPIWebsocketTransport(
            websocket=websocket,
            params=FastAPIWebsocketParams(
                audio_in_enabled=True,
                audio_out_enabled=True,
                add_wav_header=False,
                serializer=serializer,
            ),
        )
        vad = VADProcessor(vad_analyzer=SileroVADAnalyzer(params=VADParams(stop_secs=stop_secs)))
        user_turns = UserTurnProcessor(
            user_turn_strategies=UserTurnStrategies(
                stop=[SpeechTimeoutUserTurnStopStrategy(user_speech_timeout=0.0, wait_for_transcript=False)]
            )
        )
        responder = CannedReply(reply, SAMPLE_RATE, greeting=greeting)
        pipeline = Pipeline([transport.input(), vad, user_turns, responder, transport.output()])
        # PipelineWorker / WorkerRunner (with add_workers) are 1.14's names for the
        # guide's PipelineTask / PipelineRunner.run(task), deprecated aliases since 1.3.0.
        worker = PipelineWorker(
            pipeline,
            params=PipelineParams(audio_in_sample_rate=SAMPLE_RATE, audio_out_sample_rate=SAMPLE_RATE),
        )

        @transport.event_handler("on_client_disconnected")
        async def on_client_disconnected(transport: FastAPIWebsocketTransport, client: WebSocket) -> None:
            await worker.cancel()

        runner = WorkerRunner(handle_sigint=False)
        await runner.add_workers(worker)
        await runner.run()

    return app


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--reply", required=True, help="8 kHz mono 16-bit WAV")
    parser.add_argument("--greeting", default=None, help="8 kHz mono 16-bit WAV")
    parser.add_argument("--stop-secs", type=float, default=0.2)
    args = parser.parse_args(argv)
    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    reply = read_pcm(args.reply)
    greeting = read_pcm(args.greeting) if args.greeting else None
    app = create_app(reply, greeting, args.stop_secs)
    # loop="auto" (the default) picks uvloop when it is installed, as it is here.
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning")
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
