"""callpipe vs Pipecat, side by side, in one run: ``python3 bench/run.py``.

The same simulated Telnyx callers (``callpipe.sim``) call two bot servers, one at a time,
on this machine: callpipe's canned bot (``bench/callpipe_bot.py``) and Pipecat 1.14's
(``bench/pipecat_bot.py``, in its own venv that this script creates), both built the way
Pipecat's Telnyx guide builds a bot, both answering every end of user turn with the
same pre-recorded ~1 s of speech. Only the frameworks differ.

The server runs on CPU 0 and the load generator on CPU 1 (when the machine has two), so
the generator never steals the server's core. Figures:

* micro-benchmarks per 20 ms frame (parse + decode + resample) against Pipecat's own code;
* response latency p50/p95 at 1 and 20 calls, greeting latency;
* CPU per call-second and RSS per call (at 20 calls);
* max concurrent calls per process with p99 bot-audio gap < 40 ms and p95 response
  latency < VAD stop window + 150 ms.

Results go to stdout and, between markers, into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness import (  # first: it re-runs this script under ./.venv if callpipe's dependencies are missing
    BENCH,
    ROOT,
    STOP_SECS,
    CapacitySearch,
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
)
from records_capacity import compare_records

PIPECAT_VENV = BENCH / ".venv-pipecat"
PIPECAT_SPEC = "pipecat-ai[websocket,silero,runner]==1.14.0"
DOCS = ROOT / "docs" / "benchmarks.md"
MARK_BEGIN = "<!-- bench:begin -->"
MARK_END = "<!-- bench:end -->"


# ------------------------------------------------------------------------ set-up


def ensure_pipecat_venv() -> Path:
    """Create bench/.venv-pipecat with Pipecat 1.14 once; return its python."""
    python = PIPECAT_VENV / "bin" / "python"
    if python.exists():
        probe = subprocess.run([str(python), "-c", "import pipecat"], capture_output=True, check=False)
        if probe.returncode == 0:
            return python
    log(f"creating {PIPECAT_VENV} with {PIPECAT_SPEC} (first run only) …")
    subprocess.run([sys.executable, "-m", "venv", str(PIPECAT_VENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--upgrade", "pip"], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", PIPECAT_SPEC], check=True)
    return python


def max_calls(url: str, pid: int, turn: bytes, duration: float, start: int, limit: int) -> tuple[int, bool]:
    """Largest N that passes, by doubling then bisecting; (N, True if the generator capped it)."""
    search = CapacitySearch(start, limit)
    while search.level is not None:
        report = load(url, pid, search.level, duration, turn)
        log(f"    {describe(report)}")
        search.feed(passes(report), report.generator_overloaded)
    return search.best, search.capped


# ------------------------------------------------------------------------ micro


def micro(python: str, script: Path) -> dict[str, float]:
    """Run a micro-benchmark script under ``python``; it prints a JSON dict of µs values."""
    out = subprocess.run([python, str(script)], cwd=ROOT, capture_output=True, text=True, check=True)
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


# ------------------------------------------------------------------------ report


def ratio(ours: float | None, theirs: float | None, higher_is_better: bool) -> str:
    """callpipe / Pipecat, written so that > 1x means callpipe is better."""
    if not ours or not theirs:
        return "-"
    value = ours / theirs if higher_is_better else theirs / ours
    return f"{value:.1f}x"


def main() -> int:
    """Run everything and print/record the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=12.0, help="seconds per load level (default 12)")
    parser.add_argument("--max-limit", type=int, default=640, help="largest concurrency tried (default 640)")
    parser.add_argument("--only", choices=["callpipe", "pipecat"], help="measure one framework only")
    parser.add_argument("--no-docs", action="store_true", help="do not update docs/benchmarks.md")
    parser.add_argument(
        "--records",
        action="store_true",
        help="callpipe only: max concurrent calls with call records + recordings off and on",
    )
    parser.add_argument(
        "--tries", type=int, default=2, help="with --records: runs per level, best one counts (default 2)"
    )
    parser.add_argument(
        "--runs",
        type=int,
        default=1,
        help="with --records: whole comparisons, each with fresh servers (default 1)",
    )
    parser.add_argument(
        "--same",
        action="store_true",
        help="with --records: the second server has records off too (A/A: the instrument's spread)",
    )
    parser.add_argument(
        "--against",
        type=Path,
        metavar="CHECKOUT",
        help="with --records: the second server runs CHECKOUT's callpipe, records off on both"
        " (this tree's capacity against another's, e.g. a change against its base)",
    )
    args = parser.parse_args()
    if args.records:
        return compare_records(args)

    turn = caller_turn()
    server_cpu = pin_load_generator()  # the load generator stays off the server's core

    frameworks = [Framework("callpipe", sys.executable, BENCH / "callpipe_bot.py")]
    if args.only != "callpipe":
        frameworks.append(Framework("pipecat", str(ensure_pipecat_venv()), BENCH / "pipecat_bot.py"))
    if args.only == "pipecat":
        frameworks = frameworks[1:]

    results: dict[str, dict[str, Any]] = {}
    for fw in frameworks:
        log(f"== {fw.name}")
        r: dict[str, Any] = {}
        r["micro"] = micro(fw.python, BENCH / f"micro_{fw.name}.py")
        log(f"  micro: {r['micro']}")
        with bot_server(fw, server_cpu) as (url, pid):
            one = load(url, pid, 1, args.duration, turn)
            log(f"  1 call:  {describe(one)}")
            twenty = load(url, pid, 20, args.duration, turn)
            log(f"  20 calls: {describe(twenty)}")
            r["p50_1"] = percentile(one.response_latencies, 50)
            r["p95_1"] = percentile(one.response_latencies, 95)
            r["p50_20"] = percentile(twenty.response_latencies, 50)
            r["p95_20"] = percentile(twenty.response_latencies, 95)
            r["greeting"] = percentile(twenty.greeting_latencies, 50)
            r["cpu_per_call_second"] = twenty.cpu_per_call_second
            r["rss_per_call"] = twenty.rss_per_call
            r["ok_20"] = passes(twenty)
            log("  max concurrent calls:")
            r["max_calls"], r["max_capped"] = max_calls(url, pid, turn, args.duration, 10, args.max_limit)
            log(f"  -> {r['max_calls']}{' (load generator limit)' if r['max_capped'] else ''}")
        results[fw.name] = r

    table = render(results, args)
    print(table)
    if not args.no_docs and len(results) == 2:
        update_docs(table)
        log(f"updated {DOCS.relative_to(ROOT)}")
    return 0


def render(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> str:
    """The Markdown section with the results."""
    cp = results.get("callpipe", {})
    pc = results.get("pipecat", {})

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value * 1000:.0f} ms"

    def mib(value: float | None) -> str:
        return "-" if value is None else f"{value / 2**20:.2f} MiB"

    def seconds(value: float | None) -> str:
        return "-" if value is None else f"{value:.4f} s"

    def max_cell(r: dict[str, Any]) -> str:
        if not r:
            return "-"
        suffix = "+ (generator limit)" if r.get("max_capped") else ""
        return f"{r['max_calls']}{suffix}"

    def compare(label: str, key: str, cell: Callable[[Any], str]) -> tuple[str, str, str, str]:
        # Every figure here but the capacity is better lower.
        return label, cell(cp.get(key)), cell(pc.get(key)), ratio(cp.get(key), pc.get(key), False)

    rows = [
        (
            "max concurrent calls on time (p99 gap < 40 ms, p95 latency < 350 ms)",
            max_cell(cp),
            max_cell(pc),
            ratio(cp.get("max_calls"), pc.get("max_calls"), True),
        ),
        compare("CPU per call-second (20 calls)", "cpu_per_call_second", seconds),
        compare("RSS per call (20 calls)", "rss_per_call", mib),
        compare("response latency p50, 1 call", "p50_1", ms),
        compare("response latency p95, 1 call", "p95_1", ms),
        compare("response latency p50, 20 calls", "p50_20", ms),
        compare("response latency p95, 20 calls", "p95_20", ms),
        compare("greeting latency p50 (20 calls)", "greeting", ms),
    ]
    for key in sorted(set(cp.get("micro", {})) | set(pc.get("micro", {}))):
        a, b = cp.get("micro", {}).get(key), pc.get("micro", {}).get(key)
        rows.append(
            (
                f"per 20 ms frame: {key}",
                f"{a:.1f} µs" if a else "-",
                f"{b:.1f} µs" if b else "-",
                ratio(a, b, False),
            )
        )
    lines = [
        f"Run: `python3 bench/run.py` on {datetime.date.today().isoformat()}; {machine()}.",
        f"Load levels of {args.duration:g} s each; server pinned to CPU 0, load generator to CPU 1;"
        f" VAD stop_secs {STOP_SECS}; 8 kHz PCMU; ratio > 1x = callpipe better.",
        "",
        "| figure | callpipe | Pipecat 1.14 | callpipe vs Pipecat |",
        "| --- | ---: | ---: | ---: |",
    ]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return "\n".join(lines)


def update_docs(table: str) -> None:
    """Replace the section between the markers in docs/benchmarks.md."""
    text = DOCS.read_text() if DOCS.exists() else ""
    block = f"{MARK_BEGIN}\n{table}\n{MARK_END}"
    if MARK_BEGIN in text and MARK_END in text:
        before = text.split(MARK_BEGIN)[0]
        after = text.split(MARK_END, 1)[1]
        text = before + block + after
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    DOCS.write_text(text)


if __name__ == "__main__":
    raise SystemExit(main())
