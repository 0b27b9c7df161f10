"""OpenAI's chat-completions wire format for the fake: error bodies, request validation, reply chunks.

Pure functions with no I/O (the app in :mod:`callpipe.sim.fake_openai` sends what they
build). Where OpenAI's documentation is silent, the behaviour chosen is marked "Assumption:".
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi.responses import JSONResponse, Response

from callpipe.sim.fake_openai_script import FakeToolCall, ScriptEvent, message_text

__all__ = [
    "completion_body",
    "default_error",
    "error_body",
    "json_error",
    "mask_key",
    "request_id",
    "sse",
    "stream_chunks",
    "validate_request",
]

_ROLES = {"system", "developer", "user", "assistant", "tool"}


def error_body(
    message: str, error_type: str, *, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    """OpenAI's error object: ``{"error": {message, type, param, code}}``."""
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def default_error(status: int) -> dict[str, Any]:
    """The error object OpenAI sends with HTTP ``status``."""
    if status == 401:
        return error_body(
            "Incorrect API key provided. You can find your API key in your account settings.",
            "invalid_request_error",
            code="invalid_api_key",
        )
    if status == 404:
        return error_body("The requested resource does not exist.", "invalid_request_error")
    if status == 429:
        return error_body(
            "Rate limit reached for requests. Please try again shortly.",
            "requests",
            code="rate_limit_exceeded",
        )
    if status == 503:
        return error_body("The engine is currently overloaded, please try again later.", "server_error")
    if status >= 500:
        return error_body(
            "The server had an error while processing your request. Sorry about that!", "server_error"
        )
    return error_body("Invalid request.", "invalid_request_error")


def mask_key(key: str) -> str:
    """``key`` masked as OpenAI echoes a wrong one."""
    # OpenAI echoes a wrong key masked: its start and its last four characters.
    if len(key) <= 8:
        return "*" * len(key)
    return key[:3] + "*" * (len(key) - 7) + key[-4:]


def request_id() -> str:
    """A fresh ``x-request-id`` value."""
    return "req_" + secrets.token_hex(16)


def json_error(status: int, body: Any, headers: Mapping[str, str] | None = None) -> Response:
    """An error response with an ``x-request-id`` (a dict ``body`` as JSON, ``str``/``bytes`` as is)."""
    all_headers = {"x-request-id": request_id(), **dict(headers or {})}
    if isinstance(body, bytes | str):
        return Response(body, status_code=status, headers=all_headers)
    return JSONResponse(body, status_code=status, headers=all_headers)


def _invalid(message: str, param: str | None = None, code: str | None = None) -> Response:
    return json_error(400, error_body(message, "invalid_request_error", param=param, code=code))


def validate_request(body: Any, models: Sequence[str] | None) -> Response | None:
    """OpenAI's 400/404 for a malformed request, else ``None``."""
    if not isinstance(body, dict):
        return _invalid("We could not parse the JSON body of your request. The body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return _invalid("You must provide a model parameter.", "model")
    if models is not None and model not in models:
        return json_error(
            404,
            error_body(
                f"The model `{model}` does not exist or you do not have access to it.",
                "invalid_request_error",
                code="model_not_found",
            ),
        )
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return _invalid("'messages' must be a non-empty array.", "messages")
    pending: set[str] = set()  # tool_call ids still waiting for their tool message
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in _ROLES:
            return _invalid(f"Invalid value for 'messages[{i}].role'.", f"messages.[{i}].role")
        assert isinstance(message, dict)
        if role == "tool":
            call_id = message.get("tool_call_id")
            if call_id not in pending:
                return _invalid(
                    "Invalid parameter: messages with role 'tool' must be a response to a preceding "
                    "message with 'tool_calls'.",
                    f"messages.[{i}].role",
                )
            pending.discard(call_id)
            continue
        if pending:
            return _invalid(
                "An assistant message with 'tool_calls' must be followed by tool messages responding "
                f"to each 'tool_call_id'. Missing: {', '.join(sorted(pending))}.",
                f"messages.[{i}].role",
            )
        if role == "assistant":
            for call in message.get("tool_calls") or ():
                if not isinstance(call, dict) or not isinstance(call.get("id"), str):
                    return _invalid(f"Invalid 'messages[{i}].tool_calls'.", f"messages.[{i}].tool_calls")
                pending.add(call["id"])
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            return _invalid("Invalid type for 'tools': expected an array.", "tools")
        for i, tool in enumerate(tools):
            function = tool.get("function") if isinstance(tool, dict) else None
            if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(function, dict):
                return _invalid(f"Invalid value for 'tools[{i}]'.", f"tools[{i}]")
            if not isinstance(function.get("name"), str) or not function["name"]:
                return _invalid(
                    f"Missing required parameter: 'tools[{i}].function.name'.", f"tools[{i}].function.name"
                )
    return None


def _split(text: str, pieces: int) -> list[str]:
    """``text`` in ``pieces`` roughly equal, non-empty parts (fewer if it is short)."""
    pieces = max(1, min(pieces, len(text)))
    size = -(-len(text) // pieces) if text else 0
    return [text[i : i + size] for i in range(0, len(text), size)] if text else [""]


def _deltas(events: Sequence[ScriptEvent]) -> tuple[list[dict[str, Any]], str]:
    """The ``delta`` objects of a streamed reply (role first) and its ``finish_reason``."""
    deltas: list[dict[str, Any]] = []
    tool_index = 0
    for event in events:
        if isinstance(event, FakeToolCall):
            call_id = event.id or "call_" + secrets.token_urlsafe(18)
            deltas.append(
                {
                    "tool_calls": [
                        {
                            "index": tool_index,
                            "id": call_id,
                            "type": "function",
                            "function": {"name": event.name, "arguments": ""},
                        }
                    ]
                }
            )
            for piece in _split(event.arguments_json(), event.fragments):
                deltas.append({"tool_calls": [{"index": tool_index, "function": {"arguments": piece}}]})
            tool_index += 1
        elif event:
            deltas.append({"content": event})
    if deltas and "tool_calls" in deltas[0]:
        # A reply that starts with a tool call announces the role in the same chunk.
        deltas[0] = {"role": "assistant", "content": None, **deltas[0]}
    else:
        deltas.insert(0, {"role": "assistant", "content": "", "refusal": None})
    return deltas, ("tool_calls" if tool_index else "stop")


def _usage(messages: list[dict[str, Any]], events: Sequence[ScriptEvent]) -> dict[str, int]:
    # Assumption: a word is a token; only the shape matters here.
    prompt = sum(len(message_text(m).split()) + 3 for m in messages)
    completion = sum(
        len(e.split()) if isinstance(e, str) else len(e.arguments_json()) // 4 + 1 for e in events
    )
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def sse(payload: Any) -> bytes:
    """One ``data:`` event of the stream."""
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def completion_body(
    completion_id: str,
    created: int,
    model: str,
    messages: list[dict[str, Any]],
    events: Sequence[ScriptEvent],
) -> dict[str, Any]:
    """The ``chat.completion`` object of a non-streamed reply."""
    text = "".join(e for e in events if isinstance(e, str))
    calls = [
        {
            "id": e.id or "call_" + secrets.token_urlsafe(18),
            "type": "function",
            "function": {"name": e.name, "arguments": e.arguments_json()},
        }
        for e in events
        if isinstance(e, FakeToolCall)
    ]
    message: dict[str, Any] = {"role": "assistant", "content": text or None, "refusal": None}
    if calls:
        message["tool_calls"] = calls
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": "fp_callpipe",
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": "tool_calls" if calls else "stop",
            }
        ],
        "usage": _usage(messages, events),
    }


def stream_chunks(
    completion_id: str,
    created: int,
    model: str,
    messages: list[dict[str, Any]],
    events: Sequence[ScriptEvent],
    *,
    include_usage: bool,
) -> list[bytes]:
    """The SSE events of a streamed reply: its deltas, the ``finish_reason``, the usage, ``[DONE]``."""
    base: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": "fp_callpipe",
    }
    if include_usage:
        base["usage"] = None
    deltas, finish_reason = _deltas(events)
    wire = [
        sse({**base, "choices": [{"index": 0, "delta": d, "logprobs": None, "finish_reason": None}]})
        for d in deltas
    ]
    wire.append(
        sse(
            {
                **base,
                "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": finish_reason}],
            }
        )
    )
    if include_usage:
        wire.append(sse({**base, "choices": [], "usage": _usage(messages, events)}))
    wire.append(b"data: [DONE]\n\n")
    return wire
