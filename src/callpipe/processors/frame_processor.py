"""Pipecat's ``pipecat.processors.frame_processor`` (re-export of :mod:`callpipe.pipeline.processor`)."""

from callpipe.pipeline.processor import FrameDirection, FrameProcessor

__all__ = ["FrameDirection", "FrameProcessor"]
