"""``callpipe serve`` as a real process: SIGTERM drains live calls, then the process exits.

The server runs as ``python -m callpipe serve bot.py`` in a subprocess (so that uvicorn owns
the main thread and its signal handlers, as in production). A simulated caller holds a
call open while the test sends SIGTERM; everything is bounded and the process is killed
in a ``finally`` whatever happens.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from callpipe.server.background import BackgroundServer, free_port
from callpipe.server.settings import ServerSettings
from callpipe.server.tokens import issue_token
from callpipe.sim.caller import CallResult, SimulatedCaller
from callpipe.sim.fake_api import FakeTelnyxState, create_fake_telnyx_app

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

SECRET = "serve-process-secret-3kV9"
TELNYX_KEY = "KEY-serve-process-7Yq2"

# The bot speaks a tone as long as the stream URL's ``greeting`` parameter says, then
# waits for the caller (who says nothing) to hang up.
BOT = textwrap.dedent(
    """
    import numpy as np

    from callpipe.pipeline.pipeline import Pipeline
    from callpipe.pipeline.task import PipelineParams, PipelineRunner, PipelineTask
    from callpipe.runner import create_telnyx_transport
    from callpipe.sim.bots import CannedReplyProcessor


    def tone(secs, rate=8000, freq=440.0):
        t = np.arange(int(secs * rate)) / rate
        return (np.sin(2 * np.pi * freq * t) * 0.25 * 32767).astype(np.int16).tobytes()


    async def bot(runner_args):
        secs = float(runner_args.call_data["query_params"].get("greeting", "2.0"))
        transport = create_telnyx_transport(runner_args, vad=False)
        greeter = CannedReplyProcessor(tone(0.2), 8000, greeting=tone(secs))
        task = PipelineTask(
            Pipeline([transport.input(), greeter, transport.output()]),
            params=PipelineParams(audio_in_sample_rate=8000, audio_out_sample_rate=8000),
        )
        await PipelineRunner().run(task)
    """
)


async def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout}s")
        await asyncio.sleep(0.02)


class Served:
    """A ``callpipe serve`` process on 127.0.0.1:``port``."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.proc = proc
        self.port = port
        self.log = log
        self.base = f"http://127.0.0.1:{port}"
        self.tokens: list[str] = []

    def stream_url(self, greeting_secs: float) -> str:
        self.tokens.append(issue_token(SECRET))
        return f"ws://127.0.0.1:{self.port}/ws?greeting={greeting_secs}&token={self.tokens[-1]}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    async def healthz(self) -> int | None:
        try:
            async with httpx.AsyncClient(timeout=2) as http:
                return (await http.get(self.base + "/healthz")).status_code
        except httpx.HTTPError:
            return None

    async def wait_healthy(self, timeout: float = 45.0) -> None:
        deadline = time.monotonic() + timeout
        while await self.healthz() != 200:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"server not healthy within {timeout}s:\n{self.output()}")
            await asyncio.sleep(0.1)

    async def wait_exit(self, timeout: float) -> int:
        try:
            return await asyncio.to_thread(self.proc.wait, timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"server still running after {timeout}s:\n{self.output()}") from None


@contextmanager
def callpipe_serve(
    tmp_path: Path, *, grace_secs: float, dotenv: dict[str, str] | None = None
) -> Iterator[Served]:
    bot = tmp_path / "bot.py"
    bot.write_text(BOT)
    if dotenv:  # read from the working directory, like an operator's .env
        (tmp_path / ".env").write_text("".join(f"{k}={v}\n" for k, v in dotenv.items()))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k.lower() not in ServerSettings.model_fields}
    env.update(
        PUBLIC_URL=f"http://127.0.0.1:{port}",
        CALLPIPE_SECRET=SECRET,
        SHUTDOWN_GRACE_SECS=str(grace_secs),
        PYTHONUNBUFFERED="1",
    )
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "callpipe", "serve", str(bot), "--host", "127.0.0.1", "--port", str(port)],
            cwd=tmp_path,  # only the .env written here
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield Served(proc, port, log)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


async def _refused_while_draining(served: Served) -> CallResult:
    caller = SimulatedCaller(served.stream_url(0.5), max_call_secs=5.0)
    return await asyncio.wait_for(caller.run([], hang_up_after_secs=0.5), 10)


async def test_sigterm_lets_the_live_call_finish_then_exits(tmp_path: Path) -> None:
    with callpipe_serve(tmp_path, grace_secs=5.0) as served:
        await served.wait_healthy()
        caller = SimulatedCaller(served.stream_url(2.0), max_call_secs=15.0)
        run = asyncio.ensure_future(caller.run([], hang_up_after_secs=1.0))
        try:
            await wait_for(
                lambda: caller.result is not None and caller.result.bot_audio_secs >= 0.5,
                10,
                "the greeting to start playing",
            )
            served.proc.send_signal(signal.SIGTERM)
            signalled_at = time.monotonic()

            # Draining: the load balancer is told, and new calls are turned away.
            async def draining() -> bool:
                return await served.healthz() == 503

            deadline = time.monotonic() + 3
            while not await draining():
                assert time.monotonic() < deadline, "healthz never turned 503"
                await asyncio.sleep(0.05)
            refused = await _refused_while_draining(served)
            assert refused.close_code == 1013, (refused.close_code, refused.close_reason)
            assert refused.bot_audio_secs == 0
            assert not run.done()  # the live call is still going

            # The live call hears its whole greeting and ends the normal way (caller hangs up).
            result = await asyncio.wait_for(run, 15)
            assert result.closed_by == "caller"
            assert result.bot_audio_secs >= 1.9, result.bot_audio_secs
            assert result.errors == []

            code = await served.wait_exit(timeout=8.0)
            exited_after = time.monotonic() - signalled_at
            assert code == 0, served.output()
            assert exited_after < 5.0 + 1.5, exited_after  # on its own, within the grace period
        finally:
            if not run.done():
                await caller.hang_up()
                await asyncio.wait({run}, timeout=5)
    out = served.output()
    assert "draining" in out
    assert "Traceback" not in out
    assert SECRET not in out
    assert served.tokens and not any(token in out for token in served.tokens)  # redacted
    assert "token=[redacted]" in out


async def test_calls_outliving_the_grace_period_are_ended_by_the_server(tmp_path: Path) -> None:
    fake_app = create_fake_telnyx_app(TELNYX_KEY)
    fake_state: FakeTelnyxState = fake_app.state.telnyx
    fake = BackgroundServer(fake_app).start()
    # The Telnyx key only in .env (not exported): the bots' auto hang-up must still get it.
    dotenv = {"TELNYX_API_KEY": TELNYX_KEY, "TELNYX_API_BASE_URL": fake.base_url + "/v2"}
    try:
        await _outliving_call_is_ended(tmp_path, dotenv, fake_state)
    finally:
        fake.stop()


async def _outliving_call_is_ended(
    tmp_path: Path, dotenv: dict[str, str], fake_state: FakeTelnyxState
) -> None:
    with callpipe_serve(tmp_path, grace_secs=1.0, dotenv=dotenv) as served:
        await served.wait_healthy()
        caller = SimulatedCaller(served.stream_url(20.0), max_call_secs=30.0)
        run = asyncio.ensure_future(caller.run([], hang_up_after_secs=1.0))
        try:
            await wait_for(
                lambda: caller.result is not None and caller.result.bot_audio_secs >= 0.3,
                10,
                "the greeting to start playing",
            )
            served.proc.send_signal(signal.SIGTERM)
            signalled_at = time.monotonic()
            result = await asyncio.wait_for(run, 10)
            ended_after = time.monotonic() - signalled_at
            assert result.closed_by == "bot"  # the server ended it, not the caller
            assert 0.8 < ended_after < 4.0, ended_after
            assert result.bot_audio_secs < 5.0

            code = await served.wait_exit(timeout=8.0)
            assert code == 0, served.output()
            assert time.monotonic() - signalled_at < 6.0
            # Ending the call hung it up through the API (Telnyx did not know it: 422).
            hangups = fake_state.requests_to(f"/v2/calls/{caller.call_control_id}/actions/hangup", "POST")
            assert len(hangups) == 1, served.output()
            assert hangups[0].headers["authorization"] == f"Bearer {TELNYX_KEY}"
        finally:
            if not run.done():
                await caller.hang_up()
                await asyncio.wait({run}, timeout=5)
    out = served.output()
    assert "ending 1 call(s) still running" in out
    # Its record (SQLite in ./callpipe-data, the default) says the server's shutdown ended it.
    from callpipe.store.sql import SqlCallStore

    store = SqlCallStore(None, data_dir=tmp_path / "callpipe-data", background=False)
    await store.start()
    try:
        record = await store.get_call(caller.call_control_id)
    finally:
        await store.close()
    assert record is not None and (record.end_reason, record.hangup_by) == ("shutdown", "server")
    assert record.recording_path and os.path.isfile(record.recording_path)  # noqa: ASYNC240
    assert TELNYX_KEY not in out and SECRET not in out
    assert "Traceback" not in out and "Exception in ASGI application" not in out  # ended, not crashed
