"""Pipecat 1.4's ``pipecat.workers.runner`` (re-export of :mod:`callpipe.pipeline.worker`)."""

from callpipe.pipeline.worker import WorkerRunner

__all__ = ["WorkerRunner"]
