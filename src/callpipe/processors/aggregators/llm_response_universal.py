"""Pipecat's ``pipecat.processors.aggregators.llm_response_universal`` (re-export of :mod:`callpipe.services.llm`)."""

from callpipe.services.llm import (
    LLMAssistantAggregator,
    LLMAssistantAggregatorParams,
    LLMContextAggregatorPair,
    LLMUserAggregator,
    LLMUserAggregatorParams,
)

__all__ = [
    "LLMAssistantAggregator",
    "LLMAssistantAggregatorParams",
    "LLMContextAggregatorPair",
    "LLMUserAggregator",
    "LLMUserAggregatorParams",
]
