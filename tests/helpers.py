"""Small helpers shared by the tests."""

from __future__ import annotations

from typing import Any

from callpipe.pipeline.frames import Frame, TextFrame
from callpipe.pipeline.processor import FrameDirection, FrameProcessor


class Recorder(FrameProcessor):
    """Records every frame with its direction, then passes it on."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.frames: list[tuple[Frame, FrameDirection]] = []

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        self.frames.append((frame, direction))
        await self.push_frame(frame, direction)

    def seen(self, kind: type[Frame] = Frame) -> list[Frame]:
        """Frames of ``kind`` in arrival order."""
        return [f for f, _ in self.frames if isinstance(f, kind)]

    def texts(self) -> list[str]:
        """The text of every text frame (LLM text, spoken words, ...)."""
        return [f.text for f, _ in self.frames if isinstance(f, TextFrame)]

    def kinds(self) -> list[type[Frame]]:
        """The frame types in arrival order."""
        return [type(f) for f, _ in self.frames]
