"""Floods: one caller must never take the loop.

The bot server runs in its own process as a user of Pipecat's guide runs it (a FastAPI
app under ``uvicorn.run``), the flood in another (:mod:`tests.flooder`): two streams each
send 10,000 valid ``media`` messages as fast as TCP allows. Beside them three healthy
simulated callers hold a conversation; their bot audio must keep arriving on time (the
gap between consecutive 20 ms chunks of a reply, p99 <= 40 ms) and their replies must
come promptly (p95 <= 350 ms from the end of their speech to the first audio heard).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import sys
from pathlib import Path

import httpx
import pytest
import websockets

import callpipe
from callpipe.server.background import free_port
from callpipe.server.heap import freeze_startup_heap
from callpipe.server.limits import serve_app, uvicorn_config
from callpipe.sim.caller import CallerTurn, CallResult, SimulatedCaller
from callpipe.telnyx import protocol
from callpipe.transports.guards import FloodGuard, Verdict
from tests.test_bad_input import _config, _started_call, _wait_for, callpipe_log

__all__ = ["callpipe_log"]  # a fixture, used by name

ROOT = Path(__file__).resolve().parents[1]
FLOOD_MESSAGES = int(os.environ.get("CALLPIPE_TEST_FLOOD_MESSAGES", "10000"))
POLICY_VIOLATION = 1008

_BOT_SERVER = """
import sys, uvicorn
from fastapi.responses import PlainTextResponse
from callpipe.audio.vad import SileroVADModel
from callpipe.sim.bots import CannedBotConfig, create_canned_bot_app
from tests.conftest import tone

app, calls = create_canned_bot_app(CannedBotConfig(reply=tone(1.0, freq=500), greeting=tone(1.0)))
app.get("/healthz", response_class=PlainTextResponse)(lambda: "ok")
SileroVADModel.shared()
if sys.argv[2] == "uvicorn.run":  # exactly as Pipecat's guide runs its app
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
else:  # as callpipe's README runs the guide's app
    import callpipe
    callpipe.serve_app(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
"""


def reply_gaps(result: CallResult) -> list[float]:
    """How long each 20 ms chunk of a reply waited after the one before it.

    The output sends one chunk a tick, or several in one message after a late tick; a
    message of ``n`` chunks counts as ``n`` chunks arriving together, so the gap after it
    is the time to the next message less its extra ``n - 1`` chunks. Steady audio shows
    20 ms; a stalled loop shows the stall. Pauses over 1 s are between replies.
    """
    arrivals = result.bot_audio_arrivals
    gaps = []
    for (at, secs), (next_at, _) in itertools.pairwise(arrivals):
        if next_at - at < 1.0:
            gaps.append(next_at - at - (secs - 0.02))
    return gaps


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (nearest rank) of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


async def _start_server(tmp_path: Path, how: str = "serve_app") -> tuple[asyncio.subprocess.Process, int]:
    script = tmp_path / "bot_server.py"
    script.write_text(_BOT_SERVER)
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(script), str(port), how, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}
    )
    async with httpx.AsyncClient() as http:
        for _ in range(400):
            try:
                if (await http.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200:
                    return process, port
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.05)
    process.terminate()
    raise AssertionError("the bot server did not start")


async def _flood(url: str, delay: float) -> list[dict[str, object]]:
    await asyncio.sleep(delay)
    # The attacker's own CPU is not the server's in real life: niced, its sending does not
    # starve the server or the healthy callers of this shared machine.
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.flooder", url, str(FLOOD_MESSAGES), "2",
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=asyncio.subprocess.PIPE,
        preexec_fn=lambda: os.nice(15),
    )  # fmt: skip
    out, _ = await asyncio.wait_for(process.communicate(), 60)
    return [json.loads(line) for line in out.decode().splitlines() if line.strip()]


@pytest.mark.slow
# One rerun, bound unchanged: on the 2-core box a late-exiting process of an earlier test
# (a browser, a server) has once pushed one run's gap p99 to 52 ms in a full suite, while
# the same test alone passes every time (22-27 ms). A real regression fails both runs.
@pytest.mark.flaky(reruns=1)
@pytest.mark.parametrize("how", ["serve_app", "uvicorn.run"])
async def test_two_floods_do_not_disturb_three_healthy_calls(
    speech_8k: bytes, tmp_path: Path, how: str
) -> None:
    process, port = await _start_server(tmp_path, how)
    url = f"ws://127.0.0.1:{port}/ws"
    # The healthy callers measure the gaps in this (pytest's) process, whose heap holds
    # whatever earlier tests loaded (embedded models, browsers' clients): its full garbage
    # collections stalled the callers' own receiving by ~50 ms. Freeze that heap, as
    # `callpipe serve` does its own (callpipe.server.heap), so the gaps are the server's.
    freeze_startup_heap()
    try:
        callers = [SimulatedCaller(url, record=False, max_call_secs=40) for _ in range(3)]
        turns = [CallerTurn(audio=speech_8k, text=f"turn {i}") for i in range(3)]
        healthy = asyncio.gather(*(c.run(turns, hang_up_after_secs=0.5) for c in callers))
        # The flood starts during the greeting and the first turns.
        floods = await asyncio.wait_for(_flood(url, 0.5), 60)
        results = await asyncio.wait_for(healthy, 60)
    finally:
        # Not unfrozen: that would put the whole heap back into the oldest generation at
        # once, and the next full collection would stall the tests that follow.
        process.terminate()
        await asyncio.wait_for(process.wait(), 10)

    gaps = [gap for result in results for gap in reply_gaps(result)]
    latencies = [t.response_latency for result in results for t in result.turns]
    print(f"floods: {floods}")
    print(f"gaps: n={len(gaps)} p99={percentile(gaps, 0.99) * 1000:.1f}ms max={max(gaps) * 1000:.1f}ms "
          f"over40={sum(g > 0.04 for g in gaps)}")  # fmt: skip
    print(f"latency: {[round(x * 1000) if x else None for x in latencies]}")
    for result in results:
        assert result.errors == [], result.errors
        assert len(result.turns) == 3
    assert all(latency is not None for latency in latencies)
    assert percentile(gaps, 0.99) <= 0.040, sorted(gaps)[-10:]
    assert percentile([x for x in latencies if x is not None], 0.95) <= 0.350, latencies
    # Each flooding stream was cut off early, with a reason.
    assert len(floods) == 2
    for flood in floods:
        assert flood["code"] == POLICY_VIOLATION, flood
        assert "faster than real time" in str(flood["reason"]), flood


# ------------------------------------------------------------------ the guard on its own


def test_media_within_real_time_plus_the_allowance_is_accepted() -> None:
    guard = FloodGuard(burst_secs=1.0, close_after_secs=0.5)
    now = 100.0
    # A 1 s backlog at once (a network hiccup), then real time for a minute.
    for _ in range(50):
        assert guard.message(now) is Verdict.ACCEPT
        assert guard.media(0.02) is Verdict.ACCEPT
    for _ in range(3000):
        now += 0.02
        assert guard.message(now) is Verdict.ACCEPT
        assert guard.media(0.02) is Verdict.ACCEPT
    assert guard.dropped == 0


def test_a_stream_slightly_over_real_time_only_loses_the_excess() -> None:
    guard = FloodGuard(burst_secs=0.2, close_after_secs=1.0)
    now = 0.0
    verdicts = []
    for _ in range(5000):  # 1.5x real time for 100 s of audio
        now += 0.02 / 1.5
        guard.message(now)
        verdicts.append(guard.media(0.02))
    assert Verdict.CLOSE not in verdicts
    accepted = verdicts.count(Verdict.ACCEPT) * 0.02
    assert accepted == pytest.approx(now * 1.02, rel=0.01)  # real time (and the 2 % tolerance)


def test_a_flood_is_dropped_then_closed_after_the_allowance() -> None:
    guard = FloodGuard(burst_secs=1.0, close_after_secs=0.5)
    verdicts = []
    for _ in range(1000):
        guard.message(5.0)
        verdict = guard.media(0.02)
        verdicts.append(verdict)
        if verdict is Verdict.CLOSE:
            break
    assert verdicts[:50] == [Verdict.ACCEPT] * 50
    assert verdicts[50:-1] == [Verdict.DROP] * 25
    assert verdicts[-1] is Verdict.CLOSE
    assert "faster than real time" in guard.reason


def test_too_many_messages_close_whatever_they_are() -> None:
    guard = FloodGuard(max_messages_per_sec=50, message_burst=100)
    assert [guard.message(1.0) for _ in range(100)] == [Verdict.ACCEPT] * 100
    assert guard.message(1.0) is Verdict.CLOSE
    assert "faster than 50 per second" in guard.reason


# ------------------------------------------------------------- over a real socket


async def test_media_beyond_the_allowance_is_dropped_undecoded_and_closes_with_1008(
    callpipe_log: list[logging.LogRecord],
) -> None:
    async with _started_call(_config()) as (raw, call):
        inp = call.transport.input()
        decoded: list[int] = []
        original = inp._serializer.decode_media

        def counting_decode(payload: bytes) -> bytes:
            decoded.append(len(payload))
            return original(payload)

        inp._serializer.decode_media = counting_decode  # type: ignore[method-assign]
        silence = raw.media(bytes([0xFF]) * 160)
        with contextlib.suppress(websockets.ConnectionClosed):
            await raw.send(*[silence] * 1000)
        code, reason = await raw.wait_closed()
        await _wait_for(call.finished.is_set, 3, "the bot's call to end")
    assert code == POLICY_VIOLATION
    assert reason.startswith("media arriving faster than real time")
    # 3 s of allowance were decoded (plus what real time added while sending); the
    # dropped excess never was, and the call closed once 2 s more had been dropped.
    assert 150 <= len(decoded) < 200, len(decoded)
    assert inp._flood.dropped == inp.messages_received - len(decoded)  # the last one closed it
    assert inp.messages_received < 400
    warnings = [r.getMessage() for r in callpipe_log if "faster than real time" in r.getMessage()]
    assert len(warnings) == 2, warnings  # "dropping the excess" once, then the close


async def test_a_flood_of_other_messages_closes_with_1008() -> None:
    async with _started_call(_config()) as (raw, call):
        unknown = '{"event":"media_stats","stats":{"jitter":3}}'
        with contextlib.suppress(websockets.ConnectionClosed):
            await raw.send(*[unknown] * 1000)
        code, reason = await raw.wait_closed()
        await _wait_for(call.finished.is_set, 3, "the bot's call to end")
    assert code == POLICY_VIOLATION
    assert reason == "messages arriving faster than 200 per second"
    assert call.transport.input().messages_received < 450


# ------------------------------------------------------- the guide's own uvicorn server


@pytest.mark.slow
@pytest.mark.parametrize("how", ["serve_app", "uvicorn.run"])
async def test_a_16_mb_message_is_refused_by_its_header_under_serve_app(tmp_path: Path, how: str) -> None:
    """``uvicorn.run`` reads, inflates and decodes all 16 MB before callpipe can refuse it
    (a loop stall of 150-200 ms for every call, docs/benchmarks.md); ``serve_app`` makes
    uvicorn refuse the frame from its header."""
    process, port = await _start_server(tmp_path, how)
    try:
        async with websockets.connect(f"ws://127.0.0.1:{port}/ws", max_size=2**25, open_timeout=10) as ws:
            await ws.send(protocol.build_connected())
            await ws.send(protocol.build_start(stream_id="s-16mb", call_control_id="v3:16mb"))
            drain = asyncio.ensure_future(_discard(ws))
            message = '{"event":"media","media":{"payload":"' + "A" * 16_000_000 + '"}}'
            with contextlib.suppress(websockets.ConnectionClosed):
                await ws.send(message)
            await asyncio.wait_for(drain, 10)
            code, reason = ws.close_code, ws.close_reason
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 10)
    assert code == 1009
    if how == "serve_app":
        assert reason == "frame with 16000040 bytes exceeds limit of 262144 bytes"
    else:
        assert reason.startswith("oversized message: message of 16000040 bytes")


async def _discard(ws: websockets.ClientConnection) -> None:
    with contextlib.suppress(websockets.ConnectionClosed):
        async for _ in ws:
            pass


def test_uvicorn_config_has_the_safe_limits_and_options_win() -> None:
    config = uvicorn_config(object(), port=9, log_level="warning")
    assert config.ws_max_size == 256 * 1024
    assert config.ws_per_message_deflate is False
    assert (config.port, config.log_level) == (9, "warning")
    assert uvicorn_config(object(), ws_max_size=1000).ws_max_size == 1000
    assert callpipe.serve_app is serve_app
