"""The conversation an LLM answers: its messages, the tools on offer, and the frames that ask for a reply.

Plain data with no I/O: :mod:`callpipe.services.llm_aggregators` fills the context and
:class:`~callpipe.services.llm.LLMService` answers it. Re-exported by
:mod:`callpipe.services.llm`, the public import path.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from callpipe import metrics
from callpipe.pipeline.frames import DataFrame
from callpipe.services.context_window import trim_messages

logger = logging.getLogger("callpipe.services")

Message = dict[str, Any]


@dataclass
class FunctionSchema:
    """A tool the LLM may call: name, description and JSON-schema parameters."""

    name: str
    description: str
    properties: dict[str, Any] = field(default_factory=dict)
    required: list[str] = field(default_factory=list)

    def to_openai(self) -> dict[str, Any]:
        """The OpenAI ``tools`` entry."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": {"type": "object", "properties": self.properties, "required": self.required},
            },
        }


class LLMContext:
    """The conversation: OpenAI-style messages plus the tools on offer.

    Bounded: past ``max_messages`` messages or ``max_chars`` characters the oldest
    non-system turns are dropped (logged, counted as ``llm_context_trimmed``); ``None``
    turns a limit off.
    """

    def __init__(
        self,
        messages: list[Message] | None = None,
        tools: list[FunctionSchema] | None = None,
        *,
        max_messages: int | None = 200,
        max_chars: int | None = 60_000,
    ) -> None:
        self.messages: list[Message] = list(messages or [])
        self.tools: list[FunctionSchema] = list(tools or [])
        self.max_messages = max_messages
        self.max_chars = max_chars
        self.trimmed = 0
        self._listeners: list[Callable[[Message], None]] = []

    def add_message(self, message: Message) -> None:
        """Append one message (trimming the oldest turns if over the limits; tell the listeners)."""
        self.messages.append(message)
        removed = trim_messages(self.messages, max_messages=self.max_messages, max_chars=self.max_chars)
        if removed:
            if not self.trimmed:
                logger.warning(
                    "the conversation is over its limits (%s messages, %s characters): "
                    "dropping the oldest turns",
                    self.max_messages,
                    self.max_chars,
                )
            self.trimmed += removed
            metrics.REGISTRY.error("llm_context_trimmed")
        for listener in self._listeners:
            try:
                listener(message)
            except Exception:
                logger.exception("context listener failed")

    def on_message(self, listener: Callable[[Message], None]) -> None:
        """Call ``listener(message)`` for every message added from now on (transcripts, logs)."""
        self._listeners.append(listener)

    def get_messages(self) -> list[Message]:
        """The messages (the list itself)."""
        return self.messages


@dataclass(slots=True, kw_only=True)
class LLMContextFrame(DataFrame):
    """Ask the LLM to reply to ``context``."""

    context: LLMContext


@dataclass(slots=True, kw_only=True)
class LLMMessagesAppendFrame(DataFrame):
    """Append messages to the context, and by default run the LLM (e.g. the greeting)."""

    messages: list[Message]
    run_llm: bool = True


@dataclass(slots=True)
class LLMRunFrame(DataFrame):
    """Run the LLM on the context as it is (e.g. to greet when the call connects)."""


__all__ = [
    "FunctionSchema",
    "LLMContext",
    "LLMContextFrame",
    "LLMMessagesAppendFrame",
    "LLMRunFrame",
    "Message",
]
