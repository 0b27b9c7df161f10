"""``Authorization: Bearer $CALLPIPE_API_KEY``: the check of the operator-facing endpoints."""

from __future__ import annotations

import hmac

from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse

from callpipe.server.endpoints import error

__all__ = ["UNAUTHORIZED_DETAIL", "api_key_denial"]

UNAUTHORIZED_DETAIL = "a valid 'Authorization: Bearer <CALLPIPE_API_KEY>' is required"


def api_key_denial(
    request: HTTPConnection, expected: str | None, *, disabled_code: str, disabled_detail: str
) -> JSONResponse | None:
    """``None`` when ``request`` carries the key ``expected``; else the answer that refuses it.

    No key configured: 503 with ``disabled_code`` (the endpoint is off, never open);
    a missing or wrong key: 401. The comparison takes the same time for any wrong key.
    """
    if not expected:
        return error(503, disabled_code, disabled_detail)
    auth = request.headers.get("authorization", "")
    if not auth.startswith("Bearer ") or not hmac.compare_digest(auth[7:].encode(), expected.encode()):
        return error(401, "unauthorized", UNAUTHORIZED_DETAIL)
    return None
