"""Keeping a conversation within bounds: the oldest turns go first, the system prompt stays.

A long call (or a caller who talks for an hour) must not grow the LLM context without end:
every request sends all of it, so cost, latency and memory grow with it, and the provider
refuses it past its window. :func:`trim_messages` drops the oldest non-system messages
until the context fits ``max_messages`` and ``max_chars``, never splitting an assistant's
tool calls from their results (a tool result without its call makes providers answer 400).
Pure logic; :class:`~callpipe.services.llm.LLMContext` calls it as messages are added.
"""

from __future__ import annotations

from typing import Any

Message = dict[str, Any]


def message_chars(message: Message) -> int:
    """The size of a message as counted against ``max_chars`` (its text and tool calls)."""
    size = len(str(message.get("content") or ""))
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        size += len(str(function.get("name") or "")) + len(str(function.get("arguments") or ""))
    return size


def _group_end(messages: list[Message], start: int) -> int:
    """Index after the message at ``start`` and the tool results that belong to it."""
    end = start + 1
    ids = {call.get("id") for call in messages[start].get("tool_calls") or ()}
    while end < len(messages) and messages[end].get("role") == "tool":
        if messages[start].get("role") != "tool" and messages[end].get("tool_call_id") not in ids:
            break
        end += 1
    return end


def trim_messages(messages: list[Message], *, max_messages: int | None, max_chars: int | None) -> int:
    """Drop the oldest non-system messages (in place) until both limits hold; return how many.

    The newest message is always kept, so a context never ends up empty of the turn it is
    about to answer; system messages are never dropped.
    """
    removed = 0
    total = sum(message_chars(m) for m in messages) if max_chars is not None else 0

    def over() -> bool:
        return (max_messages is not None and len(messages) > max_messages) or (
            max_chars is not None and total > max_chars
        )

    while over():
        start = next((i for i, m in enumerate(messages) if m.get("role") != "system"), None)
        if start is None:
            break
        end = _group_end(messages, start)
        if end >= len(messages):
            break  # only the newest turn is left to drop: keep it
        if max_chars is not None:
            total -= sum(message_chars(m) for m in messages[start:end])
        del messages[start:end]
        removed += end - start
    return removed
