"""Pipecat 1.4's worker API: :class:`PipelineWorker` and :class:`WorkerRunner`.

Pipecat 1.4 renamed ``PipelineTask``/``PipelineRunner`` to ``PipelineWorker``/``WorkerRunner``
(``await runner.add_workers(worker)`` then ``await runner.run()``). Here a worker *is* a
:class:`~callpipe.pipeline.task.PipelineTask` (one call's pipeline), and the runner runs
the workers it was given side by side until all have ended.
"""

from __future__ import annotations

import asyncio
import logging

from callpipe.pipeline.task import PipelineParams, PipelineRunner, PipelineTask

__all__ = ["PipelineParams", "PipelineWorker", "WorkerRunner"]

logger = logging.getLogger("callpipe.pipeline")


class PipelineWorker(PipelineTask):
    """Pipecat 1.4's name for a :class:`PipelineTask` (same constructor, same methods)."""


class WorkerRunner:
    """Runs workers until they have all ended (Pipecat 1.4's ``WorkerRunner``).

    ``handle_sigint`` cancels every worker on Ctrl-C (only when running in the main
    thread, as :class:`PipelineRunner` does). Adding a worker while the runner runs starts
    it at once.
    """

    def __init__(self, *, handle_sigint: bool = False, name: str | None = None) -> None:
        self.name = name or "WorkerRunner"
        self._runner = PipelineRunner(handle_sigint=handle_sigint, name=self.name)
        self._workers: list[PipelineTask] = []
        self._running: set[asyncio.Task[None]] = set()
        self._started = False

    @property
    def workers(self) -> list[PipelineTask]:
        """The workers added so far."""
        return list(self._workers)

    async def add_workers(self, *workers: PipelineTask) -> None:
        """Add workers (a :class:`PipelineWorker` or :class:`PipelineTask` each)."""
        for worker in workers:
            if not isinstance(worker, PipelineTask):
                raise TypeError(f"WorkerRunner runs PipelineWorker objects, not {type(worker).__name__}")
            self._workers.append(worker)
            if self._started:
                self._start(worker)

    def _start(self, worker: PipelineTask) -> None:
        task = asyncio.ensure_future(self._runner.run(worker))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def run(self) -> None:
        """Run every added worker until all have ended; cancelled, it cancels them."""
        if self._started:
            raise RuntimeError(f"{self.name} is already running")
        if not self._workers:
            raise RuntimeError(
                "WorkerRunner.run() needs a worker: call `await runner.add_workers(worker)` first"
            )
        self._started = True
        for worker in self._workers:
            self._start(worker)
        errors: list[BaseException] = []
        try:
            while self._running:
                done, _ = await asyncio.wait(set(self._running))
                errors.extend(t.exception() for t in done if not t.cancelled() and t.exception())  # type: ignore[misc]
        except asyncio.CancelledError:
            for task in list(self._running):
                task.cancel()
            raise
        if errors:
            raise errors[0]

    async def cancel(self) -> None:
        """Cancel every worker."""
        for worker in self._workers:
            await worker.cancel()
