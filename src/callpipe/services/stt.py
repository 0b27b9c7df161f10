"""The speech-to-text interface.

Two shapes, one contract (audio in, :class:`TranscriptionFrame` out):

* :class:`STTService` - *streaming*: every :class:`InputAudioRawFrame` goes to
  :meth:`STTService.process_audio` (a provider sends it to its live socket) and results
  come back from the provider's own task as interim and final transcripts.
* :class:`SegmentedSTTService` - *segmented*: audio between the VAD's start and stop
  (plus a little before the start) is transcribed as one utterance by
  :meth:`SegmentedSTTService.run_stt`, in a task, when the caller stops. With
  ``speculative=True`` the transcription starts when the VAD hears the caller go quiet
  (:class:`UserSpeechPausedFrame`, ~0.1 s into the silence) and runs in parallel with the
  rest of the stop window; if speech resumes the result is thrown away, otherwise it is
  the turn's transcript (the audio after the pause is silence by the VAD's own measure),
  ready about when the stop window ends.

Input audio is consumed here (nothing after the STT needs it), which keeps the per-frame
cost of the rest of the pipeline at zero.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time

from callpipe.pipeline.frames import (
    CancelFrame,
    EndFrame,
    Frame,
    InputAudioRawFrame,
    MetricsData,
    MetricsFrame,
    SpeculativeTranscriptionFrame,
    StartFrame,
    TranscriptionFrame,
    UserSpeechPausedFrame,
    UserSpeechResumedFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from callpipe.pipeline.processor import FrameDirection, FrameProcessor
from callpipe.records import observer as records

logger = logging.getLogger("callpipe.services")


class STTService(FrameProcessor):
    """Base class for streaming STT: override :meth:`process_audio` and push transcripts."""

    # Pipecat's ``audio_passthrough``: also pass the caller's audio on downstream
    # (off by default here: nothing after the STT usually needs it).
    audio_passthrough = False

    def __init__(self, *, language: str = "en", name: str | None = None) -> None:
        super().__init__(name=name)
        self.language = language
        self.sample_rate = 0
        self._usage_audio_bytes = 0  # caller audio this service received (its usage)

    async def process_audio(self, frame: InputAudioRawFrame) -> None:
        """Send one frame of caller audio to the provider (must not block)."""

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Audio goes to :meth:`process_audio`; everything else passes on."""
        await super().process_frame(frame, direction)
        if isinstance(frame, InputAudioRawFrame):
            self._usage_audio_bytes += len(frame.audio)
            await self.process_audio(frame)
            if self.audio_passthrough:
                await self.push_frame(frame, direction)
            return
        if isinstance(frame, StartFrame):
            self.sample_rate = frame.audio_in_sample_rate
        await self.push_frame(frame, direction)

    async def push_transcription(self, text: str, *, final: bool = True) -> None:
        """Push a transcript downstream (from the provider's task)."""
        from callpipe.pipeline.frames import InterimTranscriptionFrame

        now = time.strftime("%Y-%m-%dT%H:%M:%S")
        if final:
            observer = records.current()
            if observer is not None:
                observer.transcript(text)
            await self.push_frame(TranscriptionFrame(text, "caller", now, self.language))
        else:
            await self.push_frame(InterimTranscriptionFrame(text, "caller", now, self.language))

    def billed_audio_secs(self) -> float:
        """Seconds of audio the provider was sent (a streaming STT gets all of the call)."""
        return self._usage_audio_bytes / 2 / max(self.sample_rate, 1)

    async def cleanup(self) -> None:
        """Report this service's usage to the call's record."""
        observer = records.current()
        if observer is not None and self._usage_audio_bytes:
            observer.stt_audio(records.provider_name(self), self.billed_audio_secs())
            self._usage_audio_bytes = 0
        await super().cleanup()


class SegmentedSTTService(STTService):
    """STT over whole utterances, bounded by the VAD; override :meth:`run_stt`.

    ``preroll_secs`` of audio before the VAD's start are included (the VAD fires after
    ``start_secs`` of speech, so the first syllable would otherwise be lost), and an
    utterance longer than ``max_utterance_secs`` is cut there.
    """

    def __init__(
        self,
        *,
        language: str = "en",
        preroll_secs: float = 0.8,
        max_utterance_secs: float = 30.0,
        speculative: bool = False,
        name: str | None = None,
    ) -> None:
        super().__init__(language=language, name=name)
        self.speculative = speculative
        self.preroll_secs = preroll_secs
        self.max_utterance_secs = max_utterance_secs
        self._preroll: collections.deque[bytes] = collections.deque()
        self._preroll_bytes = 0
        self._utterance = bytearray()
        self._speaking = False
        self._jobs: set[asyncio.Task[None]] = set()
        # The speculative transcription of the current utterance, started at a pause.
        self._speculation: asyncio.Task[str] | None = None
        self._speculated_bytes = 0
        self._transcribed_bytes = 0

    async def run_stt(self, pcm: bytes, sample_rate: int) -> str:
        """Transcribe one utterance (PCM16 mono). Subclasses implement it."""
        raise NotImplementedError

    async def process_audio(self, frame: InputAudioRawFrame) -> None:
        """Keep the audio of the current utterance (and a short pre-roll)."""
        if self._speaking:
            if len(self._utterance) < self.max_utterance_secs * 2 * frame.sample_rate:
                self._utterance += frame.audio
            return
        self._preroll.append(frame.audio)
        self._preroll_bytes += len(frame.audio)
        limit = self.preroll_secs * 2 * frame.sample_rate
        while self._preroll and self._preroll_bytes - len(self._preroll[0]) >= limit:
            self._preroll_bytes -= len(self._preroll.popleft())

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Start/stop utterances on VAD events; finish transcribing before the end."""
        if isinstance(frame, UserStartedSpeakingFrame):
            self._drop_speculation()
            self._speaking = True
            self._utterance = bytearray(b"".join(self._preroll))
            self._preroll.clear()
            self._preroll_bytes = 0
        elif isinstance(frame, UserSpeechPausedFrame) and self._speaking and self.speculative:
            self._drop_speculation()
            self._speculated_bytes = len(self._utterance)
            self._speculation = self.create_task(
                self._speculate(bytes(self._utterance)), "speculative transcribe"
            )
        elif isinstance(frame, UserSpeechResumedFrame):
            self._drop_speculation()
        elif isinstance(frame, UserStoppedSpeakingFrame) and self._speaking:
            self._speaking = False
            audio, self._utterance = bytes(self._utterance), bytearray()
            speculation, self._speculation = self._speculation, None
            if audio:
                job = self.create_task(self._transcribe(audio, speculation, time.monotonic()), "transcribe")
                self._jobs.add(job)
                job.add_done_callback(self._jobs.discard)
        elif isinstance(frame, EndFrame) and self._jobs:
            await asyncio.wait(set(self._jobs), timeout=10)
        elif isinstance(frame, CancelFrame):
            self._drop_speculation()
            self._utterance.clear()
        await super().process_frame(frame, direction)

    def billed_audio_secs(self) -> float:
        """Seconds of audio transcribed (only the utterances)."""
        return self._transcribed_bytes / 2 / max(self.sample_rate, 1)

    async def _speculate(self, audio: bytes) -> str:
        text = await self.run_stt(audio, self.sample_rate)
        if self._speaking and self._speculation is asyncio.current_task() and text.strip():
            # Still in the stop window: let the services after us prepare the reply.
            await self.push_frame(SpeculativeTranscriptionFrame(text=text.strip()))
        return text

    def _drop_speculation(self) -> None:
        # Cancelling drops a job still queued for the model; one already decoding finishes
        # on its worker (it cannot be interrupted) and its result is ignored.
        if self._speculation is not None:
            self._speculation.cancel()
            self._speculation = None

    async def _transcribe(
        self, audio: bytes, speculation: asyncio.Task[str] | None, stopped_at: float
    ) -> None:
        self._transcribed_bytes += len(audio)
        self.start_ttfb_metrics()
        started = time.monotonic()
        try:
            text = (
                await speculation if speculation is not None else await self.run_stt(audio, self.sample_rate)
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.exception("%s failed", self.name)
            await self.push_error(f"{self.name}: {exc}")
            return
        await self.stop_ttfb_metrics()
        after_stop = time.monotonic() - stopped_at
        logger.info(
            "stt %.1fs of audio, transcript %.0f ms after the stop%s (%d words)",
            len(audio) / 2 / max(self.sample_rate, 1),
            after_stop * 1000,
            " (speculative)"
            if speculation is not None
            else f" ({(time.monotonic() - started) * 1000:.0f} ms)",
            len(text.split()),
        )
        # The words themselves only at DEBUG: transcripts are personal data (kept in the record).
        logger.debug("stt transcript: %r", text)
        await self.push_frame(
            MetricsFrame(
                data=[MetricsData(name="transcript_after_stop", value=after_stop, processor=self.name)]
            )
        )
        if text.strip():
            await self.push_transcription(text.strip())
