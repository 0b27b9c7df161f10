"""Signed, expiring stream tokens.

Telnyx's TeXML ``<Stream>`` carries no authentication: anyone who learns the WebSocket
URL could open streams and spend the operator's AI budget. So every stream URL callpipe
issues carries a token - ``base64url(claims) "." base64url(HMAC-SHA256(secret, claims))``
- that ``/ws`` checks before any pipeline starts. Claims: an expiry, a random nonce that is
also the token's id (``/ws`` claims it once: a token opens one stream, on any instance),
and, when known at issue time, the call it is for (``call``: the TeXML ``CallSid`` / Call
Control id), which ``/ws`` compares with the ``start`` message.

``sign_value`` / ``check_value`` sign other URL values (the dial-out body on ``/answer``
URLs) with an expiry of their own.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass

__all__ = [
    "MISSING_TOKEN_HELP",
    "MISSING_TOKEN_REASON",
    "StreamToken",
    "TokenError",
    "check_expiring",
    "check_value",
    "issue_token",
    "scope_digest",
    "sign_expiring",
    "sign_value",
    "verify_token",
]


# A stream URL without a token is what a TeXML Bin copied from Pipecat's Telnyx guide has
# (`<Stream url="wss://HOST/ws">` and `<Pause length="40"/>`). Refusing it is deliberate -
# Telnyx's <Stream> carries no authentication - so the refusal says what to paste instead.
MISSING_TOKEN_REASON = (
    "missing stream token: put the output of `callpipe texml` in your TeXML Bin (see README)"
)
MISSING_TOKEN_HELP = (
    'refusing stream: its URL has no token. A TeXML Bin with a plain <Stream url="wss://HOST/ws"> '
    '(and <Pause length="40"/>), as in Pipecat\'s Telnyx guide, is refused on purpose: anyone could '
    "open that URL. Replace the Bin's content with the output of `callpipe texml` (with TEXML_PATH_SECRET "
    'set: <Response><Redirect method="POST">https://HOST/texml/<TEXML_PATH_SECRET></Redirect></Response>, '
    "which gives each call its own signed stream URL), or set the TeXML application's voice URL to "
    "https://HOST/texml (signed with TELNYX_PUBLIC_KEY) or https://HOST/texml/<TEXML_PATH_SECRET>"
)


class TokenError(ValueError):
    """A stream token that is missing, malformed, forged or expired."""


@dataclass(frozen=True, slots=True)
class StreamToken:
    """The verified claims of a token (``scope``: a digest of what the URL carries)."""

    expires_at: float
    nonce: str
    call_id: str | None
    scope: str | None = None

    @property
    def token_id(self) -> str:
        """The id ``/ws`` claims so that the token opens at most one stream."""
        return self.nonce


def scope_digest(*parts: str) -> str:
    """A short digest binding a token to the other parameters of its URL (direction, body)."""
    return _b64(hashlib.sha256("\x1f".join(parts).encode()).digest()[:16])


def sign_value(secret: str, purpose: str, value: str) -> str:
    """An HMAC of ``value`` for ``purpose`` (e.g. the dial-out body on the ``/answer`` URL)."""
    return _b64(hmac.new(secret.encode(), f"{purpose}\x1f{value}".encode(), hashlib.sha256).digest())


def check_value(secret: str, purpose: str, value: str, signature: str | None) -> bool:
    """Whether ``signature`` is :func:`sign_value` of ``value``."""
    return bool(signature) and hmac.compare_digest(sign_value(secret, purpose, value), signature or "")


def sign_expiring(
    secret: str, purpose: str, value: str, *, ttl: float, now: float | None = None
) -> tuple[str, str]:
    """``(exp, signature)``: :func:`sign_value` of ``value`` and an expiry ``ttl`` s from now."""
    expires = str(int((time.time() if now is None else now) + ttl))
    return expires, sign_value(secret, purpose, f"{expires}\x1f{value}")


def check_expiring(
    secret: str,
    purpose: str,
    value: str,
    expires: str | None,
    signature: str | None,
    *,
    now: float | None = None,
) -> None:
    """Raise :class:`TokenError` unless ``signature`` is :func:`sign_expiring`'s and not expired."""
    if (
        not expires
        or not expires.isdigit()
        or not check_value(secret, purpose, f"{expires}\x1f{value}", signature)
    ):
        raise TokenError("this URL was not issued by this server")
    if (time.time() if now is None else now) > int(expires):
        raise TokenError("this URL has expired")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def issue_token(
    secret: str,
    *,
    ttl: float = 300.0,
    call_id: str | None = None,
    scope: str | None = None,
    now: float | None = None,
) -> str:
    """A token valid for ``ttl`` seconds, bound to ``call_id`` and ``scope`` when given."""
    if not secret:
        raise ValueError("a stream token needs a non-empty secret (CALLPIPE_SECRET)")
    issued = time.time() if now is None else now
    claims: dict[str, object] = {"exp": int(issued + ttl), "n": secrets.token_urlsafe(9)}
    if call_id:
        claims["call"] = call_id
    if scope:
        claims["s"] = scope
    body = _b64(json.dumps(claims, separators=(",", ":")).encode())
    signature = _b64(hmac.new(secret.encode(), body.encode(), hashlib.sha256).digest())
    return f"{body}.{signature}"


def verify_token(secret: str, token: str | None, *, now: float | None = None) -> StreamToken:
    """Check signature and expiry; return the claims or raise :class:`TokenError`."""
    if not token:
        raise TokenError("missing stream token")
    body, sep, signature = token.partition(".")
    if not sep or not body or not signature:
        raise TokenError("malformed stream token")
    expected = _b64(hmac.new(secret.encode(), body.encode(), hashlib.sha256).digest())
    if not hmac.compare_digest(expected, signature):
        raise TokenError("invalid stream token signature")
    try:
        claims = json.loads(_unb64(body))
        expires_at = float(claims["exp"])
        nonce = str(claims["n"])
        call_id = claims.get("call")
        scope = claims.get("s")
    except (ValueError, KeyError, TypeError):
        raise TokenError("malformed stream token claims") from None
    if (time.time() if now is None else now) > expires_at:
        raise TokenError("expired stream token")
    return StreamToken(
        expires_at=expires_at,
        nonce=nonce,
        call_id=str(call_id) if call_id else None,
        scope=str(scope) if scope else None,
    )
