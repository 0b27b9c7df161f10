"""What a callpipe app does at start-up and shutdown, around the calls it serves.

Start-up: warm the models in the background, start the internal control listener and the
metrics port, start the store, mark the app ready. Shutdown: drain the calls, then stop
the listeners and close the store (after the drain, so the calls' final records flush).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager

from fastapi import FastAPI

from callpipe.server import control
from callpipe.server.health import start_metrics_listener
from callpipe.server.heap import freeze_startup_heap, space_full_collections
from callpipe.server.state import ServerState
from callpipe.server.telnyx_auth import TelnyxRequestAuth

__all__ = ["app_lifespan", "start_operations", "stop_operations"]


def app_lifespan(
    state: ServerState, telnyx_auth: TelnyxRequestAuth
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """The FastAPI ``lifespan`` of an app serving ``state``."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Off the event loop and in the background: /livez answers while models warm up,
        # /readyz says 503 until they are (state.models_warm).
        from callpipe.services import warmup

        telnyx_auth.log_startup()
        state.models_warm = warmup.models_warm()  # already warm (another app in this process)
        warming = asyncio.create_task(state.warm_up_models())
        await start_operations(state)  # first: the store registers the internal URL at start
        if state.store is not None:
            await state.store.start()
        if state.freeze_heap:
            freeze_startup_heap()  # the store and what is loaded so far; again once models are warm
            space_full_collections()  # what calls leave is freed by reference counting
        state.ready = True
        yield
        state.ready = False
        if not warming.done():
            warming.cancel()
        await state.drain(0.0)
        await stop_operations(state)
        if state.store is not None:
            await state.store.close()  # after the drain: the calls' final records are flushed
        if state.telnyx is not None:
            await state.telnyx.aclose()

    return lifespan


async def start_operations(state: ServerState) -> None:
    """The internal control listener and the metrics port, before the first call."""
    settings = state.settings
    secret = settings.secret("callpipe_secret")
    if secret and state.store is not None:
        # Without a store nobody can look up where a call lives: nothing to forward to.
        state.control = control.ControlPlane(
            state,
            secret,
            host=settings.internal_host,
            port=control.worker_port(settings.internal_port, os.environ.get("CALLPIPE_WORKER")),
            advertised_url=settings.internal_url,
            timeout_secs=settings.forward_timeout_secs,
        )
        await state.control.start()
        state.store.set_internal_url(state.control.url)  # in the instances table with the next heartbeat
    if settings.metrics_port is not None and not _is_worker():
        state.metrics_server = start_metrics_listener(settings.metrics_host, settings.metrics_port)


async def stop_operations(state: ServerState) -> None:
    """Stop what :func:`start_operations` started."""
    if state.control is not None:
        await state.control.stop()
    if state.metrics_server is not None:
        state.metrics_server.shutdown()
        state.metrics_server.server_close()


def _is_worker() -> bool:
    # Under ``--workers`` the supervisor serves METRICS_PORT for the whole box.
    return bool(os.environ.get("CALLPIPE_WORKER"))
