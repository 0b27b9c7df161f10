"""A pipeline: processors linked in a row, itself usable as one processor."""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable, Sequence

from callpipe.pipeline.frames import Frame
from callpipe.pipeline.processor import FrameDirection, FrameProcessor


async def _nowhere(frame: Frame, direction: FrameDirection) -> None:
    """Where a released pipeline's ends forward to."""


class _Edge(FrameProcessor):
    """One end of a pipeline: forwards what reaches it to a callback (no queue)."""

    def __init__(self, name: str, forward: Callable[[Frame, FrameDirection], Awaitable[None]]) -> None:
        super().__init__(name=name)
        self._forward = forward

    async def queue_frame(self, frame: Frame, direction: FrameDirection = FrameDirection.DOWNSTREAM) -> None:
        await self._forward(frame, direction)

    def _release(self) -> None:
        super()._release()
        self._forward = _nowhere  # a bound method of the pipeline: a cycle


class Pipeline(FrameProcessor):
    """Processors linked in order: ``Pipeline([transport.input(), ..., transport.output()])``.

    Frames pushed downstream into the pipeline enter its first processor; frames leaving
    its last processor continue downstream of the pipeline (and the same upstream), so a
    pipeline nests inside another like any processor.
    """

    def __init__(self, processors: Sequence[FrameProcessor], *, name: str | None = None) -> None:
        super().__init__(name=name)
        if not processors:
            raise ValueError("a Pipeline needs at least one processor")
        self._processors = list(processors)
        self._source = _Edge(f"{self.name}:source", self._leave_upstream)
        self._sink = _Edge(f"{self.name}:sink", self._leave_downstream)
        chain: list[FrameProcessor] = [self._source, *self._processors, self._sink]
        for upstream, downstream in itertools.pairwise(chain):
            upstream.link(downstream)

    @property
    def processors(self) -> list[FrameProcessor]:
        """The processors directly in this pipeline."""
        return list(self._processors)

    def processors_within(self) -> list[FrameProcessor]:
        """Every processor in this pipeline, nested pipelines flattened."""
        result: list[FrameProcessor] = [self]
        for processor in self._processors:
            result.extend(processor.processors_within())
        return result

    def _release(self) -> None:
        super()._release()
        self._source._release()
        self._sink._release()

    async def queue_frame(self, frame: Frame, direction: FrameDirection = FrameDirection.DOWNSTREAM) -> None:
        # A pipeline does no work of its own: hand the frame straight to the right end.
        if direction is FrameDirection.DOWNSTREAM:
            await self._source.push_frame(frame, direction)
        else:
            await self._sink.push_frame(frame, direction)

    async def _leave_downstream(self, frame: Frame, direction: FrameDirection) -> None:
        await self.push_frame(frame, FrameDirection.DOWNSTREAM)

    async def _leave_upstream(self, frame: Frame, direction: FrameDirection) -> None:
        await self.push_frame(frame, FrameDirection.UPSTREAM)
