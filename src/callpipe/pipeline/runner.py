"""Pipecat's ``pipecat.pipeline.runner`` (re-export of :mod:`callpipe.pipeline.task`)."""

from callpipe.pipeline.task import PipelineRunner

__all__ = ["PipelineRunner"]
