"""Real ``callpipe serve`` processes for multi-instance tests, and what they talk to.

Each process runs ``python -m callpipe serve`` in a subprocess with its own environment
(so that uvicorn owns the main thread and the signal handlers, as in production), logs
to a file in the test's directory, and is killed in a ``finally`` whatever happens.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx

from callpipe.server.background import free_port
from callpipe.server.settings import ServerSettings
from callpipe.server.tokens import issue_token

SECRET = "instances-process-secret-7Hq2"
API_KEY = "instances-api-key-Pw31"

# Speaks a tone for ``greeting`` seconds (a stream URL parameter), then waits for the
# caller to hang up. Each call writes which process served it to $PID_DIR/<call id>.
BOT = textwrap.dedent(
    """
    import os
    from pathlib import Path

    import numpy as np

    from callpipe.pipeline.pipeline import Pipeline
    from callpipe.pipeline.task import PipelineParams, PipelineRunner, PipelineTask
    from callpipe.runner import create_telnyx_transport
    from callpipe.sim.bots import CannedReplyProcessor


    def tone(secs, rate=8000, freq=440.0):
        t = np.arange(int(secs * rate)) / rate
        return (np.sin(2 * np.pi * freq * t) * 0.25 * 32767).astype(np.int16).tobytes()


    async def bot(runner_args):
        ccid = runner_args.call_data["call_control_id"]
        pids = Path(os.environ["PID_DIR"])
        (pids / ccid.replace(":", "_")).write_text(str(os.getpid()))
        secs = float(runner_args.call_data["query_params"].get("greeting", "0.3"))
        transport = create_telnyx_transport(runner_args, vad=False)
        greeter = CannedReplyProcessor(tone(0.2), 8000, greeting=tone(secs))
        task = PipelineTask(
            Pipeline([transport.input(), greeter, transport.output()]),
            params=PipelineParams(audio_in_sample_rate=8000, audio_out_sample_rate=8000),
        )
        await PipelineRunner().run(task)
    """
)


class Served:
    """One ``callpipe serve`` process (a supervisor under ``--workers``) on 127.0.0.1:``port``."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int, log: Path, pid_dir: Path) -> None:
        self.proc = proc
        self.port = port
        self.log = log
        self.pid_dir = pid_dir
        self.base = f"http://127.0.0.1:{port}"
        self.ws = f"ws://127.0.0.1:{port}/ws"

    def stream_url(self, ccid: str, greeting_secs: float = 0.3) -> str:
        """A signed stream URL for call ``ccid`` on this process."""
        return f"{self.ws}?greeting={greeting_secs}&token={issue_token(SECRET, call_id=ccid)}"

    def served_by(self, ccid: str) -> int | None:
        """The pid of the process whose bot ran ``ccid`` (``None`` if none did yet)."""
        path = self.pid_dir / ccid.replace(":", "_")
        return int(path.read_text()) if path.exists() and path.read_text() else None

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    async def get(self, path: str, **kwargs: Any) -> httpx.Response:
        async with httpx.AsyncClient(base_url=self.base, timeout=5) as http:
            return await http.get(path, **kwargs)

    async def metrics(self) -> dict[str, float]:
        """``/metrics`` as ``{'name{labels}': value}``."""
        response = await self.get("/metrics", headers={"Authorization": f"Bearer {API_KEY}"})
        assert response.status_code == 200, response.text
        return parse_metrics(response.text)

    async def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if (await self.get("/readyz")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"server not ready within {timeout}s:\n{self.output()}")
            await asyncio.sleep(0.1)

    async def wait_workers(self, count: int, timeout: float = 120.0) -> None:
        """Wait until ``count`` workers have finished starting (their apps accept calls).

        ``/readyz`` answers from whichever worker accepts the connection, so one ready
        worker is not all of them; uvicorn logs each worker's start-up.
        """
        deadline = time.monotonic() + timeout
        while self.output().count("Application startup complete") < count:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{count} workers did not start:\n{self.output()}")
            await asyncio.sleep(0.1)
        await self.wait_ready(timeout)

    def terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    async def wait_exit(self, timeout: float) -> int:
        try:
            return await asyncio.to_thread(self.proc.wait, timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"server still running after {timeout}s:\n{self.output()}") from None


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text exposition as a flat dict of sample -> value (comments skipped)."""
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


@contextmanager
def callpipe_serve(
    tmp_path: Path, *, workers: int = 1, env: dict[str, str] | None = None, name: str | None = None
) -> Iterator[Served]:
    """Start ``callpipe serve bot.py`` (``workers`` processes) and stop it afterwards."""
    name = name or f"serve-{uuid.uuid4().hex[:6]}"
    bot = tmp_path / "bot.py"
    if not bot.exists():
        bot.write_text(BOT)
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir(exist_ok=True)
    port = free_port()
    environment = {k: v for k, v in os.environ.items() if k.lower() not in ServerSettings.model_fields}
    environment.pop("PROMETHEUS_MULTIPROC_DIR", None)
    environment.update(
        PUBLIC_URL=f"http://127.0.0.1:{port}",
        CALLPIPE_SECRET=SECRET,
        CALLPIPE_API_KEY=API_KEY,
        SHUTDOWN_GRACE_SECS="10",
        PID_DIR=str(pid_dir),
        PYTHONUNBUFFERED="1",
    )
    environment.update(env or {})
    log = tmp_path / f"{name}.log"
    command = [
        sys.executable,
        "-m",
        "callpipe",
        "serve",
        str(bot),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    if workers > 1:
        command += ["--workers", str(workers)]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command,
            cwd=tmp_path,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield Served(proc, port, log, pid_dir)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


@contextmanager
def several(tmp_path: Path, count: int, **kwargs: Any) -> Iterator[list[Served]]:
    """``count`` servers started together (their start-up overlaps)."""
    with ExitStack() as stack:
        yield [
            stack.enter_context(callpipe_serve(tmp_path, name=f"serve-{i}", **kwargs)) for i in range(count)
        ]


def webhook_body(event_type: str, ccid: str, **payload: Any) -> bytes:
    """A Telnyx webhook envelope for ``ccid``."""
    envelope = {
        "data": {
            "record_type": "event",
            "event_type": event_type,
            "id": str(uuid.uuid4()),
            "occurred_at": "2024-01-01T00:00:00.000000Z",
            "payload": {"call_control_id": ccid, **payload},
        },
        "meta": {"attempt": 1, "delivered_to": "http://example/webhooks/telnyx"},
    }
    return json.dumps(envelope).encode()
