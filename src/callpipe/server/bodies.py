"""Request bodies read with a cap that holds *while* reading, not after.

``await request.body()`` buffers everything a client sends before the handler can look at
its size, so a 1 GB upload to ``/webhooks/telnyx`` costs 1 GB of memory before any check.
:func:`read_capped` refuses an announced ``Content-Length`` over the limit without reading
a byte, and stops reading a chunked (or lying) body as soon as it passes the limit.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from starlette.requests import Request

__all__ = ["BodyTooLarge", "read_capped", "read_form_or_query"]


class BodyTooLarge(ValueError):
    """The request body is over the endpoint's limit (answer 413)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(f"request body over {limit} bytes")


async def read_capped(request: Request, limit: int) -> bytes:
    """The whole body, or :class:`BodyTooLarge` once more than ``limit`` bytes arrived."""
    announced = request.headers.get("content-length")
    if announced is not None and announced.strip().isdigit() and int(announced) > limit:
        raise BodyTooLarge(limit)
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > limit:
            raise BodyTooLarge(limit)
    return bytes(raw)


async def read_form_or_query(request: Request, limit: int) -> tuple[dict[str, str], bytes]:
    """Telnyx's TeXML request parameters (query string plus a form POST body) and the raw body.

    The form is parsed here (``application/x-www-form-urlencoded``, what Telnyx sends)
    rather than with ``request.form()``, which needs python-multipart. The raw body is
    returned too: TeXML request signatures cover its exact bytes.
    """
    values = dict(request.query_params.items())
    raw = b""
    if request.method == "POST":
        raw = await read_capped(request, limit)
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type in ("", "application/x-www-form-urlencoded"):
            values.update(parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True))
    return values, raw
