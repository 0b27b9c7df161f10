"""Whisper on CTranslate2, driven directly with a short encoder window.

faster-whisper always pads the encoder input to Whisper's 30 s (3000 mel frames), which
costs ~0.5 s of CPU for every utterance however short. CTranslate2's Whisper accepts
shorter input: a 10 s window encodes in a fraction of that, and (measured on real 8 kHz
phone speech, see docs/benchmarks.md) recognizes as well. Windows under ~8 s make the
decoder loop, so the window is a setting with a floor, and an utterance longer than the
window gets a window that fits it (up to 30 s). The decoder's output length is bounded
by the audio's length, so a looping decode costs milliseconds, not seconds, and a
repetitive result is decoded once more with the full 30 s window.

Only public pieces are used: ``ctranslate2.models.Whisper`` (``encode``/``generate``),
faster-whisper's ``FeatureExtractor`` (the log-mel spectrogram) and the model's
``tokenizer.json`` through ``tokenizers``. Versions are pinned in ``pyproject.toml``.
"""

from __future__ import annotations

import json
import math
import re
import zlib
from pathlib import Path
from typing import Any

import numpy as np

WHISPER_RATE = 16000
FRAMES_PER_SEC = 100  # mel frames (10 ms hop)
MIN_WINDOW_SECS = 8.0
MAX_WINDOW_SECS = 30.0
# Speech is at most ~5 tokens a second; twice that plus a margin never cuts a real
# transcript and stops a looping decoder early.
_TOKENS_PER_SEC = 10
_TOKEN_MARGIN = 16
_REPETITIVE = 2.4  # zlib compression ratio above which a transcript is a loop
_SENTENCES = re.compile(r"(?<=[.!?])\s+")


def drop_repeats(text: str) -> str:
    """Remove a sentence repeated right after itself: Whisper's decoder tends to say the
    utterance again into the silence that pads a short window."""
    kept: list[str] = []
    for sentence in _SENTENCES.split(text.strip()):
        if not kept or sentence.lower() != kept[-1].lower():
            kept.append(sentence)
    return " ".join(kept)


def compression_ratio(text: str) -> float:
    """How well ``text`` compresses: looping transcripts compress very well."""
    data = text.encode()
    return len(data) / max(1, len(zlib.compress(data)))


class WhisperEngine:
    """One loaded Whisper model (thread-safe for one caller at a time per worker thread)."""

    def __init__(self, model_dir: str, *, compute_type: str = "int8", cpu_threads: int = 1) -> None:
        import ctranslate2
        import tokenizers
        from faster_whisper.feature_extractor import FeatureExtractor

        path = Path(model_dir)
        self.model = ctranslate2.models.Whisper(
            str(path), device="cpu", compute_type=compute_type, intra_threads=cpu_threads, inter_threads=1
        )
        self.tokenizer = tokenizers.Tokenizer.from_file(str(path / "tokenizer.json"))
        kwargs: dict[str, Any] = {"feature_size": int(self.model.n_mels)}
        preprocessor = path / "preprocessor_config.json"
        if preprocessor.is_file():
            config = json.loads(preprocessor.read_text())
            kwargs.update({k: config[k] for k in ("hop_length", "n_fft", "sampling_rate") if k in config})
        self.features = FeatureExtractor(**kwargs)
        self.multilingual = bool(self.model.is_multilingual)
        self.eot = self._id("<|endoftext|>")

    def _id(self, token: str) -> int:
        value = self.tokenizer.token_to_id(token)
        if value is None:
            raise ValueError(f"the Whisper tokenizer has no {token}")
        return int(value)

    def _prompt(self, language: str, prompt: str | None) -> list[int]:
        tokens: list[int] = []
        if prompt:
            tokens.append(self._id("<|startofprev|>"))
            tokens += self.tokenizer.encode(" " + prompt.strip(), add_special_tokens=False).ids[-200:]
        tokens.append(self._id("<|startoftranscript|>"))
        if self.multilingual:
            tokens += [self._id(f"<|{language}|>"), self._id("<|transcribe|>")]
        tokens.append(self._id("<|notimestamps|>"))
        return tokens

    def transcribe(
        self,
        audio: np.ndarray[Any, np.dtype[np.float32]],
        *,
        window_secs: float = 10.0,
        beam_size: int = 1,
        language: str = "en",
        prompt: str | None = None,
    ) -> str:
        """Text of ``audio`` (float32 mono at 16 kHz, at most 30 s) with a ``window_secs`` window."""
        secs = len(audio) / WHISPER_RATE
        text = self._decode(audio, secs, self._window(window_secs, secs), beam_size, language, prompt)
        if compression_ratio(text) > _REPETITIVE and self._window(window_secs, secs) < MAX_WINDOW_SECS:
            text = self._decode(audio, secs, MAX_WINDOW_SECS, beam_size, language, prompt)
        return text

    @staticmethod
    def _window(window_secs: float, secs: float) -> float:
        fit = math.ceil(secs + 0.5)  # the audio plus a little silence after it
        return min(MAX_WINDOW_SECS, max(MIN_WINDOW_SECS, window_secs, fit))

    def _decode(
        self,
        audio: np.ndarray[Any, np.dtype[np.float32]],
        secs: float,
        window: float,
        beam_size: int,
        language: str,
        prompt: str | None,
    ) -> str:
        import ctranslate2

        frames = int(window * FRAMES_PER_SEC)
        mel = self.features(audio[: int(window * WHISPER_RATE)], padding=160)[:, :frames]
        if mel.shape[1] < frames:
            mel = np.pad(mel, ((0, 0), (0, frames - mel.shape[1])))
        features = ctranslate2.StorageView.from_array(np.ascontiguousarray(mel[None], dtype=np.float32))
        tokens = self._prompt(language, prompt)
        max_length = min(448, len(tokens) + _TOKEN_MARGIN + int(secs * _TOKENS_PER_SEC))
        result = self.model.generate(
            features, [tokens], beam_size=beam_size, max_length=max_length, suppress_blank=True
        )[0]
        ids = [t for t in result.sequences_ids[0] if t < self.eot]
        return drop_repeats(str(self.tokenizer.decode(ids)))

    def warm_up(self, window_secs: float = 10.0, beam_size: int = 1) -> None:
        """Run once on a second of noise: the first real utterance is then as fast as the rest."""
        rng = np.random.default_rng(0)
        noise = (rng.standard_normal(WHISPER_RATE) * 0.01).astype(np.float32)
        self.transcribe(noise, window_secs=window_secs, beam_size=beam_size)
