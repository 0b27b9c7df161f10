"""Frames, processors, pipelines and the task that runs one call's pipeline."""

from callpipe.pipeline.pipeline import Pipeline
from callpipe.pipeline.processor import FrameDirection, FrameProcessor
from callpipe.pipeline.task import PipelineParams, PipelineRunner, PipelineTask

__all__ = ["FrameDirection", "FrameProcessor", "Pipeline", "PipelineParams", "PipelineRunner", "PipelineTask"]
