"""What the fake OpenAI model "says": script events and the stock responders.

A *responder* is ``responder(messages, tools)`` (sync or async) returning a list of
events, each a text piece (``str``, streamed as one delta) or a :class:`FakeToolCall`.
Pure logic with no I/O; :mod:`callpipe.sim.fake_openai` (the public import path) serves it.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "FakeToolCall",
    "Responder",
    "ScriptEvent",
    "echo_responder",
    "message_text",
    "scripted_replies",
    "words",
]


@dataclass(slots=True)
class FakeToolCall:
    """A tool call the fake model makes; ``arguments`` is streamed in ``fragments`` pieces."""

    name: str
    arguments: str | Mapping[str, Any] = "{}"
    id: str | None = None
    fragments: int = 3

    def arguments_json(self) -> str:
        """The arguments as the JSON string that goes on the wire."""
        if isinstance(self.arguments, str):
            return self.arguments
        return json.dumps(dict(self.arguments), separators=(",", ":"))


ScriptEvent = str | FakeToolCall
Responder = Callable[
    [list[dict[str, Any]], list[dict[str, Any]]],
    Sequence[ScriptEvent] | Awaitable[Sequence[ScriptEvent]],
]


def message_text(message: Mapping[str, Any]) -> str:
    """The text of a message: its ``content`` string, or its text parts joined."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(part.get("text", ""))
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""


def words(text: str) -> list[str]:
    """``text`` cut into streaming pieces: each word with the space before it."""
    parts = text.split(" ")
    return [parts[0], *(" " + p for p in parts[1:])] if text else []


def echo_responder(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> Sequence[ScriptEvent]:
    """The default responder: "You said: <last user message>." one word per chunk."""
    last = next((m for m in reversed(messages) if m.get("role") == "user"), None)
    if last is None:
        return words("Hello! How can I help you?")
    return words(f"You said: {message_text(last).strip()}.")


def scripted_replies(*replies: Sequence[ScriptEvent] | str) -> Responder:
    """A responder that answers the n-th request with ``replies[n]`` (the last one repeats).

    A reply given as a plain string is streamed word by word.
    """
    if not replies:
        raise ValueError("scripted_replies needs at least one reply")
    queue = [words(r) if isinstance(r, str) else list(r) for r in replies]
    lock = threading.Lock()
    served = 0

    def responder(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> list[ScriptEvent]:
        nonlocal served
        with lock:
            reply = queue[min(served, len(queue) - 1)]
            served += 1
        return list(reply)

    return responder
