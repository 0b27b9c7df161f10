"""Micro-benchmark: Silero VAD cost per 32 ms window, unbatched vs batched, and push_audio cost.

Run: ``python3 bench/bench_vad.py``. Prints a Markdown table; ``run()`` returns
``(name, microseconds)`` rows (per window, or per frame for push_audio). "Per
call-second" is the CPU time one call's VAD costs per second of audio (31.25 windows),
i.e. 10 000 µs per call-second would be 1% of a core.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import numpy as np

from callpipe.audio.vad import SileroVADAnalyzer, SileroVADModel, VADBatcher

RATE = 8000
WINDOW = 256  # samples per 32 ms window at 8 kHz
WIDTH = 32 + WINDOW  # context + window
WINDOWS_PER_SECOND = RATE / WINDOW
BATCH_SIZES = (1, 10, 50, 100, 200)
_RNG = np.random.default_rng(0)
FRAME_20MS = (_RNG.standard_normal(160) * 1000).astype("<i2").tobytes()
WINDOW_PCM = (_RNG.standard_normal(WINDOW) * 1000).astype("<i2").tobytes()


def _best_seconds(fn: Callable[[], object], iterations: int, repeats: int = 5) -> float:
    """Best of ``repeats`` runs, in seconds per call (the minimum is the least noisy)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(iterations):
            fn()
        best = min(best, (time.perf_counter() - start) / iterations)
    return best


def _model_rows(model: SileroVADModel) -> list[tuple[str, float]]:
    rows = []
    for batch in BATCH_SIZES:
        windows = (_RNG.standard_normal((batch, WIDTH)) * 0.03).astype(np.float32)
        state = np.zeros((2, batch, 128), np.float32)
        iterations = max(20, 2000 // batch)
        per_call = _best_seconds(lambda w=windows, s=state: model.infer(w, s, RATE), iterations)
        rows.append((f"model.infer, batch {batch}", per_call / batch * 1e6))
    return rows


async def _batcher_rows() -> list[tuple[str, float]]:
    rows = []
    for batch in BATCH_SIZES:
        batcher = VADBatcher(max_delay=3600.0, max_batch=1024)
        analyzers = [SileroVADAnalyzer(sample_rate=RATE, batcher=batcher) for _ in range(batch)]

        def one_round(analyzers: list[SileroVADAnalyzer] = analyzers, batcher: VADBatcher = batcher) -> None:
            for analyzer in analyzers:
                analyzer.push_audio(WINDOW_PCM)
            batcher.flush()

        per_round = _best_seconds(one_round, max(20, 2000 // batch))
        rows.append((f"push_audio + VADBatcher.flush, {batch} calls", per_round / batch * 1e6))
    return rows


async def _push_rows() -> list[tuple[str, float]]:
    batcher = VADBatcher(max_delay=3600.0, max_batch=1 << 30)
    analyzer = SileroVADAnalyzer(sample_rate=RATE, batcher=batcher)
    buffer = analyzer._buffer  # reached into only to keep every frame below a window

    def no_window() -> None:
        analyzer.push_audio(FRAME_20MS)
        buffer.clear()

    def clear_only() -> None:
        buffer.clear()

    def average_frame() -> None:
        analyzer.push_audio(FRAME_20MS)
        if batcher.pending > 1000:
            batcher.discard(analyzer)

    iterations = 200_000
    no_window_us = (_best_seconds(no_window, iterations) - _best_seconds(clear_only, iterations)) * 1e6
    average_us = _best_seconds(average_frame, iterations) * 1e6
    return [
        ("push_audio, 20 ms frame, no window completes (per frame)", no_window_us),
        ("push_audio, 20 ms frames, incl. window cut + queue (per frame)", average_us),
    ]


async def _async_rows() -> list[tuple[str, float]]:
    return await _batcher_rows() + await _push_rows()


def run() -> list[tuple[str, float]]:
    """Return ``(name, microseconds)`` rows: per window for VAD, per frame for push_audio."""
    model = SileroVADModel.shared()
    rows = []
    analyzer = SileroVADAnalyzer(sample_rate=RATE)
    unbatched = _best_seconds(lambda: analyzer.analyze(WINDOW_PCM), 2000)
    rows.append(("SileroVADAnalyzer.analyze, unbatched", unbatched * 1e6))
    rows += _model_rows(model)
    rows += asyncio.run(_async_rows())
    return rows


def main() -> None:
    """Print the table."""
    print(f"Silero VAD at {RATE} Hz, 32 ms windows ({WINDOWS_PER_SECOND:.2f} per call-second)\n")
    print("| operation | µs per window (or frame) | µs per call-second |")
    print("| --- | ---: | ---: |")
    for name, micros in run():
        per_second = micros * (50 if "frame" in name else WINDOWS_PER_SECOND)
        print(f"| {name} | {micros:.2f} | {per_second:.0f} |")


if __name__ == "__main__":
    main()
