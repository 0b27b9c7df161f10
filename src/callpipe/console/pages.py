"""The console's HTML pages: small templates shipped in ``static/``, filled with escaped values.

Two kinds of marks, and nothing more (five pages need no template engine):
``{{>name}}`` is replaced, when the template is first read, by ``partials/name.html`` (the
head and the navigation bar the signed-in pages share); ``{{key}}`` by the HTML-escaped
value given for ``key`` on each render.
"""

from __future__ import annotations

import functools
import html
import re
from importlib import resources

from fastapi.responses import HTMLResponse

__all__ = ["render_page", "static_dir"]

_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")
_PARTIAL = re.compile(r"\{\{>(\w+)\}\}")

# The pages load only their own scripts and styles, and connect only to this origin.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "media-src 'self' blob:; connect-src 'self'; frame-ancestors 'none'; "
    "base-uri 'none'; form-action 'self'"
)


def static_dir() -> str:
    """The directory of the console's static assets (inside the installed package)."""
    return str(resources.files("callpipe.console") / "static")


def _read(folder: str, name: str) -> str:
    return (resources.files("callpipe.console") / folder / f"{name}.html").read_text("utf-8")


@functools.cache
def _template(name: str) -> str:
    return _PARTIAL.sub(lambda match: _read("partials", match.group(1)).rstrip("\n"), _read("static", name))


def render_page(name: str, values: dict[str, str], *, status: int = 200) -> HTMLResponse:
    """The page ``name`` with ``{{key}}`` replaced by the HTML-escaped ``values[key]``."""

    def fill(match: re.Match[str]) -> str:
        return html.escape(values.get(match.group(1), ""), quote=True)

    body = _PLACEHOLDER.sub(fill, _template(name))
    headers = {
        "Content-Security-Policy": CONTENT_SECURITY_POLICY,
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "same-origin",
    }
    return HTMLResponse(body, status_code=status, headers=headers)
