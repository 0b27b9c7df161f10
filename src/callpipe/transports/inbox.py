"""A call's inbox: where events from outside the call's own tasks enter its pipeline.

Processor code must run in its own call's task. Several things happen elsewhere: the
VAD batcher is a timer shared by every call on the loop, the output clock is one task
for all calls, webhooks arrive in an HTTP request's task, watchdogs are timer callbacks.
Running processors there broke them (``asyncio.timeout`` in a processor after the output
cancelled the shared clock task; from a timer callback it raised "Timeout should be used
inside a task") and one call's slow processor held every other call's audio.

So each of those only *posts* a coroutine here, and one small task per call (started in
the call's context when its pipeline starts) runs them one after the other, in the order
they were posted. That also gives processors a defined order of arrival: a VAD start, the
words released as they play and a webhook's frame come in the order they happened.
The 20 ms audio path does not use the inbox: the receive task is already the call's own.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Coroutine
from typing import Any

from callpipe import metrics

logger = logging.getLogger("callpipe.transports")

# Events waiting for a call's processors. A healthy call has a handful at most; a call
# whose processor is stuck stops taking more rather than growing without end.
MAX_PENDING = 512


class CallInbox:
    """Runs posted coroutines one at a time, in order, in the call's own task."""

    def __init__(self, name: str, *, max_pending: int = MAX_PENDING) -> None:
        self.name = name
        self.max_pending = max_pending
        self._pending: collections.deque[Coroutine[Any, Any, Any]] = collections.deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.dropped = 0

    def start(self) -> None:
        """Start the inbox task in the current context (the call's); idempotent."""
        if self._task is None and not self._closed:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"{self.name}:inbox")

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The task that runs the posted coroutines (None before :meth:`start`)."""
        return self._task

    @property
    def idle(self) -> bool:
        """True when nothing is pending or running."""
        return self._idle.is_set()

    def post(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run ``coro`` in the call's task after everything posted before it."""
        if self._closed:
            coro.close()
            return
        if len(self._pending) >= self.max_pending:
            coro.close()
            self.dropped += 1
            metrics.REGISTRY.error("inbox_full")
            if self.dropped == 1:
                logger.error(
                    "%s: %d events wait for this call's processors (one is stuck?); dropping new ones",
                    self.name,
                    len(self._pending),
                )
            return
        self._pending.append(coro)
        self._idle.clear()
        self._wake.set()

    async def wait_idle(self) -> None:
        """Wait until everything posted so far has run (at once when called from the inbox itself)."""
        if self._task is None or asyncio.current_task() is self._task:
            return
        await self._idle.wait()

    async def _run(self) -> None:
        pending = self._pending
        try:
            while not self._closed:
                await self._wake.wait()
                self._wake.clear()
                while pending:
                    coro = pending.popleft()
                    try:
                        await coro
                    except asyncio.CancelledError:
                        raise
                    except Exception:
                        logger.exception("%s: an event failed in the call's pipeline", self.name)
                self._idle.set()
        finally:
            self._task = None  # the task refers to this inbox: no cycle once it has ended

    def close(self) -> None:
        """Drop what is pending and stop the task (unless it is the one calling)."""
        self._closed = True
        while self._pending:
            self._pending.popleft().close()
        self._idle.set()
        task = self._task
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()
