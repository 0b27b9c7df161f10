"""Request bodies and paths of the Telnyx Call Control REST API, built without I/O."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

__all__ = ["action_path", "drop_none", "encode_client_state", "merge_extra", "sip_headers"]


def encode_client_state(value: str | bytes | Mapping[str, Any] | None) -> str | None:
    """Encode ``client_state`` the way Telnyx wants it: a base64 string.

    ``bytes`` are base64-encoded, a mapping is encoded as compact JSON then base64; a ``str``
    is taken to be base64 already and passed through unchanged.
    """
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
    elif isinstance(value, Mapping):
        raw = json.dumps(dict(value), separators=(",", ":"), sort_keys=True).encode()
    else:
        raise TypeError(f"client_state must be str, bytes or a mapping, not {type(value).__name__}")
    return base64.b64encode(raw).decode("ascii")


def _quote_id(call_control_id: str) -> str:
    # Ids look like "v3:<base64url>"; ':' is a legal path character and Telnyx's own docs
    # leave it unescaped, everything else outside the unreserved set is escaped (incl. '/').
    if not call_control_id:
        raise ValueError("call_control_id must not be empty")
    return quote(call_control_id, safe=":")


def sip_headers(headers: Mapping[str, str] | Sequence[Mapping[str, str]]) -> list[dict[str, str]]:
    """Telnyx's ``[{"name": ..., "value": ...}]`` list of SIP headers, from a mapping or that list."""
    # A plain mapping is the friendlier way to write them.
    if isinstance(headers, Mapping):
        return [{"name": str(k), "value": str(v)} for k, v in headers.items()]
    return [dict(h) for h in headers]


def merge_extra(body: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """Add the caller's ``extra`` fields to ``body``; a field given twice is a ``TypeError``."""
    clash = sorted(k for k in extra if k in body)
    if clash:
        # A silent override of e.g. command_id would defeat idempotency; make it loud.
        raise TypeError(f"extra fields duplicate explicit arguments: {', '.join(clash)}")
    body.update(extra)
    return body


def drop_none(body: dict[str, Any]) -> dict[str, Any]:
    """``body`` without its ``None`` fields (Telnyx reads a missing field as its default)."""
    return {k: v for k, v in body.items() if v is not None}


def action_path(call_control_id: str, action: str) -> str:
    """The path of one Call Control action on a live call: ``/calls/{id}/actions/{action}``."""
    return f"/calls/{_quote_id(call_control_id)}/actions/{action}"
