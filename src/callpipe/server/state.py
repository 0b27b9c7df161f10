"""The state one callpipe app shares between its routes: live calls, readiness, limits.

Every router of :func:`callpipe.server.app.create_app` gets the app's one
:class:`ServerState` (also ``app.state.callpipe``); nothing here does I/O of its own but
the store's dial-slot query and the models' warm-up thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from callpipe.records.observer import CallObserver
from callpipe.records.sink import RecordSink
from callpipe.runner import RunnerArguments
from callpipe.server.heap import freeze_startup_heap
from callpipe.server.idempotency import IdempotencyCache
from callpipe.server.replay import ReplayGuard
from callpipe.server.settings import ServerSettings
from callpipe.store.base import CallStore
from callpipe.telnyx.api import TelnyxClient

if TYPE_CHECKING:
    from callpipe.server.control import ControlPlane

__all__ = ["ActiveCall", "BotFunction", "ServerState"]

logger = logging.getLogger("callpipe.server")

BotFunction = Callable[[RunnerArguments], Awaitable[None]]


@dataclass
class ActiveCall:
    """A live call of this process: its bot's task, its record's observer."""

    task: asyncio.Task[Any]
    call_control_id: str
    started_at: float
    ended_by_server: bool = False
    observer: CallObserver | None = None

    def end(self) -> None:
        """Cancel the call's bot on purpose (shutdown, hang-up): a normal end, not a crash."""
        self.ended_by_server = True
        self.task.cancel()


@dataclass
class ServerState:
    """Per-app state: live calls, readiness, shutdown flag, dial-out rate limiter.

    ``store`` (when set) is shared by every instance on one database; ``control`` is this
    process's internal control listener (see :mod:`callpipe.server.control`).
    """

    settings: ServerSettings
    bot: BotFunction
    telnyx: TelnyxClient | None = None
    store: CallStore | None = None  # call records and cross-instance state (None: RECORDS=off)
    record_sink: RecordSink | None = None  # where call records go, if not the store's sink
    control: ControlPlane | None = None
    calls: dict[str, ActiveCall] = field(default_factory=dict)
    ready: bool = False
    replay: ReplayGuard = field(default_factory=ReplayGuard)
    idempotency: IdempotencyCache = field(default_factory=lambda: IdempotencyCache(86400.0))
    draining: bool = False
    metrics_server: Any = None
    no_calls: asyncio.Event = field(default_factory=asyncio.Event)
    # True once every embedded model is loaded and has run once (callpipe.services.warmup);
    # readiness is 503 until then and /ws holds a new call until then.
    models_warm: bool = False
    # Set by the process-level servers (`callpipe serve`, its workers): freeze the start-up
    # heap out of full GC collections (callpipe.server.heap). Off for apps built in tests or
    # embedded in another process, whose heap is not ours to freeze.
    freeze_heap: bool = False
    _dial_tokens: float = 0.0
    _dial_refill_at: float = 0.0

    def at_capacity(self) -> bool:
        """Whether this process holds ``MAX_CALLS`` live calls (0: no limit)."""
        limit = self.settings.max_calls
        return limit > 0 and len(self.calls) >= limit

    def take_dial_token(self) -> bool:
        """In-process token bucket for dial-out: ``dial_rate_per_sec`` sustained.

        The burst is the rate, but never less than one dial: a rate below 1/s (one dial
        every few seconds) must still let a dial through once a token has refilled.
        """
        rate = self.settings.dial_rate_per_sec
        capacity = max(1.0, rate)
        now = time.monotonic()
        self._dial_tokens = min(capacity, self._dial_tokens + (now - self._dial_refill_at) * rate)
        self._dial_refill_at = now
        if self._dial_tokens >= 1.0:
            self._dial_tokens -= 1.0
            return True
        return False

    async def take_dial_slot(self) -> bool:
        """One dial-out under the rate limit: shared through the store, else per process.

        If the store cannot answer in time, the in-process bucket decides (logged): a
        slow database must not stop dial-out, at the cost of a looser shared limit.
        """
        if self.store is None:
            return self.take_dial_token()
        try:
            async with asyncio.timeout(self.settings.forward_timeout_secs):
                return await self.store.take_dial_slot(self.settings.dial_rate_per_sec)
        except Exception as exc:
            logger.warning(
                "shared dial rate limit unavailable (%s): using this instance's", type(exc).__name__
            )
            return self.take_dial_token()

    async def warm_up_models(self) -> None:
        """Load and run every registered model once, in a thread; then set ``models_warm``."""
        from callpipe.services import warmup

        await asyncio.to_thread(warmup.warm_up_models)
        self.models_warm = warmup.models_warm()
        if self.freeze_heap and not self.calls:
            freeze_startup_heap()  # the models' objects live as long as the process

    async def wait_models_warm(self, timeout: float = 120.0) -> None:
        """Hold a new call until the models are warm (free once they are)."""
        from callpipe.services import warmup

        if not self.models_warm or not warmup.models_warm():
            # Runs what is still pending (an app whose lifespan never ran, e.g. mounted in
            # another app) and waits for what the start-up task is warming.
            await asyncio.wait_for(asyncio.to_thread(warmup.warm_up_models), timeout)
            self.models_warm = warmup.models_warm()

    async def drain(self, grace_secs: float) -> None:
        """Stop taking calls; let live calls finish for ``grace_secs``, then end the rest."""
        self.draining = True
        if self.calls:
            logger.info("shutting down: waiting up to %.0fs for %d call(s)", grace_secs, len(self.calls))
            self.no_calls.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.no_calls.wait(), grace_secs)
        calls = list(self.calls.values())
        if calls:
            logger.warning("shutting down: ending %d call(s) still running", len(calls))
            for call in calls:
                if call.observer is not None:
                    call.observer.note_end("shutdown", "server")
                call.end()  # the pipeline is cancelled; auto hang-up hangs the call up
            await asyncio.wait([call.task for call in calls], timeout=10)
