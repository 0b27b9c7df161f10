"""Pipecat's ``pipecat.processors.aggregators`` paths; the aggregators live in :mod:`callpipe.services.llm`."""

__all__: list[str] = []
