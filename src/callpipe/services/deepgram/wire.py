"""Deepgram's live ``/v1/listen`` protocol, without I/O: the URL, control messages, results.

Wire facts (Deepgram's public docs): ``Authorization: Token <key>`` on the handshake; a
rejected handshake is an HTTP error (401 for a bad key) with the reason in a ``dg-error``
header; errors during a stream arrive as a WebSocket close frame whose reason carries a
code such as ``NET-0001``; ``Results`` carry ``channel.alternatives[0].transcript`` and
``is_final``. :class:`~callpipe.services.deepgram.DeepgramSTTService` does the I/O.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Literal
from urllib.parse import urlencode

from websockets.exceptions import InvalidStatus

__all__ = [
    "CLOSE_STREAM",
    "KEEPALIVE",
    "PLAIN_CLOSE_CODES",
    "DeepgramEncoding",
    "Rejected",
    "handshake_error",
    "listen_url",
    "results_text",
    "websocket_root",
]

DeepgramEncoding = Literal["linear16", "mulaw"]

KEEPALIVE = json.dumps({"type": "KeepAlive"})
CLOSE_STREAM = json.dumps({"type": "CloseStream"})
# Close codes that mean "the connection went away", not "Deepgram reported an error".
PLAIN_CLOSE_CODES = frozenset({1000, 1001, 1005, 1006})
# A rejected handshake with one of these statuses will not succeed on retry.
_PERMANENT_STATUSES = frozenset({400, 401, 402, 403, 404})


class Rejected(Exception):
    """The handshake was refused for a reason a retry cannot fix (bad key, bad parameters)."""


def websocket_root(url: str) -> str:
    """``wss://host`` from what a bot may pass: a bare host, an http(s) URL, or the full listen URL."""
    if "://" not in url:
        url = "wss://" + url
    for http, ws in (("https://", "wss://"), ("http://", "ws://")):
        if url.startswith(http):
            url = ws + url[len(http) :]
    return url.removesuffix("/v1/listen").rstrip("/")


def listen_url(
    base_url: str,
    *,
    model: str,
    encoding: DeepgramEncoding,
    sample_rate: int,
    endpointing_ms: int | None,
    language: str,
    extra_params: Mapping[str, str],
) -> str:
    """The ``/v1/listen`` URL with its query (the key travels in a header, never here)."""
    params: dict[str, str] = {
        "model": model,
        "encoding": encoding,
        "sample_rate": str(sample_rate),
        "channels": "1",
        "interim_results": "true",
        "endpointing": "false" if endpointing_ms is None else str(endpointing_ms),
        "punctuate": "true",
        "smart_format": "true",
        "language": language,
    }
    params.update(extra_params)
    return f"{base_url}/v1/listen?{urlencode(params)}"


def handshake_error(exc: InvalidStatus) -> Exception:
    """What a refused handshake means: :class:`Rejected` if a retry cannot help, else a ``ConnectionError``."""
    response = exc.response
    detail = response.headers.get("dg-error") or response.body.decode("utf-8", "replace")[:200]
    status = response.status_code
    if status in _PERMANENT_STATUSES:
        what = "rejected the API key" if status in (401, 403) else "refused the stream"
        return Rejected(f"Deepgram {what} (HTTP {status}): {detail.strip() or 'no detail'}")
    return ConnectionError(f"HTTP {status}: {detail.strip()}")


def results_text(data: Mapping[str, Any]) -> str:
    """The transcript of a ``Results`` message (its first alternative), stripped; ``""`` if none."""
    channel = data.get("channel")
    alternatives = channel.get("alternatives") if isinstance(channel, dict) else None
    first = alternatives[0] if isinstance(alternatives, list) and alternatives else None
    return str(first.get("transcript") or "").strip() if isinstance(first, dict) else ""
