"""Regenerate the VAD test clips (run once by hand; the tests only read the .wav files).

Needs ``espeak-ng`` and ``sox`` on PATH (dev machine only)::

    python3 tests/data/make_speech_clips.py

Each clip is mono PCM16: lead-in silence, one English sentence synthesised by
espeak-ng, trailing silence, with white noise at -55 dBFS RMS over the whole clip
(a quiet phone line). The speech is band-limited to 300-3400 Hz (telephone band) and
normalised to -24 dBFS RMS, which is ordinary telephone speech level. The speech
start and end, in seconds, are written to ``speech_clips.json`` for the tests.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import wave
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SENTENCE = "Hello, can you hear me clearly?"
SPEECH_DBFS = -24.0
NOISE_DBFS = -55.0
# (file name, sample rate, lead-in s, trailing s): the 16 kHz clip is shorter so it
# stays near 100 KB; both leave enough tail for a 0.8 s stop_secs.
CLIPS = [("speech_8k.wav", 8000, 1.0, 1.5), ("speech_16k.wav", 16000, 0.5, 1.1)]


def _synthesise(rate: int) -> np.ndarray:
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.wav"
        out = Path(tmp) / "out.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", "175", "-w", str(raw), SENTENCE], check=True)
        # Trim espeak's own leading/trailing silence so the speech bounds are known,
        # band-limit to the telephone band, and resample.
        subprocess.run(
            [
                "sox", str(raw), "-r", str(rate), "-b", "16", str(out),
                "silence", "1", "0.01", "0.5%", "reverse", "silence", "1", "0.01", "0.5%", "reverse",
                "sinc", "300-3400",
            ],
            check=True,
        )  # fmt: skip
        with wave.open(str(out)) as w:
            return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64) / 32768.0


def main() -> None:
    """Write the clips and their speech bounds."""
    rng = np.random.default_rng(1234)
    bounds: dict[str, dict[str, float]] = {}
    for name, rate, lead, tail in CLIPS:
        speech = _synthesise(rate)
        speech *= 10 ** (SPEECH_DBFS / 20) / np.sqrt(np.mean(speech**2))
        lead_n, tail_n = int(lead * rate), int(tail * rate)
        clip = np.concatenate([np.zeros(lead_n), speech, np.zeros(tail_n)])
        clip += rng.standard_normal(clip.size) * 10 ** (NOISE_DBFS / 20)
        pcm = np.clip(np.round(clip * 32768.0), -32768, 32767).astype("<i2")
        with wave.open(str(HERE / name), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(rate)
            w.writeframes(pcm.tobytes())
        bounds[name] = {"speech_start": lead, "speech_end": round(lead + speech.size / rate, 4)}
        print(name, bounds[name], f"{len(pcm.tobytes()) / 1024:.0f} KiB")
    (HERE / "speech_clips.json").write_text(json.dumps(bounds, indent=2) + "\n")


if __name__ == "__main__":
    main()
