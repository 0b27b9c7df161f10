"""Micro-benchmark: the cost of parsing and building one Telnyx media message.

Run: ``python3 bench/bench_protocol.py``. Prints a Markdown table of microseconds per
message; ``run()`` returns the rows for the top-level benchmark.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable

from callpipe.telnyx import protocol
from callpipe.telnyx.stream import Media, Role, Stream

FRAME = bytes(range(160))  # 20 ms of 8 kHz G.711
MEDIA_TEXT = protocol.build_inbound_media(
    FRAME, stream_id="32DE0DEA-53CB-4B21-89A4-9E1819C043BC", sequence_number=4, chunk=2, timestamp=40
)


def _time_per_call(fn: Callable[[], object], iterations: int) -> float:
    """Best of five runs, in microseconds per call (the minimum is the least noisy estimate)."""
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(iterations):
            fn()
        best = min(best, (time.perf_counter() - start) / iterations)
    return best * 1e6


def _stdlib_parse() -> bytes:
    # The usual approach (json + base64 from the standard library), for reference.
    message = json.loads(MEDIA_TEXT)
    return base64.b64decode(message["media"]["payload"])


def _stdlib_build() -> str:
    return json.dumps({"event": "media", "media": {"payload": base64.b64encode(FRAME).decode()}})


def run(iterations: int = 50_000) -> list[tuple[str, float]]:
    """Return ``(name, microseconds per message)`` rows."""
    # The transport's path: our side of the stream machine, already streaming.
    stream = Stream.streaming(Role.APP, stream_id="32DE0DEA-53CB-4B21-89A4-9E1819C043BC")
    media = Media(FRAME)
    return [
        (
            "protocol.parse_event(media, 160 B)",
            _time_per_call(lambda: protocol.parse_event(MEDIA_TEXT), iterations),
        ),
        ("protocol.build_media(160 B)", _time_per_call(lambda: protocol.build_media(FRAME), iterations)),
        (
            "Stream.receive_event(media, 160 B) (the transport's receive)",
            _time_per_call(lambda: stream.receive_event(MEDIA_TEXT), iterations),
        ),
        (
            "Stream.send(Media(160 B)) (the transport's send)",
            _time_per_call(lambda: stream.send(media), iterations),
        ),
        ("reference: json.loads + b64decode", _time_per_call(_stdlib_parse, iterations)),
        ("reference: json.dumps + b64encode", _time_per_call(_stdlib_build, iterations)),
    ]


def main() -> None:
    """Print the table."""
    print("| operation | µs per message |")
    print("| --- | ---: |")
    for name, micros in run():
        print(f"| {name} | {micros:.2f} |")


if __name__ == "__main__":
    main()
