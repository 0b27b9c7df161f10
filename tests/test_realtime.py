"""Real-time behaviour over real sockets: pacing, many calls in one process, cleanup."""

from __future__ import annotations

import asyncio
import gc
import os
import sys
import weakref
from pathlib import Path
from typing import Any

import httpx
import pytest

from callpipe.server.background import BackgroundServer, free_port
from callpipe.sim.bots import CannedBotConfig, create_canned_bot_app
from callpipe.sim.caller import CallerTurn, CallResult, SimulatedCaller
from tests.conftest import tone

LEAD = 0.08
ROOT = Path(__file__).resolve().parents[1]


def _current_rss_kb() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _add_debug_routes(app: Any) -> None:
    @app.get("/debug")
    async def debug() -> dict[str, int]:
        from callpipe.audio.vad import VADBatcher
        from callpipe.transports.clock import OutputClock

        clock = OutputClock.for_running_loop()
        gc.collect()
        return {
            "tasks": len(asyncio.all_tasks()),
            "clock_streams": clock.active_streams,
            "vad_pending": VADBatcher.for_loop().pending,
            "rss_kb": _current_rss_kb(),
        }


async def test_audio_is_paced_in_real_time_with_a_bounded_lead() -> None:
    app, _calls = create_canned_bot_app(
        CannedBotConfig(reply=tone(0.2), greeting=tone(3.0), audio_out_lead_secs=LEAD)
    )
    with BackgroundServer(app) as server:
        result = await SimulatedCaller(server.ws_url + "/ws").run([], hang_up_after_secs=0.4)
    arrivals = result.bot_audio_arrivals
    assert sum(secs for _, secs in arrivals) == pytest.approx(3.0, abs=0.021)
    first = arrivals[0][0]
    received = 0.0
    for at, secs in arrivals:
        received += secs
        # Never more than the lead (plus one 20 ms chunk and scheduling slack) ahead of real time.
        ahead = received - (at - first)
        assert ahead <= LEAD + 0.02 + 0.03, (at - first, received)
    # ... and never falling behind: the whole greeting arrives in about its own duration.
    span = arrivals[-1][0] - first
    assert 3.0 - LEAD - 0.08 <= span <= 3.0 - LEAD + 0.1
    # 20 ms multiples only.
    for _, secs in arrivals:
        assert round(secs / 0.02, 6) == round(secs / 0.02)
    assert result.gaps == []


def _check_call(result: CallResult) -> None:
    assert not result.errors, result.errors
    assert result.greeting_latency is not None and result.greeting_latency < 0.4
    assert len(result.turns) == 1
    latency = result.turns[0].response_latency
    # VAD stop window 0.4 s; generous bound for a loaded 2-core machine running both sides.
    assert latency is not None and latency < 0.8, latency
    assert result.bot_audio_secs == pytest.approx(2.0, abs=0.1)
    assert max(result.gaps, default=0.0) < 0.06, result.gaps


_BOT_SERVER = """
import sys, uvicorn
from fastapi.responses import PlainTextResponse
from callpipe.audio.vad import SileroVADModel, VADParams
from callpipe.sim.bots import CannedBotConfig, create_canned_bot_app
from tests.conftest import tone

# stop_secs 0.4: the test sentence has a short pause that, depending on how the caller's
# start lines up with the VAD's 32 ms windows, can end a turn at 0.2 s; this test is about
# on-time audio for many calls, not about turn-taking.
config = CannedBotConfig(reply=tone(1.0, freq=500), greeting=tone(1.0), vad_params=VADParams(stop_secs=0.4))
app, calls = create_canned_bot_app(config)
app.get("/healthz", response_class=PlainTextResponse)(lambda: "ok")
SileroVADModel.shared()
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
"""


async def test_fifty_simultaneous_calls_each_get_on_time_audio(speech_8k: bytes, tmp_path: Path) -> None:
    # The server runs in its own process, as in production: 50 callers and 50 bot calls in
    # one Python process would measure the GIL they share, not the server.
    script = tmp_path / "bot_server.py"
    script.write_text(_BOT_SERVER)
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(script), str(port), cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}
    )
    try:
        async with httpx.AsyncClient() as http:
            for _ in range(300):
                try:
                    if (await http.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.05)
        callers = [SimulatedCaller(f"ws://127.0.0.1:{port}/ws", record=False) for _ in range(50)]
        results = await asyncio.wait_for(
            asyncio.gather(*(c.run([CallerTurn(audio=speech_8k)], hang_up_after_secs=0.5) for c in callers)),
            timeout=60,
        )
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 10)
    assert len({c.stream_id for c in callers}) == 50
    for result in results:
        _check_call(result)


async def test_no_task_socket_or_memory_left_after_hundreds_of_calls() -> None:
    app, calls = create_canned_bot_app(CannedBotConfig(reply=tone(0.2), greeting=tone(0.2)))
    _add_debug_routes(app)
    transports: list[weakref.ref[Any]] = []

    async def batch(server: BackgroundServer, n: int) -> None:
        callers = [SimulatedCaller(server.ws_url + "/ws", record=False) for _ in range(n)]
        await asyncio.wait_for(
            asyncio.gather(*(c.run([], hang_up_after_secs=0.2) for c in callers)),
            timeout=30,
        )
        await asyncio.gather(*(c.wait_finished(10) for c in calls))
        transports.extend(weakref.ref(c.transport) for c in calls)
        calls.clear()

    samples: list[int] = []
    with BackgroundServer(app) as server:
        async with httpx.AsyncClient(base_url=server.base_url) as http:
            baseline = (await http.get("/debug")).json()
            for _ in range(12):  # 100 calls of warm-up, then 200 more
                await batch(server, 25)
                samples.append((await http.get("/debug")).json()["rss_kb"])
            after = (await http.get("/debug")).json()

    assert len(transports) == 300
    # Every call's tasks are gone: the server is back to its idle task count.
    assert after["tasks"] == baseline["tasks"], (baseline, after)
    assert after["clock_streams"] == 0 and after["vad_pending"] == 0
    # RSS (after a collection) stays flat after warm-up: 200 more calls add next to nothing.
    # Medians of a few samples, because the allocator hands memory back lazily.
    early, late = sorted(samples[4:8])[2], sorted(samples[8:])[2]
    growth_mb = (late - early) / 1024
    assert growth_mb < 3, samples
    # No call object outlives its call.
    gc.collect()
    alive = [ref for ref in transports if ref() is not None]
    assert not alive, f"{len(alive)} transports still referenced"
