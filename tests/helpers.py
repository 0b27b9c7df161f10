"""Small helpers shared by the tests."""

from __future__ import annotations

import time
from typing import Any

from callpipe.pipeline.frames import Frame, TextFrame
from callpipe.pipeline.processor import FrameDirection, FrameProcessor


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
