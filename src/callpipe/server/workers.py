"""``callpipe serve --workers N``: N processes on one port, each with its own event loop.

The supervisor (the process the operator started) binds the port once and spawns N
workers that share the listening socket; the kernel spreads new connections over them.
Each worker is a fresh interpreter (``spawn``): it builds its app with
:func:`worker_app` from what the supervisor put in its environment (the bot spec in
``CALLPIPE_BOT``, every setting as usual from the environment and ``.env``), so models
load once per worker and nothing is shared by accident.

Signals: the workers sit in their own process group, so a terminal's Ctrl-C reaches
only the supervisor. The supervisor forwards the first SIGTERM/SIGINT to every worker
(each drains its calls exactly like a single ``callpipe serve``), and a second one too
(each then stops at once). A worker that dies on its own is replaced; one that dies
before it ever served stops the whole server (a broken bot would only die again).

Metrics: the supervisor points ``PROMETHEUS_MULTIPROC_DIR`` at a temporary directory
before spawning (see :mod:`callpipe.metrics`), and serves ``METRICS_PORT`` itself.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

import uvicorn
from fastapi import FastAPI

from callpipe.server.app import ServerState, create_app
from callpipe.server.serve import (
    GracefulServer,
    export_bot_environment,
    load_bot,
    redact_uvicorn_logs,
    uvicorn_options,
)
from callpipe.server.settings import ServerSettings

__all__ = ["BOT_ENV", "WORKER_ENV", "run_workers", "worker_app"]

logger = logging.getLogger("callpipe.server")

BOT_ENV = "CALLPIPE_BOT"  # the bot spec (file or module[:function]); empty: the built-in assistant
WORKER_ENV = "CALLPIPE_WORKER"  # set in workers; the worker's index
EXTRA_STOP_SECS = 15.0  # beyond SHUTDOWN_GRACE_SECS before the supervisor kills a worker

_state: ServerState | None = None


def worker_app() -> FastAPI:
    """The uvicorn app factory a worker runs: the bot and settings from the environment."""
    global _state
    spec = os.environ.get(BOT_ENV, "")
    if spec:
        bot = load_bot(spec)
    else:
        from callpipe.services.assistant import bot as assistant_bot
        from callpipe.services.assistant import preload_models

        preload_models()
        bot = assistant_bot
    settings = ServerSettings()
    app = create_app(bot, settings)
    app.state.callpipe.freeze_heap = True
    export_bot_environment(settings)
    _state = app.state.callpipe
    logger.info("worker %s (pid %d) built its app", os.environ.get(WORKER_ENV), os.getpid())
    return app


class _WorkerServer(GracefulServer):
    """A worker's graceful server: its state exists once the app factory has run."""

    def __init__(self, config: uvicorn.Config, grace_secs: float, started: Any) -> None:
        super().__init__(config, None, grace_secs)
        self.started_event = started

    def current_state(self) -> ServerState | None:
        """The state :func:`worker_app` built in this process."""
        return _state

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """uvicorn's start-up, then tell the supervisor this worker serves."""
        await super().startup(sockets)
        if self.started:
            self.started_event.set()


def _worker_main(
    config: uvicorn.Config, sock: socket.socket, grace_secs: float, level: int, started: Any
) -> None:
    """A worker process's entry point (module level, so ``spawn`` can pickle it)."""
    from callpipe.log import configure_logging

    os.setpgrp()  # out of the terminal's process group: signals come from the supervisor
    configure_logging(level)
    config.configure_logging()
    redact_uvicorn_logs()
    server = _WorkerServer(config, grace_secs, started)
    server.run(sockets=[sock])


@dataclass
class _Worker:
    index: int
    process: BaseProcess
    started: Any  # a multiprocessing Event the worker sets once it serves


class Supervisor:
    """Spawns, watches and stops the workers (see the module docstring)."""

    def __init__(self, config: uvicorn.Config, workers: int, grace_secs: float, level: int) -> None:
        self.config = config
        self.count = workers
        self.grace_secs = grace_secs
        self.level = level
        self.sock = config.bind_socket()
        self.workers: list[_Worker] = []
        self.signals: list[int] = []
        self.stopping_since: float | None = None
        self.exit_code = 0
        self._context = multiprocessing.get_context("spawn")

    def _spawn(self, index: int) -> _Worker:
        os.environ[WORKER_ENV] = str(index)
        started = self._context.Event()
        process = self._context.Process(
            target=_worker_main,
            args=(self.config, self.sock, self.grace_secs, self.level, started),
            name=f"callpipe-worker-{index}",
        )
        process.start()
        logger.info("started worker %d (pid %s)", index, process.pid)
        return _Worker(index, process, started)

    def run(self) -> int:
        """Run until every worker has exited after a signal (or start-up failed)."""
        multiprocessing.allow_connection_pickling()  # the listening socket goes to each worker
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            self.workers = [self._spawn(index) for index in range(self.count)]
            while self.workers:
                self._handle_signals()
                self._reap()
                time.sleep(0.1)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.sock.close()
        return self.exit_code

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        self.signals.append(sig)

    def _handle_signals(self) -> None:
        while self.signals:
            sig = self.signals.pop(0)
            if self.stopping_since is None:
                self.stopping_since = time.monotonic()
                logger.info("signal %s: draining every worker (send again to stop now)", sig)
            else:
                logger.info("signal %s again: stopping every worker now", sig)
            self._signal_all(signal.SIGTERM)
        if (
            self.stopping_since is not None
            and time.monotonic() - self.stopping_since > self.grace_secs + EXTRA_STOP_SECS
        ):
            logger.warning("workers still running after the grace period: killing them")
            self._signal_all(signal.SIGKILL)

    def _signal_all(self, sig: int) -> None:
        for worker in self.workers:
            if worker.process.pid is not None and worker.process.is_alive():
                os.kill(worker.process.pid, sig)

    def _reap(self) -> None:
        from callpipe.metrics import mark_process_dead

        for position, worker in enumerate(list(self.workers)):
            if worker.process.is_alive():
                continue
            worker.process.join()
            pid, code = worker.process.pid, worker.process.exitcode
            if pid is not None:
                mark_process_dead(pid)  # its live gauges leave the box's totals
            self.workers.remove(worker)
            if self.stopping_since is not None:
                logger.info("worker %d (pid %s) stopped", worker.index, pid)
                continue
            if not worker.started.is_set():
                # It never served: the bot, the settings or the port are broken, and a
                # replacement would only fail the same way.
                logger.error(
                    "worker %d (pid %s) failed at start-up (exit %s): stopping", worker.index, pid, code
                )
                self.exit_code = 1
                self.stopping_since = time.monotonic()
                self._signal_all(signal.SIGTERM)
                continue
            logger.error("worker %d (pid %s) died (exit %s): starting another", worker.index, pid, code)
            self.workers.insert(position, self._spawn(worker.index))


def run_workers(
    spec: str | None,
    *,
    host: str,
    port: int,
    workers: int,
    settings: ServerSettings,
    level: int = logging.INFO,
    log_level: str = "info",
) -> int:
    """Serve ``spec`` (``None``: the built-in assistant) with ``workers`` processes; the exit code.

    ``settings`` are the supervisor's (checked before any worker starts); each worker
    reads its own from the same environment.
    """
    settings.check_for_serving()
    metrics_dir = tempfile.mkdtemp(prefix="callpipe-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    os.environ[BOT_ENV] = spec or ""
    if settings.public_url:
        os.environ["PUBLIC_URL"] = settings.public_url  # a --public-url override reaches the workers
    options: dict[str, Any] = uvicorn_options(host, port, log_level)
    config = uvicorn.Config("callpipe.server.workers:worker_app", factory=True, **options)
    metrics_server = None
    try:
        if settings.metrics_port is not None:
            from callpipe.server.health import start_metrics_listener

            metrics_server = start_metrics_listener(settings.metrics_host, settings.metrics_port)
        return Supervisor(config, workers, settings.shutdown_grace_secs, level).run()
    finally:
        if metrics_server is not None:
            metrics_server.shutdown()
        shutil.rmtree(metrics_dir, ignore_errors=True)
