"""Shared by bench/micro_callpipe.py and bench/micro_pipecat.py (no framework imports here).

Both scripts time the same operations through each framework's public serializer API,
one 20 ms frame at a time, and print one JSON line of microseconds per frame.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Awaitable, Callable

import numpy as np

ITERATIONS = 5000
STREAM_ID = "32DE0DEA-53CB-4B21-89A4-9E1819C043BC"


def ulaw_frame() -> bytes:
    """160 bytes of varied μ-law codes (20 ms at 8 kHz)."""
    return bytes(np.random.default_rng(1).integers(0, 256, 160, dtype=np.uint8))


def media_message(payload: bytes, seq: int = 4) -> str:
    """A Telnyx media message as Telnyx sends it."""
    return json.dumps(
        {
            "event": "media",
            "sequence_number": str(seq),
            "media": {
                "track": "inbound",
                "chunk": str(seq),
                "timestamp": str(seq * 20),
                "payload": base64.b64encode(payload).decode(),
            },
            "stream_id": STREAM_ID,
        }
    )


def pcm_frame(rate: int) -> bytes:
    """20 ms of a 440 Hz tone at ``rate``."""
    t = np.arange(rate // 50) / rate
    return (np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16).tobytes()


def time_async(fn: Callable[[], Awaitable[object]], iterations: int = ITERATIONS) -> float:
    """Best of five runs of ``iterations`` awaits, in µs per call."""

    async def run() -> float:
        best = float("inf")
        for _ in range(5):
            start = time.perf_counter()
            for _ in range(iterations):
                await fn()
            best = min(best, (time.perf_counter() - start) / iterations)
        return best * 1e6

    return asyncio.run(run())
