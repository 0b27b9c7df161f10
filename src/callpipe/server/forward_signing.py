"""The signature on an event one instance forwards to another (pure: no I/O).

``X-Callpipe-Forward: t=<unix>,v1=<hex hmac>`` over the timestamp and the raw body, with
a key derived from ``CALLPIPE_SECRET`` for this purpose only, and refused once it is older
(or newer) than ``FORWARD_TOLERANCE_SECS``: a captured request cannot be replayed later.
"""

from __future__ import annotations

import hashlib
import hmac
import time

__all__ = ["FORWARD_HEADER", "FORWARD_TOLERANCE_SECS", "sign_forward", "verify_forward"]

FORWARD_HEADER = "X-Callpipe-Forward"
# A forwarded event older than this (or this far in the future) is refused: a captured
# request cannot be replayed later.
FORWARD_TOLERANCE_SECS = 30.0
_PURPOSE = b"callpipe-forward-v1"


def _key(secret: str) -> bytes:
    # A key of its own, derived from CALLPIPE_SECRET: a forward signature is never valid
    # as a stream token or an /answer signature, nor the other way round.
    return hmac.new(secret.encode(), _PURPOSE, hashlib.sha256).digest()


def sign_forward(secret: str, body: bytes, now: float | None = None) -> str:
    """The ``X-Callpipe-Forward`` header value for ``body``: ``t=<unix>,v1=<hex hmac>``."""
    stamp = str(int(now if now is not None else time.time()))
    mac = hmac.new(_key(secret), stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={stamp},v1={mac}"


def verify_forward(secret: str, body: bytes, header: str | None, now: float | None = None) -> bool:
    """Whether ``header`` signs ``body`` with ``secret`` within the replay tolerance."""
    if not header:
        return False
    fields = dict(part.partition("=")[::2] for part in header.split(","))
    stamp, mac = fields.get("t", ""), fields.get("v1", "")
    if not stamp.isdigit():
        return False
    if abs((now if now is not None else time.time()) - int(stamp)) > FORWARD_TOLERANCE_SECS:
        return False
    expected = hmac.new(_key(secret), stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, mac)
