"""Pipecat's ``pipecat.services.openai.llm`` (re-export of :mod:`callpipe.services.openai`)."""

from callpipe.services.openai import OpenAILLMService

__all__ = ["OpenAILLMService"]
