"""``callpipe serve --workers 2`` as real processes: both workers serve calls, /metrics
sums them, and SIGTERM drains every worker."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from pathlib import Path

import httpx
import pytest

from callpipe.server.background import free_port
from callpipe.sim.caller import CallResult, SimulatedCaller
from tests.serving import Served, callpipe_serve, parse_metrics

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and process groups"),
]


class HeldCalls:
    """Calls that stay up (a short greeting, then a silent wait) until :meth:`hang_up_all`."""

    def __init__(self, served: Served) -> None:
        self.served = served
        self.callers: list[SimulatedCaller] = []
        self.runs: list[asyncio.Future[CallResult]] = []
        self.ccids: list[str] = []

    async def open(self) -> str:
        ccid = f"v3:w-{uuid.uuid4().hex[:10]}"
        caller = SimulatedCaller(
            self.served.stream_url(ccid, greeting_secs=0.2), call_control_id=ccid, max_call_secs=40
        )
        self.callers.append(caller)
        self.runs.append(asyncio.ensure_future(caller.run([], hang_up_after_secs=60)))
        self.ccids.append(ccid)
        for _ in range(200):
            if self.served.served_by(ccid) is not None:
                return ccid
            if self.runs[-1].done():
                raise AssertionError(f"call ended early: {self.runs[-1].result()}")
            await asyncio.sleep(0.05)
        raise AssertionError(f"no bot took {ccid}:\n{self.served.output()}")

    def pids(self) -> set[int | None]:
        return {self.served.served_by(ccid) for ccid in self.ccids}

    async def hang_up_all(self) -> list[CallResult]:
        for caller in self.callers:
            await caller.hang_up()
        return list(await asyncio.wait_for(asyncio.gather(*self.runs), 20))


async def _open_until_both_workers(held: HeldCalls, limit: int = 16) -> None:
    while len(held.pids()) < 2:
        assert len(held.ccids) < limit, f"{limit} calls all went to one worker: {held.pids()}"
        await held.open()


async def test_two_workers_serve_calls_and_metrics_sum_over_both(tmp_path: Path) -> None:
    metrics_port = free_port()
    with callpipe_serve(tmp_path, workers=2, env={"METRICS_PORT": str(metrics_port)}) as served:
        await served.wait_workers(2)
        held = HeldCalls(served)
        try:
            await _open_until_both_workers(held)
            assert served.proc.pid not in held.pids()  # the supervisor serves no calls itself
            live = len(held.ccids)
            # Each scrape lands on one worker or the other; every one shows the box's total.
            for _ in range(6):
                metrics = await served.metrics()
                assert metrics["callpipe_active_calls"] == live, metrics
            # The supervisor's METRICS_PORT (no key) shows the same totals.
            async with httpx.AsyncClient(timeout=5) as http:
                scraped = await http.get(f"http://127.0.0.1:{metrics_port}/metrics")
            assert parse_metrics(scraped.text)["callpipe_active_calls"] == live
        finally:
            results = await held.hang_up_all()
        assert all(r.greeting_heard_at is not None for r in results)
        for _ in range(100):
            metrics = await served.metrics()
            if metrics["callpipe_active_calls"] == 0:
                break
            await asyncio.sleep(0.05)
        ended = sum(
            v for k, v in metrics.items() if k.startswith("callpipe_calls_total") and "refused" not in k
        )
        assert metrics["callpipe_active_calls"] == 0 and ended == live, metrics


async def test_sigterm_drains_every_worker(tmp_path: Path) -> None:
    with callpipe_serve(tmp_path, workers=2, env={"SHUTDOWN_GRACE_SECS": "20"}) as served:
        await served.wait_workers(2)
        held = HeldCalls(served)
        await _open_until_both_workers(held)
        served.terminate()
        # Both workers refuse new streams at once while their calls run on.
        for _ in range(100):
            if (await served.get("/readyz")).status_code == 503:
                break
            await asyncio.sleep(0.05)
        refused = await SimulatedCaller(served.stream_url("v3:late"), max_call_secs=5).run([])
        assert refused.close_code == 1013, refused
        assert served.proc.poll() is None
        assert all(not run.done() for run in held.runs)  # no worker cut its calls short
        results = await held.hang_up_all()
        assert all(r.closed_by != "bot" for r in results), [
            r.closed_by for r in results
        ]  # ours, not the server's
        assert await served.wait_exit(15) == 0
        output = served.output()
        assert output.count("draining calls") == 2, output  # each worker drained


async def test_a_killed_worker_is_replaced_and_leaves_the_totals(tmp_path: Path) -> None:
    with callpipe_serve(tmp_path, workers=2) as served:
        await served.wait_workers(2)
        held = HeldCalls(served)
        try:
            await _open_until_both_workers(held)
            victim = served.served_by(held.ccids[0])
            assert victim is not None
            survivors = sum(1 for ccid in held.ccids if served.served_by(ccid) != victim)
            os.kill(victim, signal.SIGKILL)
            victims = [
                run
                for ccid, run in zip(held.ccids, held.runs, strict=True)
                if served.served_by(ccid) == victim
            ]
            await asyncio.wait_for(asyncio.gather(*victims), 10)  # their sockets died with it
            await served.wait_workers(3)  # a replacement started
            assert f"(pid {victim}) died" in served.output()
            # The dead worker's calls leave the live gauge; the survivors' calls are untouched.
            for _ in range(50):
                metrics = await served.metrics()
                if metrics["callpipe_active_calls"] == survivors:
                    break
                await asyncio.sleep(0.1)
            assert metrics["callpipe_active_calls"] == survivors, metrics
            assert sum(1 for run in held.runs if not run.done()) == survivors
        finally:
            await held.hang_up_all()


async def test_a_worker_that_cannot_start_stops_the_server(tmp_path: Path) -> None:
    # Loads in the supervisor (which checks the bot once) but fails in every worker.
    (tmp_path / "bot.py").write_text(
        "import os\n"
        "if os.environ.get('CALLPIPE_WORKER'):\n"
        "    raise RuntimeError('no database here')\n"
        "async def bot(runner_args):\n"
        "    pass\n"
    )
    with callpipe_serve(tmp_path, workers=2) as served:
        assert await served.wait_exit(60) == 1
        assert "failed at start-up" in served.output()
