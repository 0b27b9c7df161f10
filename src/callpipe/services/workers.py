"""Shared model workers: a few threads per embedded model, fair to every call, bounded.

Every call of a process shares one loaded Whisper model and one Piper voice. Their work
(a few hundred milliseconds of CPU per utterance or sentence) runs on a
:class:`ModelWorkers` pool instead of the event loop:

* **Sized to the cores**: :func:`default_workers` gives each model about half the cores
  (one thread each on a 2-core box), so speech recognition and synthesis of different
  calls run at the same time and a core is left for the event loop and the VAD.
* **Fair**: jobs wait in one queue per call (the call id of :mod:`callpipe.log`) and the
  workers take them round-robin across calls, so a call with three sentences queued does
  not make another call's first sentence wait behind all of them.
* **Bounded**: at most ``max_pending`` jobs wait; beyond that :meth:`ModelWorkers.run`
  fails at once with :class:`ModelOverloaded` instead of growing a backlog.
* **Deadlines**: a job that has not *started* within its ``deadline`` is dropped with
  :class:`ModelDeadline` (the service then plays a pre-synthesized filler line rather
  than leaving the caller in silence).
* **Cancellation**: a job whose awaiting task is cancelled (barge-in, a speculative
  transcript thrown away) is skipped if it has not started yet.

Threads, not asyncio: the pool is shared by every event loop of the process (the demo's
simulated caller and its server run on two loops in two threads).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from callpipe.log import call_id

T = TypeVar("T")


class ModelOverloaded(RuntimeError):
    """The model's queue is full: the job was refused without waiting."""


class ModelDeadline(TimeoutError):
    """The job could not start before its deadline and was dropped."""


def default_workers() -> int:
    """Threads per model pool: half the cores, at least one."""
    return max(1, (os.cpu_count() or 1) // 2)


@dataclass(slots=True)
class ModelResult(Generic[T]):
    """A job's value and how long it waited for a worker (seconds)."""

    value: T
    queue_wait: float
    run_secs: float


@dataclass(slots=True)
class _Job:
    fn: Callable[[], Any]
    future: concurrent.futures.Future[ModelResult[Any]]
    enqueued_at: float
    deadline_at: float | None
    key: str


@dataclass
class PoolStats:
    """Counters of one pool (tests, logs)."""

    completed: int = 0
    refused: int = 0
    expired: int = 0
    cancelled: int = 0
    max_queue_wait: float = 0.0
    waits: collections.deque[float] = field(default_factory=lambda: collections.deque(maxlen=256))


class ModelWorkers:
    """A fair, bounded thread pool for one model (see the module docstring)."""

    def __init__(self, name: str, *, workers: int | None = None, max_pending: int | None = None) -> None:
        self.name = name
        self.workers = workers or default_workers()
        self.max_pending = max_pending if max_pending is not None else 8 * self.workers
        self.stats = PoolStats()
        self._queues: collections.OrderedDict[str, collections.deque[_Job]] = collections.OrderedDict()
        self._pending = 0
        self._cond = threading.Condition()
        self._threads: list[threading.Thread] = []

    @property
    def pending(self) -> int:
        """Jobs waiting for a worker."""
        return self._pending

    def submit(
        self, fn: Callable[[], T], *, deadline: float | None = None, key: str | None = None
    ) -> concurrent.futures.Future[ModelResult[T]]:
        """Queue ``fn`` for the call ``key`` (default: the current call id); thread-safe."""
        future: concurrent.futures.Future[ModelResult[T]] = concurrent.futures.Future()
        now = time.monotonic()
        job = _Job(fn, future, now, None if deadline is None else now + deadline, key or call_id.get())
        with self._cond:
            if self._pending >= self.max_pending:
                self.stats.refused += 1
                raise ModelOverloaded(f"{self.name}: {self._pending} jobs already waiting")
            self._queues.setdefault(job.key, collections.deque()).append(job)
            self._pending += 1
            self._start_threads()
            self._cond.notify()
        return future

    async def run(self, fn: Callable[[], T], *, deadline: float | None = None) -> ModelResult[T]:
        """Run ``fn`` on a worker and await it; cancelling the await drops a queued job."""
        future = self.submit(fn, deadline=deadline)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            future.cancel()
            raise

    def _start_threads(self) -> None:
        while len(self._threads) < self.workers:
            thread = threading.Thread(
                target=self._work, name=f"{self.name}-{len(self._threads)}", daemon=True
            )
            self._threads.append(thread)
            thread.start()

    def _next(self) -> _Job:
        with self._cond:
            while not self._pending:
                self._cond.wait()
            # Round-robin: the first call in line gives one job, then goes to the back.
            key, queue = next(iter(self._queues.items()))
            job = queue.popleft()
            if queue:
                self._queues.move_to_end(key)
            else:
                del self._queues[key]
            self._pending -= 1
            return job

    def _work(self) -> None:
        while True:
            job = self._next()
            started = time.monotonic()
            if not job.future.set_running_or_notify_cancel():
                self.stats.cancelled += 1
                continue
            if job.deadline_at is not None and started > job.deadline_at:
                self.stats.expired += 1
                job.future.set_exception(
                    ModelDeadline(f"{self.name}: waited {started - job.enqueued_at:.2f}s for a worker")
                )
                continue
            wait = started - job.enqueued_at
            try:
                value = job.fn()
            except BaseException as exc:
                job.future.set_exception(exc)
                continue
            self.stats.completed += 1
            self.stats.waits.append(wait)
            self.stats.max_queue_wait = max(self.stats.max_queue_wait, wait)
            job.future.set_result(ModelResult(value, wait, time.monotonic() - started))
