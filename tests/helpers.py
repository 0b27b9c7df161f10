"""Small helpers shared by the tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Self

from callpipe.pipeline import Pipeline, PipelineParams, PipelineTask
from callpipe.pipeline.frames import EndFrame, ErrorFrame, Frame, StartFrame, TextFrame
from callpipe.pipeline.processor import FrameDirection, FrameProcessor

DEADLINE = 5.0


class Recorder(FrameProcessor):
    """Records every frame with its direction and arrival time, then passes it on."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.frames: list[tuple[Frame, FrameDirection, float]] = []

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        self.frames.append((frame, direction, time.monotonic()))
        await self.push_frame(frame, direction)

    def seen(self, kind: type[Frame] = Frame, direction: FrameDirection | None = None) -> list[Any]:
        """Frames of ``kind`` (travelling in ``direction``, if given) in arrival order."""
        return [f for f, d, _ in self.frames if isinstance(f, kind) and (direction is None or d is direction)]

    def texts(self) -> list[str]:
        """The text of every text frame (LLM text, spoken words, ...)."""
        return [f.text for f, _, _ in self.frames if isinstance(f, TextFrame)]

    def kinds(self) -> list[type[Frame]]:
        """The frame types in arrival order."""
        return [type(f) for f, _, _ in self.frames]

    def arrival(self, frame: Frame) -> float:
        """When ``frame`` arrived here (monotonic seconds)."""
        return next(t for f, _, t in self.frames if f is frame)


async def wait_until(predicate: Callable[[], bool], timeout: float = DEADLINE) -> None:
    """Poll ``predicate`` until it holds; AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


class ServiceHarness:
    """One service between two recorders, ``[up, service, down]``, in a running PipelineTask."""

    def __init__(self, service: FrameProcessor, params: PipelineParams) -> None:
        self.service = service
        self.up = Recorder(name="up")
        self.down = Recorder(name="down")
        self.task = PipelineTask(
            Pipeline([self.up, service, self.down]), params=params, idle_timeout_secs=None
        )
        self.run: asyncio.Task[None] | None = None

    async def start(self) -> Self:
        """Run the task and wait until the StartFrame went through."""
        self.run = asyncio.ensure_future(self.task.run())
        await wait_until(lambda: bool(self.down.seen(StartFrame)))
        return self

    def errors(self) -> list[ErrorFrame]:
        """ErrorFrames the service pushed upstream."""
        return self.up.seen(ErrorFrame, FrameDirection.UPSTREAM)

    async def end(self) -> None:
        """End the pipeline gracefully and wait for it."""
        assert self.run is not None
        await self.task.queue_frame(EndFrame())
        await asyncio.wait_for(self.run, DEADLINE)

    async def cancel(self) -> None:
        """Cancel the pipeline (if still running) and wait for it."""
        assert self.run is not None
        if not self.run.done():
            await self.task.cancel("test over")
            await asyncio.wait_for(self.run, DEADLINE)
