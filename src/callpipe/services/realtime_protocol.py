"""OpenAI Realtime wire messages (pure: no sockets): the session, history items, event names.

The GA interface is used: ``session.update`` with ``session.type = "realtime"`` and
``audio.input/output.format = {"type": "audio/pcmu"}`` (μ-law at 8 kHz, the phone's own
codec), ``turn_detection`` under ``audio.input``. Server events are accepted under both the
GA names (``response.output_audio.delta``) and the beta ones (``response.audio.delta``), so
compatible servers that still speak the beta protocol work too.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import quote, urlsplit, urlunsplit

from callpipe.services.llm import FunctionSchema

__all__ = [
    "AUDIO_DELTA",
    "TRANSCRIPT_DELTA",
    "TRANSCRIPT_DONE",
    "HistoryEntry",
    "RealtimeConfig",
    "append_audio",
    "function_output",
    "history_item",
    "realtime_url",
    "session_update",
    "usage_tokens",
]

AUDIO_DELTA = frozenset({"response.output_audio.delta", "response.audio.delta"})
TRANSCRIPT_DELTA = frozenset({"response.output_audio_transcript.delta", "response.audio_transcript.delta"})
TRANSCRIPT_DONE = frozenset({"response.output_audio_transcript.done", "response.audio_transcript.done"})

TurnDetection = Literal["server_vad", "semantic_vad", "local"]


@dataclass(slots=True, kw_only=True)
class RealtimeConfig:
    """What the session is configured with at the start (and again after a reconnect)."""

    model: str
    voice: str
    instructions: str
    tools: list[FunctionSchema] = field(default_factory=list)
    turn_detection: TurnDetection = "server_vad"
    silence_ms: int = 500
    transcription_model: str | None = "gpt-4o-mini-transcribe"


def realtime_url(base_url: str, model: str) -> str:
    """``https://api.openai.com/v1`` -> ``wss://api.openai.com/v1/realtime?model=...`` (http -> ws)."""
    parts = urlsplit(base_url.rstrip("/"))
    scheme = {"https": "wss", "http": "ws"}.get(parts.scheme, parts.scheme)
    if scheme not in ("ws", "wss"):
        raise ValueError(f"a Realtime base URL is http(s) or ws(s), not {base_url!r}")
    path = parts.path if parts.path.endswith("/realtime") else f"{parts.path}/realtime"
    return urlunsplit((scheme, parts.netloc, path, f"model={quote(model)}", ""))


def session_update(config: RealtimeConfig) -> dict[str, Any]:
    """The ``session.update`` event: μ-law in and out, the voice, instructions, tools, turn-taking."""
    if config.turn_detection == "local":
        turn: dict[str, Any] | None = None  # callpipe's VAD ends turns; the client commits
    elif config.turn_detection == "semantic_vad":
        turn = {"type": "semantic_vad", "create_response": True, "interrupt_response": True}
    else:
        turn = {
            "type": "server_vad",
            "silence_duration_ms": config.silence_ms,
            "create_response": True,
            "interrupt_response": True,
        }
    audio_in: dict[str, Any] = {"format": {"type": "audio/pcmu"}, "turn_detection": turn}
    if config.transcription_model:
        audio_in["transcription"] = {"model": config.transcription_model}
    return {
        "type": "session.update",
        "session": {
            "type": "realtime",
            "model": config.model,
            "instructions": config.instructions,
            "output_modalities": ["audio"],
            "audio": {"input": audio_in, "output": {"format": {"type": "audio/pcmu"}, "voice": config.voice}},
            "tools": [_tool(t) for t in config.tools],
            "tool_choice": "auto",
        },
    }


def _tool(schema: FunctionSchema) -> dict[str, Any]:
    # Realtime tools are flat (no nested "function" object as in chat completions).
    return {
        "type": "function",
        "name": schema.name,
        "description": schema.description,
        "parameters": {"type": "object", "properties": schema.properties, "required": schema.required},
    }


def append_audio(payload: bytes) -> str:
    """``input_audio_buffer.append`` as text, built without a JSON encoder (every 20 ms)."""
    return '{"type":"input_audio_buffer.append","audio":"' + base64.b64encode(payload).decode() + '"}'


@dataclass(slots=True)
class HistoryEntry:
    """A turn of the conversation kept to restore it on a new connection."""

    role: Literal["user", "assistant"]
    text: str
    item_id: str = ""


def history_item(entry: HistoryEntry) -> dict[str, Any]:
    """``conversation.item.create`` for a turn (text: the audio itself is not re-sent)."""
    kind = "input_text" if entry.role == "user" else "output_text"
    return {
        "type": "conversation.item.create",
        "item": {"type": "message", "role": entry.role, "content": [{"type": kind, "text": entry.text}]},
    }


def function_output(call_id: str, result: Any) -> dict[str, Any]:
    """A tool's result as a ``function_call_output`` item."""
    output = json.dumps(result if result is not None else "ok")
    return {
        "type": "conversation.item.create",
        "item": {"type": "function_call_output", "call_id": call_id, "output": output},
    }


def usage_tokens(usage: Any) -> tuple[int, int, int, int]:
    """``(input, output, input audio, output audio)`` tokens of a ``response.done`` usage object."""
    if not isinstance(usage, dict):
        return 0, 0, 0, 0

    def number(value: Any) -> int:
        return value if isinstance(value, int) else 0

    details_in = usage.get("input_token_details") or {}
    details_out = usage.get("output_token_details") or {}
    return (
        number(usage.get("input_tokens")),
        number(usage.get("output_tokens")),
        number(details_in.get("audio_tokens")) if isinstance(details_in, dict) else 0,
        number(details_out.get("audio_tokens")) if isinstance(details_out, dict) else 0,
    )
