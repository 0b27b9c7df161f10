"""What each part of call records costs, measured inside one server: ``python3 bench/records_parts.py``.

``bench/run.py --records`` compares two fresh server processes, and fresh processes of
the same code differ by up to ~10% in CPU at the same load (docs/benchmarks.md): larger
than the cost being measured. Here one canned-bot server (``bench/callpipe_bot.py
--records DIR --switchable``) runs every configuration in turn, switched between load
phases by ``GET /debug/records/<part>``:

* ``off``: no record, no recording (the baseline);
* ``store``: the record, written to the embedded SQLite store;
* ``recording``: the stereo recording (the record goes to a null sink);
* ``both``: what ``callpipe serve`` does.

Each round runs every part once at the same load, in an order that rotates from round
to round (so a drift of the process over time falls on every part alike). A part's
change is its CPU per call-second against ``off`` *of the same round*; the table gives
each round's change and the median. CPU is the server process's (all its threads).
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import tempfile
import urllib.request
from dataclasses import dataclass, field

from harness import (
    BENCH,
    Framework,
    bot_server,
    caller_turn,
    describe,
    load,
    log,
    machine,
    passes,
    percentile,
    pin_load_generator,
    wait_quiet,
)

PARTS = ("off", "store", "recording", "both")


@dataclass
class PartResult:
    """One part's CPU per call-second per round, and whether every phase was on time."""

    cpu: list[float] = field(default_factory=list)
    on_time: bool = True
    worst_gap99: float = 0.0


def rotated(parts: tuple[str, ...], round_index: int) -> list[str]:
    """``parts`` starting at the ``round_index``-th (mod their count)."""
    start = round_index % len(parts)
    return [*parts[start:], *parts[:start]]


def changes(results: dict[str, PartResult], part: str) -> list[float]:
    """``part``'s CPU change against ``off`` per round, in percent."""
    return [(cpu / off - 1) * 100 for cpu, off in zip(results[part].cpu, results["off"].cpu, strict=True)]


def measure(args: argparse.Namespace) -> dict[str, PartResult]:
    """Run ``args.rounds`` rounds of every part against one server; the results per part."""
    server_cpu = pin_load_generator()
    turn = caller_turn()
    results = {part: PartResult() for part in PARTS}
    with tempfile.TemporaryDirectory(prefix="callpipe-bench-parts-") as directory:
        bot = Framework(
            "callpipe", sys.executable, BENCH / "callpipe_bot.py", ("--records", directory, "--switchable")
        )
        with bot_server(bot, server_cpu) as (url, pid):
            base = url.removesuffix("/ws").replace("ws://", "http://", 1)
            # Warm-up: the store's first writes and the first recordings' imports.
            load(url, pid, 20, 5.0, turn)
            for round_index in range(args.rounds):
                for part in rotated(PARTS, round_index):
                    with urllib.request.urlopen(f"{base}/debug/records/{part}", timeout=5) as reply:
                        reply.read()
                    wait_quiet([pid])
                    report = load(url, pid, args.calls, args.duration, turn)
                    log(f"    round {round_index + 1} {part:9s} {describe(report)}")
                    result = results[part]
                    result.cpu.append(report.cpu_per_call_second or 0.0)
                    result.on_time = result.on_time and passes(report)
                    result.worst_gap99 = max(result.worst_gap99, percentile(report.gaps, 99) or 0.0)
    return results


def render(results: dict[str, PartResult], args: argparse.Namespace) -> str:
    """The markdown table: per part, mean CPU per call-second and its change per round."""
    lines = [
        f"records by part, one server, {args.calls} calls, {args.rounds} rounds of {args.duration:.0f} s per part",
        "| part | CPU per call-second (mean) | change vs off, each round | median change | on time | worst gap p99 |",
        "|---|---:|---|---:|---|---:|",
    ]
    for part in PARTS:
        result = results[part]
        each = changes(results, part)
        lines.append(
            f"| {part} | {statistics.mean(result.cpu) * 1000:.2f} ms"
            f" | {', '.join(f'{change:+.1f}%' for change in each)}"
            f" | {statistics.median(each):+.1f}% | {'yes' if result.on_time else 'no'}"
            f" | {result.worst_gap99 * 1000:.0f} ms |"
        )
    lines.append(f"machine: {machine()}; {datetime.date.today().isoformat()}")
    return "\n".join(lines)


def main() -> int:
    """Parse the arguments, measure, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=160, help="calls at once in every phase")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of each phase")
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    print(render(measure(args), args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
