"""Console sign-in sessions: a signed, expiring cookie and a CSRF token bound to it (pure logic).

The cookie value is ``base64url(claims) "." base64url(HMAC-SHA256(key, claims))`` with
claims ``{"sid": random id, "exp": UNIX seconds}``. The key is derived from the console
password and ``CALLPIPE_SECRET``, so changing the password signs everyone out. The CSRF
token is an HMAC of the session id: the page gets it once, state-changing requests send
it back in the ``X-CSRF-Token`` header, and a cross-site page can neither read it nor
make the browser add it (the cookie is also ``SameSite=Strict``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass

__all__ = ["ConsoleSession", "SessionSigner"]

COOKIE_NAME = "callpipe_console"
CSRF_HEADER = "x-csrf-token"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True, slots=True)
class ConsoleSession:
    """A verified session: its id (the CSRF token's seed) and expiry."""

    sid: str
    expires_at: float


class SessionSigner:
    """Issues and checks session cookies and CSRF tokens for one console password."""

    def __init__(self, password: str, secret: str | None, *, ttl_secs: float = 12 * 3600) -> None:
        if not password:
            raise ValueError("the console needs a password (CONSOLE_PASSWORD or CALLPIPE_API_KEY)")
        self._password = password.encode()
        material = b"callpipe-console\x1f" + self._password + b"\x1f" + (secret or "").encode()
        self._key = hashlib.sha256(material).digest()
        self.ttl_secs = ttl_secs

    def check_password(self, given: str) -> bool:
        """Constant-time comparison with the console password."""
        return hmac.compare_digest(given.encode(), self._password)

    def _sign(self, purpose: str, value: str) -> str:
        return _b64(hmac.new(self._key, f"{purpose}\x1f{value}".encode(), hashlib.sha256).digest())

    def issue(self, *, now: float | None = None) -> tuple[str, ConsoleSession]:
        """A new session's cookie value and the session."""
        issued = time.time() if now is None else now
        session = ConsoleSession(sid=secrets.token_urlsafe(16), expires_at=float(int(issued + self.ttl_secs)))
        claims = _b64(json.dumps({"sid": session.sid, "exp": int(session.expires_at)}).encode())
        return f"{claims}.{self._sign('session', claims)}", session

    def verify(self, cookie: str | None, *, now: float | None = None) -> ConsoleSession | None:
        """The session of a cookie value, or ``None`` if missing, forged, malformed or expired."""
        if not cookie:
            return None
        claims, sep, signature = cookie.partition(".")
        if not sep or not hmac.compare_digest(self._sign("session", claims), signature):
            return None
        try:
            data = json.loads(_unb64(claims))
            session = ConsoleSession(sid=str(data["sid"]), expires_at=float(data["exp"]))
        except (ValueError, KeyError, TypeError):
            return None
        if (time.time() if now is None else now) >= session.expires_at:
            return None
        return session

    def csrf_token(self, session: ConsoleSession) -> str:
        """The CSRF token of ``session`` (stable for its lifetime)."""
        return self._sign("csrf", session.sid)

    def check_csrf(self, session: ConsoleSession, token: str | None) -> bool:
        """Whether ``token`` is ``session``'s CSRF token."""
        return bool(token) and hmac.compare_digest(self.csrf_token(session), token or "")
