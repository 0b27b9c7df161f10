"""Speech-to-text settings compared on phone audio: latency and WER per engine, window and beam.

Run: ``python3 bench/bench_stt.py [CLIP_DIR ...]``. Each directory holds ``NAME.wav`` clips
(16-bit PCM, any rate) with the reference transcript in ``NAME.txt``; each directory is
one group in the WER columns. Without a directory the repo's own clip
(``src/callpipe/sim/data/caller_8k.wav``) and phone phrases synthesized by the embedded
Piper voice are used (the "synthetic" group). Every clip goes through the phone path the
bot sees: resampled to 8 kHz, μ-law encoded and decoded, then transcribed exactly as
:class:`~callpipe.services.whisper.WhisperSTTService` does (16 kHz resampling, the
assistant's vocabulary prompt). Timings are per utterance, one decode at a time, after
one warm-up decode per setting; ``--threads`` sets CTranslate2's intra-op threads.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import time
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soxr

from callpipe.audio import get_codec

REPO = Path(__file__).resolve().parent.parent
REPO_CLIP = REPO / "src" / "callpipe" / "sim" / "data" / "caller_8k.wav"
REPO_CLIP_TEXT = "Hello, can you hear me clearly?"
SYNTHETIC = [
    "Hi, I'd like to book a cleaning.",
    "Thursday at 3 pm, please.",
    "What are your hours on Saturday?",
    "No, that's all, thanks.",
    "Can I move my appointment to Friday morning?",
    "Where exactly is your office?",
    "I need a checkup for my son next Tuesday.",
    "Is ten thirty on Monday available?",
    "Do you take new patients?",
    "Yes, that works for me.",
    "Could you repeat that, please?",
    "I'm calling about my filling.",
]
SETTINGS = [
    ("faster-whisper", 30.0, 1),
    ("faster-whisper", 30.0, 5),
    ("ctranslate2", 8.0, 1),
    ("ctranslate2", 10.0, 1),
    ("ctranslate2", 15.0, 1),
    ("ctranslate2", 10.0, 5),
    ("ctranslate2", 15.0, 5),
]
_NUMBERS = {"3": "three", "10": "ten", "30": "thirty"}


@dataclass
class Clip:
    """One utterance: 8 kHz PCM16 after the μ-law round trip, its reference and group."""

    name: str
    group: str
    pcm: bytes
    reference: str


def normalize(text: str) -> list[str]:
    """Lower-case words without punctuation; a few digits spelled out; "p.m." -> "pm"."""
    text = text.lower().replace("p.m.", "pm").replace("a.m.", "am")
    words = re.sub(r"[^a-z0-9' ]+", " ", text).split()
    return [_NUMBERS.get(w, w) for w in words]


def word_errors(reference: list[str], hypothesis: list[str]) -> int:
    """Word-level Levenshtein distance."""
    row = list(range(len(hypothesis) + 1))
    for i, ref in enumerate(reference, 1):
        prev, row[0] = row[0], i
        for j, hyp in enumerate(hypothesis, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ref != hyp))
    return row[-1]


def phone_path(pcm: bytes, rate: int) -> bytes:
    """Resample to 8 kHz and round-trip through G.711 μ-law."""
    if rate != 8000:
        audio = np.frombuffer(pcm, dtype=np.int16).astype(np.float32) / 32768.0
        audio = soxr.resample(audio, rate, 8000)
        pcm = np.clip(np.rint(audio * 32767), -32768, 32767).astype(np.int16).tobytes()
    codec = get_codec("PCMU", 8000)
    return bytes(codec.new_instance().decode(codec.new_instance().encode(pcm)))


def read_wav(path: Path) -> tuple[bytes, int]:
    """PCM16 mono and rate of a WAV file."""
    with wave.open(str(path), "rb") as wav:
        if wav.getsampwidth() != 2 or wav.getnchannels() != 1:
            raise SystemExit(f"{path}: need 16-bit mono PCM")
        return wav.readframes(wav.getnframes()), wav.getframerate()


def load_dir(directory: Path) -> list[Clip]:
    """Every ``NAME.wav`` with a ``NAME.txt`` next to it."""
    clips = []
    for wav_path in sorted(directory.glob("*.wav")):
        ref = wav_path.with_suffix(".txt")
        if ref.exists():
            pcm, rate = read_wav(wav_path)
            clips.append(Clip(wav_path.stem, directory.name, phone_path(pcm, rate), ref.read_text().strip()))
    return clips


def default_clips() -> list[Clip]:
    """The repo's clip plus the synthetic phone phrases (Piper, deterministic)."""
    import asyncio

    from callpipe.services.piper import PiperTTSService

    pcm, rate = read_wav(REPO_CLIP)
    clips = [Clip("caller_8k", "synthetic", phone_path(pcm, rate), REPO_CLIP_TEXT)]
    voice = PiperTTSService(sample_rate=8000, length_scale=1.05, noise_scale=0.0, noise_w_scale=0.0)
    for i, line in enumerate(SYNTHETIC):
        pcm = asyncio.run(voice.synthesize(line))
        clips.append(Clip(f"piper_{i:02d}", "synthetic", phone_path(pcm, 8000), line))
    return clips


def measure(
    clips: list[Clip], engine: str, window: float, beam: int, threads: int, prompt: str
) -> tuple[list[float], dict[str, tuple[int, int]], list[str]]:
    """Seconds per clip, (errors, words) per group, and the hypotheses."""
    from callpipe.services.whisper import WhisperSTTService

    stt = WhisperSTTService(
        engine=engine,  # type: ignore[arg-type]
        window_secs=window,
        beam_size=beam,
        cpu_threads=threads,
        prompt=prompt,
    )
    stt.load()
    times, errors, texts = [], {}, []
    for clip in clips:
        started = time.perf_counter()
        text = stt.transcribe_sync(clip.pcm, 8000)
        times.append(time.perf_counter() - started)
        texts.append(text)
        ref = normalize(clip.reference)
        e, n = errors.get(clip.group, (0, 0))
        errors[clip.group] = (e + word_errors(ref, normalize(text)), n + len(ref))
    return times, errors, texts


def main() -> int:
    """Print the Markdown table (and, with -v, every hypothesis)."""
    from callpipe.services.assistant import AssistantConfig

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dirs", nargs="*", type=Path, help="clip directories (NAME.wav + NAME.txt)")
    parser.add_argument("--synthetic", action="store_true", help="also the synthetic clips")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", help="only settings whose label contains this")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()
    clips: list[Clip] = []
    for directory in args.dirs:
        clips += load_dir(directory)
    if not args.dirs or args.synthetic:
        clips += default_clips()
    if not clips:
        raise SystemExit("no clips (NAME.wav with NAME.txt) found")
    groups = sorted({c.group for c in clips})
    prompt = AssistantConfig().stt_prompt()
    load = os.getloadavg()[0]
    print(
        f"{len(clips)} clips ({', '.join(f'{g}: {sum(c.group == g for c in clips)}' for g in groups)});"
        f" threads {args.threads}; load average at start {load:.2f}\n"
    )
    print(
        "| engine | window | beam | median ms | p90 ms | max ms | "
        + " | ".join(f"WER {g}" for g in groups)
        + " | WER all |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | " + " | ".join("---:" for _ in groups) + " | ---: |")
    for engine, window, beam in SETTINGS:
        label = f"{engine} {window:g}s beam {beam}"
        if args.only and args.only not in label:
            continue
        times, errors, texts = measure(clips, engine, window, beam, args.threads, prompt)
        ms = sorted(t * 1000 for t in times)
        wers = [100 * errors[g][0] / max(1, errors[g][1]) for g in groups]
        total = 100 * sum(e for e, _ in errors.values()) / max(1, sum(n for _, n in errors.values()))
        print(
            f"| {engine} | {window:g} s | {beam} | {statistics.median(ms):.0f} | {ms[int(0.9 * (len(ms) - 1))]:.0f}"
            f" | {ms[-1]:.0f} | " + " | ".join(f"{w:.1f}%" for w in wers) + f" | {total:.1f}% |",
            flush=True,
        )
        if args.verbose:
            for clip, text in zip(clips, texts, strict=True):
                print(f"    {clip.group}/{clip.name}: {text!r}  (ref {clip.reference!r})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
