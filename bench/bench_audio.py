"""Micro-benchmark of callpipe.audio per 20 ms frame: ``python3 bench/bench_audio.py [iterations]``.

Prints a Markdown table of microseconds per frame. ``run()`` returns the same rows as
``(name, µs per frame)`` for a top-level benchmark to import. Rows marked "(audioop)"
are the stdlib reference implementations, where available (removed in Python 3.13
unless the audioop-lts package is installed).
"""

from __future__ import annotations

import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

try:
    import callpipe.audio  # noqa: F401
except ImportError:  # running from a source checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from callpipe.audio import (
    G722Decoder,
    G722Encoder,
    StreamResampler,
    alaw_decode,
    alaw_encode,
    l16_decode,
    l16_encode,
    ulaw_decode,
    ulaw_decode_array,
    ulaw_encode,
    ulaw_encode_array,
)

audioop: Any
try:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import audioop
except ImportError:
    audioop = None

DEFAULT_ITERATIONS = 20_000
_REPEATS = 3  # best of N: the least-disturbed run is the best estimate of the real cost


def _pcm(rate: int, ms: int = 20) -> bytes:
    t = np.arange(rate * ms // 1000) / rate
    return (8000 * np.sin(2 * np.pi * 440 * t)).astype("<i2").tobytes()


def _time(fn: Callable[[], object], iterations: int) -> float:
    """Best-of-_REPEATS mean µs per call of ``fn``."""
    best = float("inf")
    for _ in range(_REPEATS):
        start = time.perf_counter()
        for _ in range(iterations):
            fn()
        best = min(best, time.perf_counter() - start)
    return best / iterations * 1e6


def _cases() -> list[tuple[str, Callable[[], object]]]:
    pcm8, pcm16, pcm24 = _pcm(8000), _pcm(16000), _pcm(24000)
    ulaw, alaw = ulaw_encode(pcm8), alaw_encode(pcm8)
    ulaw_arr = np.frombuffer(ulaw, dtype=np.uint8)
    pcm8_arr = np.frombuffer(pcm8, dtype=np.int16)
    l16_wire = l16_encode(pcm16)
    g722_enc, g722_dec = G722Encoder(), G722Decoder()
    g722_payload = G722Encoder().encode(pcm16)

    cases: list[tuple[str, Callable[[], object]]] = [
        ("ulaw_decode 160 B", lambda: ulaw_decode(ulaw)),
        ("ulaw_encode 160 samples", lambda: ulaw_encode(pcm8)),
        ("ulaw_decode_array 160", lambda: ulaw_decode_array(ulaw_arr)),
        ("ulaw_encode_array 160", lambda: ulaw_encode_array(pcm8_arr)),
        ("alaw_decode 160 B", lambda: alaw_decode(alaw)),
        ("alaw_encode 160 samples", lambda: alaw_encode(pcm8)),
    ]
    if audioop is not None:
        cases += [
            ("ulaw2lin 160 B (audioop)", lambda: audioop.ulaw2lin(ulaw, 2)),
            ("lin2ulaw 160 samples (audioop)", lambda: audioop.lin2ulaw(pcm8, 2)),
            ("alaw2lin 160 B (audioop)", lambda: audioop.alaw2lin(alaw, 2)),
            ("lin2alaw 160 samples (audioop)", lambda: audioop.lin2alaw(pcm8, 2)),
        ]
    cases += [
        ("l16_decode 320 samples (big-endian)", lambda: l16_decode(l16_wire)),
        ("l16_encode 320 samples (big-endian)", lambda: l16_encode(pcm16)),
        ("g722 encode 320 samples", lambda: g722_enc.encode(pcm16)),
        ("g722 decode 160 B", lambda: g722_dec.decode(g722_payload)),
    ]
    for quality in ("VR", "HQ"):
        up = StreamResampler(8000, 16000, quality)
        down24 = StreamResampler(24000, 8000, quality)
        down16 = StreamResampler(16000, 8000, quality)
        cases += [
            (f"resample 8k->16k 160 samples ({quality})", lambda r=up: r.process(pcm8)),  # type: ignore[misc]
            (f"resample 24k->8k 480 samples ({quality})", lambda r=down24: r.process(pcm24)),  # type: ignore[misc]
            (f"resample 16k->8k 320 samples ({quality})", lambda r=down16: r.process(pcm16)),  # type: ignore[misc]
        ]
    arr_up = StreamResampler(8000, 16000)
    cases.append(("resample_array 8k->16k 160 samples (VR)", lambda: arr_up.process_array(pcm8_arr)))
    if audioop is not None:
        # ratecv is linear interpolation with no anti-alias filter: a cost floor, not a peer.
        states: dict[str, Any] = {"up": None, "d24": None, "d16": None}

        def ratecv(key: str, frag: bytes, in_rate: int, out_rate: int) -> bytes:
            out, states[key] = audioop.ratecv(frag, 2, 1, in_rate, out_rate, states[key])
            return bytes(out)

        cases += [
            ("ratecv 8k->16k 160 samples (audioop)", lambda: ratecv("up", pcm8, 8000, 16000)),
            ("ratecv 24k->8k 480 samples (audioop)", lambda: ratecv("d24", pcm24, 24000, 8000)),
            ("ratecv 16k->8k 320 samples (audioop)", lambda: ratecv("d16", pcm16, 16000, 8000)),
        ]
    return cases


def run(iterations: int = DEFAULT_ITERATIONS) -> list[tuple[str, float]]:
    """Time every case; returns ``[(name, µs per 20 ms frame), ...]``."""
    return [(name, _time(fn, iterations)) for name, fn in _cases()]


def format_table(rows: list[tuple[str, float]]) -> str:
    """Render rows as a Markdown table (µs per frame and share of the 20 ms frame time)."""
    lines = ["| operation (per 20 ms frame) | µs/frame | % of 20 ms |", "|---|---:|---:|"]
    lines += [f"| {name} | {us:.2f} | {us / 200:.3f} |" for name, us in rows]
    return "\n".join(lines)


def main() -> None:
    """Command-line entry point."""
    iterations = int(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_ITERATIONS
    print(
        f"Python {sys.version.split()[0]}, numpy {np.__version__}, {iterations} iterations, best of {_REPEATS}\n"
    )
    print(format_table(run(iterations)))


if __name__ == "__main__":
    main()
