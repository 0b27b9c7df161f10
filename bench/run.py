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
import asyncio
import contextlib
import datetime
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
DATA = BENCH / "data"
PIPECAT_VENV = BENCH / ".venv-pipecat"
PIPECAT_SPEC = "pipecat-ai[websocket,silero,runner]==1.14.0"
DOCS = ROOT / "docs" / "benchmarks.md"
MARK_BEGIN = "<!-- bench:begin -->"
MARK_END = "<!-- bench:end -->"
STOP_SECS = 0.2
GAP_LIMIT = 0.040
LATENCY_LIMIT = STOP_SECS + 0.150

sys.path.insert(0, str(ROOT / "src"))


def _reexec_in_project_venv() -> None:
    """Run under ``./.venv`` (made by ``scripts/test.sh`` or ``scripts/demo.sh``) if this
    python lacks callpipe's dependencies, so ``python3 bench/run.py`` is the one command."""
    try:
        import uvicorn  # noqa: F401
    except ModuleNotFoundError:
        venv_python = ROOT / ".venv" / "bin" / "python"
        if not venv_python.exists() or Path(sys.prefix).resolve() == venv_python.parents[1].resolve():
            raise SystemExit(
                "bench/run.py needs callpipe's dependencies: run `bash scripts/test.sh` once "
                "(it creates ./.venv), or activate a venv with `pip install -e .[dev,local]`"
            ) from None
        os.execv(str(venv_python), [str(venv_python), *sys.argv])


_reexec_in_project_venv()

from callpipe.server.background import free_port  # noqa: E402
from callpipe.sim.load import LoadConfig, LoadReport, ProcessSampler, percentile, run_load  # noqa: E402


def log(message: str) -> None:
    """Progress to stderr (the tables go to stdout)."""
    print(message, file=sys.stderr, flush=True)


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


def read_wav(path: Path) -> tuple[bytes, int]:
    """PCM16 mono and sample rate."""
    with wave.open(str(path), "rb") as wav:
        return wav.readframes(wav.getnframes()), wav.getframerate()


@dataclass
class Framework:
    """One side of the comparison."""

    name: str
    python: str
    bot: Path
    extra: tuple[str, ...] = ()


@contextlib.contextmanager
def bot_server(framework: Framework, cpu: int | None) -> Iterator[tuple[str, int]]:
    """Start the framework's bot server; yield (ws url, pid); stop it afterwards."""
    port = free_port()
    command = [
        framework.python,
        str(framework.bot),
        "--port",
        str(port),
        "--reply",
        str(DATA / "reply_8k.wav"),
        "--greeting",
        str(DATA / "greeting_8k.wav"),
        "--stop-secs",
        str(STOP_SECS),
        *framework.extra,
    ]
    if cpu is not None and shutil.which("taskset"):
        command = ["taskset", "-c", str(cpu), *command]
    process = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(
                    f"{framework.name} bot exited: {process.stderr.read() if process.stderr else ''}"
                )
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{framework.name} bot did not start") from None
                time.sleep(0.2)
        yield f"ws://127.0.0.1:{port}/ws", process.pid
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


# ------------------------------------------------------------------------ load


def load(url: str, pid: int, calls: int, duration: float, turn: bytes) -> LoadReport:
    """One load level against a running server (bounded in time)."""
    config = LoadConfig(
        url=url,
        calls=calls,
        duration=duration,
        ramp=min(4.0, 0.5 + calls * 0.02),
        turn_audio=turn,
        server_pid=pid,
    )
    return asyncio.run(run_load(config))


def wait_quiet(pids: list[int], limit: float = 20.0, busy_share: float = 0.03) -> None:
    """Wait (at most ``limit`` s) until the servers use under ``busy_share`` of a core.

    A server keeps working after its callers hang up (closing calls, writing records and
    recordings); the next level must not start while that work shares its core.
    """
    samplers = [ProcessSampler(pid) for pid in pids]
    deadline = time.monotonic() + limit
    before = sum(s.cpu_seconds() for s in samplers)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = sum(s.cpu_seconds() for s in samplers)
        if now - before < busy_share * 0.5:
            return
        before = now
    log(f"    (servers still busy after {limit:.0f} s; going on)")


def passes(report: LoadReport) -> bool:
    """The on-time criterion for 'max concurrent calls'."""
    p95 = percentile(report.response_latencies, 95)
    gap99 = percentile(report.gaps, 99) or 0.0
    return (
        report.failed == 0
        and report.unanswered_turns == 0
        and p95 is not None
        and p95 < LATENCY_LIMIT
        and gap99 < GAP_LIMIT
        and not report.generator_overloaded
    )


def describe(report: LoadReport) -> str:
    """One line for the log."""
    p50 = percentile(report.response_latencies, 50)
    p95 = percentile(report.response_latencies, 95)
    gap99 = percentile(report.gaps, 99) or 0.0
    cpu = report.server_cpu_percent or 0.0
    overloaded = " GENERATOR-OVERLOADED" if report.generator_overloaded else ""
    return (
        f"{report.calls:4d} calls: ok {report.ok} failed {report.failed} unanswered {report.unanswered_turns}"
        f" p50 {1000 * (p50 or 0):.0f} ms p95 {1000 * (p95 or 0):.0f} ms gap99 {1000 * gap99:.0f} ms"
        f" cpu {cpu:.0f}%{overloaded}"
    )


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


def machine() -> str:
    """CPU model, cores and memory."""
    model = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{model}, {os.cpu_count()} cores, {mem:.0f} GiB, Python {platform.python_version()}, {platform.system()}"


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
    args = parser.parse_args()
    if args.records:
        return compare_records(args)

    turn, _ = read_wav(ROOT / "src" / "callpipe" / "sim" / "data" / "caller_8k.wav")
    two_cpus = (os.cpu_count() or 1) >= 2
    server_cpu = 0 if two_cpus else None
    if two_cpus:
        os.sched_setaffinity(0, {1})  # the load generator stays off the server's core

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


class CapacitySearch:
    """Doubling then bisecting for the largest N that passes, fed one level at a time.

    A state machine, so that two configurations can be searched in lock-step (each level
    run for one, then the other, under the same machine conditions).
    """

    def __init__(self, start: int, limit: int, *, resolution: float = 0.1, max_bisections: int = 3) -> None:
        self.limit = limit
        self.resolution = resolution  # stop once the bracket is this fraction of the best
        self.max_bisections = max_bisections
        self.best = 0
        self.low = 0
        self.high: int | None = None
        self.level: int | None = start
        self.bisections = 0
        self.capped = False

    def feed(self, passed: bool, overloaded: bool = False) -> None:
        """The result of the level just run; sets :attr:`level` to the next one (``None``: done)."""
        assert self.level is not None
        n = self.level
        if overloaded:
            self.capped = True
            self.high = n if self.high is None else min(self.high, n)
        elif passed:
            self.best = self.low = n
        else:
            self.high = n if self.high is None else min(self.high, n)
        if self.high is None and not overloaded:
            self.level = n * 2 if n * 2 <= self.limit else None
            return
        close_enough = self.high is not None and self.high - self.low <= max(
            2, int(self.low * self.resolution)
        )
        if self.high is None or self.bisections >= self.max_bisections or close_enough:
            self.level = None
            return
        self.bisections += 1
        self.level = (self.low + self.high) // 2


def compare_records(args: argparse.Namespace) -> int:
    """Capacity (calls on time per process) with records and recordings off vs on.

    Both servers run at once, pinned to the same core (an idle server costs nothing), and
    the two searches advance in lock-step: every load level is run for "off" and then for
    "on", so both see the same machine, each run only once both servers are idle (the
    other's calls closed and their records written). A level passes if any of ``--tries`` runs passes
    (a stray stall from another process fails one run; a real limit fails them all).
    """
    import tempfile

    turn, _ = read_wav(ROOT / "src" / "callpipe" / "sim" / "data" / "caller_8k.wav")
    two_cpus = (os.cpu_count() or 1) >= 2
    server_cpu = 0 if two_cpus else None
    if two_cpus:
        os.sched_setaffinity(0, {1})
    labels = ("off", "on")
    # Finer than the side-by-side search: the figure is compared at 10%, so bisect to 5%.
    searches = {
        label: CapacitySearch(10, args.max_limit, resolution=0.05, max_bisections=5) for label in labels
    }
    measured: dict[int, dict[str, tuple[bool, float | None]]] = {}  # level -> label -> (passed, CPU)
    with (
        tempfile.TemporaryDirectory(prefix="callpipe-bench-records-") as directory,
        contextlib.ExitStack() as stack,
    ):
        servers = {}
        for label, extra in (("off", ()), ("on", ("--records", directory))):
            fw = Framework("callpipe", sys.executable, BENCH / "callpipe_bot.py", extra)
            servers[label] = stack.enter_context(bot_server(fw, server_cpu))
        while any(s.level is not None for s in searches.values()):
            for label in labels:
                search = searches[label]
                if search.level is None:
                    continue
                url, pid = servers[label]
                passed = overloaded = False
                for attempt in range(args.tries):
                    wait_quiet([pid for _, pid in servers.values()])
                    report = load(url, pid, search.level, args.duration, turn)
                    log(f"    records {label:3s} try {attempt + 1}: {describe(report)}")
                    overloaded = report.generator_overloaded
                    passed = passes(report)
                    if passed or overloaded:
                        break
                measured.setdefault(search.level, {})[label] = (passed, report.cpu_per_call_second)
                search.feed(passed, overloaded)
        recordings = list(Path(directory).glob("recordings/*/*.wav"))
        log(f"  ({len(recordings)} recordings written)")
    found = {label: searches[label].best for label in labels}
    capped = [label for label in labels if searches[label].capped]
    change = (found["on"] - found["off"]) / max(1, found["off"]) * 100
    note = f" (load-generator limit: {', '.join(capped)})" if capped else ""
    print(
        f"max concurrent calls on time: records off {found['off']}, on {found['on']} ({change:+.0f}%){note}"
    )
    print(f"each level: best of {args.tries} runs of {args.duration:.0f} s, off and on alternately")
    print("| calls | off: on time, CPU per call-second | on: on time, CPU per call-second |")
    print("|---:|---|---|")
    for level in sorted(measured):
        cells = []
        for label in labels:
            if label not in measured[level]:
                cells.append("-")
                continue
            ok, cpu = measured[level][label]
            cells.append(f"{'yes' if ok else 'no'}, {'-' if cpu is None else f'{cpu * 1000:.2f} ms'}")
        print(f"| {level} | {cells[0]} | {cells[1]} |")
    print(f"machine: {machine()}; {datetime.date.today().isoformat()}")
    return 0


def render(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> str:
    """The Markdown section with the results."""
    cp = results.get("callpipe", {})
    pc = results.get("pipecat", {})

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value * 1000:.0f} ms"

    def mib(value: float | None) -> str:
        return "-" if value is None else f"{value / 2**20:.2f} MiB"

    def val(r: dict[str, Any], key: str, fmt: str) -> str:
        value = r.get(key)
        return "-" if value is None else fmt.format(value)

    def max_cell(r: dict[str, Any]) -> str:
        if not r:
            return "-"
        suffix = "+ (generator limit)" if r.get("max_capped") else ""
        return f"{r['max_calls']}{suffix}"

    rows = [
        (
            "max concurrent calls on time (p99 gap < 40 ms, p95 latency < 350 ms)",
            max_cell(cp),
            max_cell(pc),
            ratio(cp.get("max_calls"), pc.get("max_calls"), True),
        ),
        (
            "CPU per call-second (20 calls)",
            val(cp, "cpu_per_call_second", "{:.4f} s"),
            val(pc, "cpu_per_call_second", "{:.4f} s"),
            ratio(cp.get("cpu_per_call_second"), pc.get("cpu_per_call_second"), False),
        ),
        (
            "RSS per call (20 calls)",
            mib(cp.get("rss_per_call")),
            mib(pc.get("rss_per_call")),
            ratio(cp.get("rss_per_call"), pc.get("rss_per_call"), False),
        ),
        (
            "response latency p50, 1 call",
            ms(cp.get("p50_1")),
            ms(pc.get("p50_1")),
            ratio(cp.get("p50_1"), pc.get("p50_1"), False),
        ),
        (
            "response latency p95, 1 call",
            ms(cp.get("p95_1")),
            ms(pc.get("p95_1")),
            ratio(cp.get("p95_1"), pc.get("p95_1"), False),
        ),
        (
            "response latency p50, 20 calls",
            ms(cp.get("p50_20")),
            ms(pc.get("p50_20")),
            ratio(cp.get("p50_20"), pc.get("p50_20"), False),
        ),
        (
            "response latency p95, 20 calls",
            ms(cp.get("p95_20")),
            ms(pc.get("p95_20")),
            ratio(cp.get("p95_20"), pc.get("p95_20"), False),
        ),
        (
            "greeting latency p50 (20 calls)",
            ms(cp.get("greeting")),
            ms(pc.get("greeting")),
            ratio(cp.get("greeting"), pc.get("greeting"), False),
        ),
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
