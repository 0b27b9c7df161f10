"""What every side-by-side run shares: bot servers, one load level, the on-time criterion
and the capacity search (``run.py`` and ``records_capacity.py`` build on it).

Importing it first makes sure callpipe's dependencies are there: under a python that
lacks them it re-runs the calling script under the project's ``./.venv``.
"""

from __future__ import annotations

import asyncio
import contextlib
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

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
DATA = BENCH / "data"
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
                "bench/ needs callpipe's dependencies: run `bash scripts/test.sh` once "
                "(it creates ./.venv), or activate a venv with `pip install -e .[dev,local]`"
            ) from None
        os.execv(str(venv_python), [str(venv_python), *sys.argv])


_reexec_in_project_venv()

from callpipe.server.background import free_port  # noqa: E402
from callpipe.sim.load import LoadConfig, LoadReport, ProcessSampler, percentile, run_load  # noqa: E402


def log(message: str) -> None:
    """Progress to stderr (the tables go to stdout)."""
    print(message, file=sys.stderr, flush=True)


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
    # A checkout whose ``src`` the bot imports callpipe from (another tree's code).
    source: Path | None = None


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
    env = None
    if framework.source is not None:
        env = {**os.environ, "PYTHONPATH": str(framework.source / "src")}
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
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


def pin_load_generator() -> int | None:
    """On two or more cores: keep this process (the load generator) off CPU 0 and return 0,
    the core for the server; on one core, ``None`` (nothing is pinned)."""
    if (os.cpu_count() or 1) < 2:
        return None
    os.sched_setaffinity(0, {1})
    return 0


def caller_turn() -> bytes:
    """The caller's turn every simulated caller says (8 kHz PCM16)."""
    turn, _ = read_wav(ROOT / "src" / "callpipe" / "sim" / "data" / "caller_8k.wav")
    return turn
