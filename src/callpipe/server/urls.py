"""The URLs callpipe hands Telnyx: stream URLs with their tokens, TeXML, the dial-out body codec.

Pure functions of the settings (no I/O): ``stream_url`` issues the token a ``/ws`` URL
carries, ``texml_document`` wraps it in TeXML, ``encode_body``/``decode_body`` carry a
dial-out body through URLs unmangled.
"""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit
from xml.sax.saxutils import quoteattr

import msgspec

from callpipe.server.settings import ServerSettings
from callpipe.server.stream_options import scope_parts
from callpipe.server.tokens import issue_token, scope_digest

__all__ = [
    "RESERVED_PARAMS",
    "decode_body",
    "encode_body",
    "http_base",
    "stream_url",
    "texml_document",
    "ws_base",
]

# Query parameters callpipe itself puts on stream URLs; the rest are the caller's own.
RESERVED_PARAMS = frozenset({"token", "body", "direction", "sig", "exp", "bidi_codec", "bidi_rate"})


def encode_body(body: dict[str, Any]) -> str:
    """A dial-out body as URL-safe base64 of compact JSON (no ``+``, ``/`` or ``=``)."""
    return base64.urlsafe_b64encode(msgspec.json.encode(body)).rstrip(b"=").decode("ascii")


def decode_body(text: str | None) -> dict[str, Any]:
    """Inverse of :func:`encode_body`; ``{}`` for none. ValueError if malformed."""
    if not text:
        return {}
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        body = msgspec.json.decode(raw)
    except (ValueError, msgspec.DecodeError) as exc:
        raise ValueError(f"malformed body parameter: {exc}") from None
    if not isinstance(body, dict):
        raise ValueError("the body must be a JSON object")
    return body


def ws_base(settings: ServerSettings) -> str:
    """``wss://host/prefix`` from PUBLIC_URL (http -> ws, https -> wss)."""
    public = settings.public_url or ""
    parts = urlsplit(public if "://" in public else f"https://{public}")
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme, "wss")
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


def http_base(settings: ServerSettings) -> str:
    """``https://host/prefix`` from PUBLIC_URL (ws -> http, wss -> https)."""
    public = settings.public_url or ""
    parts = urlsplit(public if "://" in public else f"https://{public}")
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme or "https")
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


def stream_url(
    settings: ServerSettings,
    *,
    direction: str,
    call_sid: str | None,
    extra: dict[str, str],
    body: str | None = None,
    ttl: float | None = None,
    media: dict[str, str] | None = None,
) -> str:
    """The ``/ws`` URL for one call: its own query parameters plus direction, body and token.

    ``media`` (the bidirectional codec a dial asked for) is covered by the token too.
    ``body`` (an encoded dial-out body) is passed only by the code paths that verified it:
    ``/start`` and the ``/answer`` URLs it signed; a ``body`` in ``extra`` is dropped. A
    token bound to no call lives ``UNBOUND_TOKEN_TTL_SECS`` at most (or ``ttl``).
    """
    params = {k: v for k, v in extra.items() if k not in RESERVED_PARAMS}
    if body:
        params["body"] = body
    if media:
        params.update(media)  # what Telnyx takes back: StreamOptions.url_params()
    params["direction"] = direction
    secret = settings.secret("callpipe_secret")
    if secret:
        # The token also covers direction and body, so a stolen URL cannot be replayed
        # with a made-up body or as an "outbound" call.
        scope = scope_digest(direction, params.get("body", ""), *scope_parts(params))
        lifetime = settings.stream_token_ttl_secs
        if not call_sid:
            lifetime = min(lifetime, settings.unbound_token_ttl_secs)
        params["token"] = issue_token(
            secret, ttl=lifetime if ttl is None else ttl, call_id=call_sid, scope=scope
        )
    return f"{ws_base(settings)}/ws?{urlencode(params)}"


def texml_document(settings: ServerSettings, url: str) -> str:
    """The TeXML that connects a call's audio to ``url`` (and nothing after it).

    No ``<Pause>`` follows the stream: when the bot ends the stream, the call ends too.
    """
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        "<Response><Connect>"
        f'<Stream url={quoteattr(url)} bidirectionalMode="rtp"'
        f" bidirectionalCodec={quoteattr(settings.stream_codec)}"
        f' bidirectionalSamplingRate="{settings.stream_sample_rate}"/>'
        "</Connect></Response>"
    )
