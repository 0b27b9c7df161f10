"""Pipecat 1.4's ``pipecat.workers`` paths; the worker API lives in :mod:`callpipe.pipeline.worker`."""

__all__: list[str] = []
