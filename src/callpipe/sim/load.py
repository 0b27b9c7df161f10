"""Load: many simulated callers against one bot, with latency, gap and server-cost figures.

Every caller speaks the same clip, waits for the bot's answer, and repeats until the
call's time is up; then it hangs up. The report gives calls ok/failed, response latency
percentiles (caller stopped speaking -> first bot audio heard), gaps in the bot's audio,
greeting latency, and - when the server's pid is given - its CPU and memory, read from
``/proc`` over the steady part of the run (after the ramp).

The generator watches itself: if its own clock falls behind (the machine is saturated)
the report says so, because then gaps and latencies measure the generator, not the bot.
For the same reason it defers its own full garbage collections until the run is over
(young ones still run): with a few hundred callers, one full collection stopped every
caller's clock for 25-47 ms, and the callers then recorded gaps in the bot's audio that
the bot had sent in time.
"""

from __future__ import annotations

import asyncio
import gc
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from callpipe.sim.caller import CallerTurn, CallResult, SimulatedCaller
from callpipe.transports.clock import OutputClock


def percentile(values: list[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100) by nearest rank, or ``None`` for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


class ProcessSampler:
    """CPU seconds and resident memory of a process, from ``/proc`` (Linux)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._ticks = os.sysconf("SC_CLK_TCK")

    def cpu_seconds(self) -> float:
        """User + system CPU time the process has used."""
        with open(f"/proc/{self.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / self._ticks

    def rss_bytes(self) -> int:
        """Current resident set size."""
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0


@dataclass(kw_only=True)
class LoadConfig:
    """One load run: ``calls`` callers to ``url`` for ``duration`` seconds, started over ``ramp``."""

    url: str
    calls: int
    duration: float
    turn_audio: bytes
    turn_sample_rate: int = 8000
    ramp: float = 2.0
    encoding: str = "PCMU"
    server_pid: int | None = None
    quiet_secs: float = 0.5
    hang_up_after_secs: float = 0.6


@dataclass(kw_only=True)
class LoadReport:
    """What a load run measured."""

    calls: int
    duration: float
    ok: int = 0
    failed: int = 0
    failures: list[str] = field(default_factory=list)
    response_latencies: list[float] = field(default_factory=list)
    greeting_latencies: list[float] = field(default_factory=list)
    gaps: list[float] = field(default_factory=list)
    turns: int = 0
    unanswered_turns: int = 0
    bot_audio_secs: float = 0.0
    server_cpu_percent: float | None = None
    server_cpu_seconds: float | None = None
    server_rss_start: int | None = None
    server_rss_peak: int | None = None
    steady_seconds: float = 0.0
    generator_late_ticks: int = 0
    generator_ticks: int = 0

    @property
    def generator_overloaded(self) -> bool:
        """True if the generator's own clock was late in more than 2% of its ticks."""
        return self.generator_ticks > 0 and self.generator_late_ticks / self.generator_ticks > 0.02

    @property
    def cpu_per_call_second(self) -> float | None:
        """Server CPU seconds per second of call, over the steady part of the run."""
        if self.server_cpu_seconds is None or self.steady_seconds <= 0:
            return None
        return self.server_cpu_seconds / (self.steady_seconds * self.calls)

    @property
    def rss_per_call(self) -> float | None:
        """Server memory growth per concurrent call (bytes)."""
        if self.server_rss_start is None or self.server_rss_peak is None:
            return None
        return max(0, self.server_rss_peak - self.server_rss_start) / self.calls

    def p(self, values: list[float], q: float) -> float | None:
        """Shorthand for :func:`percentile`."""
        return percentile(values, q)

    def summary(self) -> str:
        """A human-readable multi-line summary."""

        def ms(value: float | None) -> str:
            return "-" if value is None else f"{value * 1000:.0f} ms"

        lines = [
            f"calls: {self.ok} ok, {self.failed} failed (of {self.calls}), {self.turns} turns,"
            f" {self.unanswered_turns} unanswered",
            f"response latency: p50 {ms(self.p(self.response_latencies, 50))} | p95 {ms(self.p(self.response_latencies, 95))} | p99 {ms(self.p(self.response_latencies, 99))}",
            f"greeting latency: p50 {ms(self.p(self.greeting_latencies, 50))} | p95 {ms(self.p(self.greeting_latencies, 95))}",
            f"bot audio gaps: {len(self.gaps)}, p99 {ms(self.p(self.gaps, 99))}, max {ms(max(self.gaps, default=0.0))}",
        ]
        if self.server_cpu_percent is not None:
            per_call = self.cpu_per_call_second
            lines.append(
                f"server: CPU {self.server_cpu_percent:.0f}% ({per_call * 1000:.2f} ms CPU per call-second)"
                if per_call is not None
                else f"server: CPU {self.server_cpu_percent:.0f}%"
            )
        if self.server_rss_peak is not None and self.server_rss_start is not None:
            per_call = self.rss_per_call or 0.0
            lines.append(
                f"server RSS: {self.server_rss_start / 2**20:.0f} MiB -> peak {self.server_rss_peak / 2**20:.0f} MiB"
                f" ({per_call / 2**20:.2f} MiB per call)"
            )
        if self.generator_overloaded:
            lines.append(
                f"WARNING: the load generator itself fell behind ({self.generator_late_ticks} late ticks of "
                f"{self.generator_ticks}); figures are not reliable at this load"
            )
        if self.failures:
            lines.append("failures: " + "; ".join(sorted(set(self.failures))[:5]))
        return "\n".join(lines)


@dataclass(kw_only=True)
class LoadProgress:
    """A progress snapshot for the live display."""

    started: int
    active: int
    finished: int
    failed: int
    elapsed: float
    total_secs: float


def _turns_until(deadline: float, audio: bytes, rate: int, quiet_secs: float) -> Iterator[CallerTurn]:
    while time.monotonic() < deadline:
        yield CallerTurn(audio=audio, sample_rate=rate, quiet_secs=quiet_secs, text="load turn")


class _LoadRun:
    """The callers of one :func:`run_load`: their results and the live progress counts."""

    def __init__(
        self,
        config: LoadConfig,
        caller_factory: Callable[[int], SimulatedCaller] | None,
    ) -> None:
        self.config = config
        self.caller_factory = caller_factory
        self.results: list[CallResult | BaseException] = []
        self.state = {"started": 0, "active": 0, "finished": 0, "failed": 0}
        self.t0 = time.monotonic()

    def make_caller(self, index: int) -> SimulatedCaller:
        """The ``index``-th caller: from the factory, or a plain unrecorded one."""
        if self.caller_factory is not None:
            return self.caller_factory(index)
        config = self.config
        return SimulatedCaller(
            config.url,
            encoding=config.encoding,
            record=False,
            max_call_secs=config.duration + config.ramp + 30,
            from_number=f"+1555{index:07d}",
        )

    async def one_call(self, index: int) -> None:
        """Start at the caller's place in the ramp, talk for the run's duration, keep the result."""
        config, state = self.config, self.state
        await asyncio.sleep(config.ramp * index / max(1, config.calls))
        state["started"] += 1
        state["active"] += 1
        deadline = time.monotonic() + config.duration
        turns = _turns_until(deadline, config.turn_audio, config.turn_sample_rate, config.quiet_secs)
        try:
            result = await self.make_caller(index).run(turns, hang_up_after_secs=config.hang_up_after_secs)
            self.results.append(result)
            if result.errors or result.closed_by == "bot":
                state["failed"] += 1
        except Exception as exc:
            self.results.append(exc)
            state["failed"] += 1
        finally:
            state["active"] -= 1
            state["finished"] += 1

    async def show_progress(self, progress: Callable[[LoadProgress], None]) -> None:
        """Report progress every half second until cancelled."""
        total = self.config.ramp + self.config.duration
        while True:
            progress(LoadProgress(elapsed=time.monotonic() - self.t0, total_secs=total, **self.state))
            await asyncio.sleep(0.5)

    async def sample_server(self, sampler: ProcessSampler, report: LoadReport) -> None:
        """Measure the server's CPU and peak memory into ``report`` over the steady part of the run."""
        config = self.config
        # Measure over the steady part: after the ramp, for the rest of the calls' duration.
        await asyncio.sleep(config.ramp + 0.5)
        cpu_start, wall_start = sampler.cpu_seconds(), time.monotonic()
        report.server_rss_start = report.server_rss_start or sampler.rss_bytes()
        peak = 0
        end = self.t0 + config.ramp + config.duration - 0.5
        while time.monotonic() < end:
            peak = max(peak, sampler.rss_bytes())
            await asyncio.sleep(0.25)
        report.server_cpu_seconds = sampler.cpu_seconds() - cpu_start
        report.steady_seconds = time.monotonic() - wall_start
        report.server_cpu_percent = 100 * report.server_cpu_seconds / max(report.steady_seconds, 1e-9)
        report.server_rss_peak = peak


# A full collection waits for this many young (generation 1) ones: none in a bounded run.
_NO_FULL_COLLECTIONS = 1_000_000


async def run_load(
    config: LoadConfig,
    *,
    progress: Callable[[LoadProgress], None] | None = None,
    caller_factory: Callable[[int], SimulatedCaller] | None = None,
) -> LoadReport:
    """Run the load described by ``config`` and return its report (bounded in time)."""
    report = LoadReport(calls=config.calls, duration=config.duration)
    thresholds = gc.get_threshold()
    gc.set_threshold(thresholds[0], thresholds[1], _NO_FULL_COLLECTIONS)
    try:
        return await _run_load(report, config, progress, caller_factory)
    finally:
        gc.set_threshold(*thresholds)


async def _run_load(
    report: LoadReport,
    config: LoadConfig,
    progress: Callable[[LoadProgress], None] | None,
    caller_factory: Callable[[int], SimulatedCaller] | None,
) -> LoadReport:
    sampler = ProcessSampler(config.server_pid) if config.server_pid else None
    clock = OutputClock.for_running_loop()
    late0, ticks0 = clock.late_ticks, clock.ticks
    run = _LoadRun(config, caller_factory)
    if sampler is not None:
        report.server_rss_start = sampler.rss_bytes()
    helpers = []
    if sampler is not None:
        helpers.append(asyncio.ensure_future(run.sample_server(sampler, report)))
    if progress is not None:
        helpers.append(asyncio.ensure_future(run.show_progress(progress)))
    try:
        await asyncio.gather(*(run.one_call(i) for i in range(config.calls)))
        if sampler is not None:
            await asyncio.wait_for(helpers[0], timeout=5)
    finally:
        for helper in helpers:
            helper.cancel()
    report.generator_late_ticks = clock.late_ticks - late0
    report.generator_ticks = clock.ticks - ticks0
    _collect(report, run.results)
    return report


def _collect(report: LoadReport, results: list[CallResult | BaseException]) -> None:
    for result in results:
        if isinstance(result, BaseException):
            report.failed += 1
            report.failures.append(f"{type(result).__name__}: {result}")
            continue
        problems = list(result.errors)
        if result.closed_by == "bot":
            problems.append(f"bot closed the call ({result.close_code} {result.close_reason})".strip())
        if result.greeting_latency is None:
            problems.append("no greeting")
        if problems:
            report.failed += 1
            report.failures.extend(problems)
        else:
            report.ok += 1
        if result.greeting_latency is not None:
            report.greeting_latencies.append(result.greeting_latency)
        report.gaps.extend(result.gaps)
        report.bot_audio_secs += result.bot_audio_secs
        for turn in result.turns:
            report.turns += 1
            if turn.response_latency is None:
                report.unanswered_turns += 1
            else:
                report.response_latencies.append(turn.response_latency)
