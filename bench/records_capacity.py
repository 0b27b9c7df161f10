"""Capacity with call records and recordings off vs on: ``python3 bench/run.py --records``.

One *run* starts two fresh canned-bot servers (``bench/callpipe_bot.py``, the second with
``--records DIR``), both pinned to the same core (an idle server costs nothing), and
searches each one's max concurrent calls on time in lock-step: every load level is run
for both, one after the other and in turns ("off" first, then "on" first), so both see
the same machine, and each only once both servers are idle (the other's calls closed and
their records written). A level passes if any of ``--tries`` attempts passes (a stray
stall from another process fails one attempt; a real limit fails them all).

One server process is a noisy instrument (two fresh "off" servers have differed by 6
points of CPU at the same load, docs/benchmarks.md), so ``--runs N`` repeats the whole
run with new processes and reports every run's change, the median and the worst.
``--same`` starts the second server with records off too (an A/A run): the spread of
its changes is the instrument's own, what an A/B change must be read against.
``--against CHECKOUT`` runs the second server from another checkout's code, records off
on both: a change's capacity against its base's, measured the same way.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import statistics
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from harness import (
    BENCH,
    CapacitySearch,
    Framework,
    bot_server,
    caller_turn,
    describe,
    load,
    log,
    machine,
    passes,
    pin_load_generator,
    wait_quiet,
)

LABELS = ("off", "on")
# Below this many calls the once-a-second work is shared by few calls: CPU per call-second
# there says little about capacity.
CPU_MIN_CALLS = 40
# Levels where a server used more of its core than this are left out of the CPU figure.
CPU_MAX_LOAD = 0.9
CPU_FIGURE = f"CPU per call-second at {CPU_MIN_CALLS}+ calls below {CPU_MAX_LOAD:.0%} of a core"


@dataclass
class RecordsRun:
    """One run's result: the capacity found per label and, per level, (passed, CPU per call-second)."""

    found: dict[str, int]
    capped: list[str]
    measured: dict[int, dict[str, tuple[bool, float | None]]] = field(default_factory=dict)
    recordings: int = 0

    @property
    def change(self) -> float:
        """Records on vs off, in percent of off."""
        return (self.found["on"] - self.found["off"]) / max(1, self.found["off"]) * 100

    @property
    def cpu_change(self) -> float | None:
        """Records on vs off in CPU per call-second, in percent: the median over the levels
        of at least ``CPU_MIN_CALLS`` that both servers ran below ``CPU_MAX_LOAD`` of a core
        (None if there is none).

        A continuous figure beside the capacity's pass/fail steps. A saturated server's
        CPU per call-second is just one core over the calls, whatever the calls cost, so
        those levels say nothing of the cost.
        """
        changes = []
        for level, both in self.measured.items():
            off, on = both.get("off", (False, None))[1], both.get("on", (False, None))[1]
            if level < CPU_MIN_CALLS or not off or not on:
                continue
            if max(off, on) * level < CPU_MAX_LOAD:
                changes.append((on / off - 1) * 100)
        return statistics.median(changes) if changes else None


def _servers(args: argparse.Namespace, directory: str, index: int) -> list[Framework]:
    """The two servers, labelled "off" and "on", in the order to start them.

    "on" has records on, or off too (``--same``), or is the checkout ``--against`` with
    records off like "off" (this tree against another).
    """
    against: Path | None = args.against
    records = () if args.same or against is not None else ("--records", directory)
    bot = BENCH / "callpipe_bot.py"
    servers = [
        Framework("off", sys.executable, bot),
        Framework(
            "on",
            sys.executable,
            bot if against is None else against / "bench" / "callpipe_bot.py",
            records,
            source=against,
        ),
    ]
    return servers if index % 2 == 0 else servers[::-1]


def second_name(args: argparse.Namespace) -> str:
    """What the second server ("on") is, for the printed results."""
    if args.against is not None:
        return f"{args.against} (records off)"
    return "off (A/A)" if args.same else "on"


def run_once(args: argparse.Namespace, turn: bytes, server_cpu: int | None, index: int = 0) -> RecordsRun:
    """Start both servers, search both capacities in lock-step, stop the servers.

    Which server goes first alternates, from level to level and (for its start) from run
    to run: in A/A runs with a fixed order the second server came out 4-8% lower, so a
    fixed order puts a bias of that size into every A/B change.
    """
    # Finer than the side-by-side search: the figure is compared at 10%, so bisect to 5%.
    searches = {
        label: CapacitySearch(10, args.max_limit, resolution=0.05, max_bisections=5) for label in LABELS
    }
    measured: dict[int, dict[str, tuple[bool, float | None]]] = {}
    with (
        tempfile.TemporaryDirectory(prefix="callpipe-bench-records-") as directory,
        contextlib.ExitStack() as stack,
    ):
        servers = {}
        for fw in _servers(args, directory, index):
            servers[fw.name] = stack.enter_context(bot_server(fw, server_cpu))
        pids = [pid for _, pid in servers.values()]
        step = index
        while any(s.level is not None for s in searches.values()):
            step += 1
            for label in LABELS if step % 2 == 0 else LABELS[::-1]:
                search = searches[label]
                if search.level is None:
                    continue
                url, pid = servers[label]
                passed = overloaded = False
                for attempt in range(args.tries):
                    wait_quiet(pids)
                    report = load(url, pid, search.level, args.duration, turn)
                    log(f"    records {label:3s} try {attempt + 1}: {describe(report)}")
                    overloaded = report.generator_overloaded
                    passed = passes(report)
                    if passed or overloaded:
                        break
                measured.setdefault(search.level, {})[label] = (passed, report.cpu_per_call_second)
                search.feed(passed, overloaded)
        recordings = len(list(Path(directory).glob("recordings/*/*.wav")))
    return RecordsRun(
        found={label: searches[label].best for label in LABELS},
        capped=[label for label in LABELS if searches[label].capped],
        measured=measured,
        recordings=recordings,
    )


def print_run(run: RecordsRun, tries: int, duration: float, second: str = "on") -> None:
    """One run's figure and its table of levels (``second`` names the second server)."""
    note = f" (load-generator limit: {', '.join(run.capped)})" if run.capped else ""
    print(
        f"max concurrent calls on time: records off {run.found['off']}, {second} {run.found['on']}"
        f" ({run.change:+.0f}%){note}; {run.recordings} recordings written"
    )
    if run.cpu_change is not None:
        print(f"{CPU_FIGURE}, {second} vs off: median {run.cpu_change:+.1f}%")
    print(f"each level: best of {tries} runs of {duration:.0f} s, off and on in turns")
    print("| calls | off: on time, CPU per call-second | on: on time, CPU per call-second |")
    print("|---:|---|---|")
    for level in sorted(run.measured):
        cells = []
        for label in LABELS:
            if label not in run.measured[level]:
                cells.append("-")
                continue
            ok, cpu = run.measured[level][label]
            cells.append(f"{'yes' if ok else 'no'}, {'-' if cpu is None else f'{cpu * 1000:.2f} ms'}")
        print(f"| {level} | {cells[0]} | {cells[1]} |")


def summary(runs: list[RecordsRun], what: str = "records off vs on") -> str:
    """Every run's off/on/change, the median change and the worst (``what``: the pair compared)."""
    cells = ", ".join(f"{r.found['off']} vs {r.found['on']} ({r.change:+.0f}%)" for r in runs)
    worst = min(r.change for r in runs)
    median = statistics.median(r.change for r in runs)
    cpu = [change for r in runs if (change := r.cpu_change) is not None]
    cpu_text = (
        f"; {CPU_FIGURE}: "
        + ", ".join(f"{change:+.1f}%" for change in cpu)
        + f" (median {statistics.median(cpu):+.1f}%)"
        if cpu
        else ""
    )
    return f"{len(runs)} runs, {what}: {cells}; median {median:+.0f}%, worst {worst:+.0f}%{cpu_text}"


def compare_records(args: argparse.Namespace) -> int:
    """``--runs`` runs of :func:`run_once`, each printed, then the summary; exit 0."""
    turn = caller_turn()
    server_cpu = pin_load_generator()
    runs: list[RecordsRun] = []
    for index in range(args.runs):
        if args.runs > 1:
            log(f"== run {index + 1} of {args.runs}")
        runs.append(run_once(args, turn, server_cpu, index))
        print_run(runs[-1], args.tries, args.duration, second_name(args))
        sys.stdout.flush()
    if len(runs) > 1:
        print(summary(runs, f"records off vs {second_name(args)}"))
    print(f"machine: {machine()}; {datetime.date.today().isoformat()}")
    return 0
