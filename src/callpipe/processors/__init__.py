"""``from callpipe.processors import FrameProcessor, FrameDirection`` (Pipecat-style import path)."""

from callpipe.pipeline.processor import EventHandlerMixin, FrameDirection, FrameProcessor

__all__ = ["EventHandlerMixin", "FrameDirection", "FrameProcessor"]
