"""Pipecat's ``pipecat.processors.aggregators.llm_context`` (re-export of :mod:`callpipe.services.llm`)."""

from callpipe.services.llm import LLMContext

__all__ = ["LLMContext"]
