"""The web console's routes: sign-in, the pages, and the console's own JSON and SSE endpoints.

Pages (``/dashboard``, ``/dashboard/overview``, ``/dashboard/calls/{id}``, ``/phone``) and
every ``/console/api/...`` endpoint need the session cookie; state-changing requests also
need the session's CSRF token in ``X-CSRF-Token``. Only ``/login`` and the static assets
(code and styles, no data) are public. Data comes from the call store
(``ServerState.store``) through its queries, the same as ``/api/calls``.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, quote

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response

from callpipe.console import data
from callpipe.console.pages import render_page
from callpipe.console.session import COOKIE_NAME, CSRF_HEADER, ConsoleSession, SessionSigner

if TYPE_CHECKING:
    from callpipe.server.app import ServerState

logger = logging.getLogger("callpipe.console")

__all__ = ["console_router"]

MAX_LOGIN_BYTES = 4096
# Failed sign-ins allowed per client address per minute before answering 429.
MAX_FAILURES_PER_MINUTE = 10


def _error(status: int, code: str, detail: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "detail": detail}}, status_code=status)


def _safe_next(target: str | None) -> str:
    """Only a local path may follow sign-in (no open redirect to another site)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/dashboard"
    return target


class ConsoleAuth:
    """Session cookie checks for one app: who is signed in, and CSRF on changes."""

    def __init__(self, state: ServerState) -> None:
        settings = state.settings
        password = settings.secret("console_password") or settings.secret("callpipe_api_key")
        self.signer = (
            SessionSigner(
                password,
                settings.secret("callpipe_secret"),
                ttl_secs=settings.console_session_hours * 3600,
            )
            if password
            else None
        )
        self.secure = (settings.public_url or "").lower().startswith("https")
        self._failures: dict[str, list[float]] = {}

    def session(self, request: Request) -> ConsoleSession | None:
        """The request's valid session, or ``None``."""
        if self.signer is None:
            return None
        return self.signer.verify(request.cookies.get(COOKIE_NAME))

    def csrf_ok(self, request: Request, session: ConsoleSession) -> bool:
        """Whether a state-changing request carries the session's CSRF token."""
        assert self.signer is not None
        return self.signer.check_csrf(session, request.headers.get(CSRF_HEADER))

    def throttled(self, client: str) -> bool:
        """Whether ``client`` failed to sign in too often in the last minute."""
        now = time.monotonic()
        recent = [t for t in self._failures.get(client, []) if now - t < 60.0]
        self._failures[client] = recent
        if not recent:
            self._failures.pop(client, None)
        return len(recent) >= MAX_FAILURES_PER_MINUTE

    def failed(self, client: str) -> None:
        """Count a failed sign-in (the table is bounded: oldest clients are dropped)."""
        if len(self._failures) > 10_000:
            self._failures.clear()
        self._failures.setdefault(client, []).append(time.monotonic())

    def set_cookie(self, response: Response) -> None:
        """Start a new session on ``response``."""
        assert self.signer is not None
        value, _ = self.signer.issue()
        response.set_cookie(
            COOKIE_NAME,
            value,
            max_age=int(self.signer.ttl_secs),
            httponly=True,
            samesite="strict",
            secure=self.secure,
            path="/",
        )


def console_router(state: ServerState) -> APIRouter:
    """All console routes for the app whose state is ``state``."""
    auth = ConsoleAuth(state)
    router = APIRouter(include_in_schema=False)
    _add_sign_in(router, auth)
    _add_pages(router, auth)
    data.add_api(router, state, auth)
    return router


def _client(request: Request) -> str:
    return request.client.host if request.client else "?"


def _add_sign_in(router: APIRouter, auth: ConsoleAuth) -> None:
    @router.get("/login")
    async def login_page(request: Request) -> Response:
        if auth.signer is None:
            return render_page("login", {"error": _disabled_message(), "next": "/dashboard"}, status=503)
        target = _safe_next(request.query_params.get("next"))
        if auth.session(request) is not None:
            return RedirectResponse(target, status_code=303)
        return render_page("login", {"error": "", "next": target})

    @router.post("/login")
    async def login(request: Request) -> Response:
        if auth.signer is None:
            return render_page("login", {"error": _disabled_message(), "next": "/dashboard"}, status=503)
        client = _client(request)
        if auth.throttled(client):
            return render_page(
                "login", {"error": "Too many attempts: wait a minute.", "next": "/dashboard"}, status=429
            )
        raw = bytearray()
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > MAX_LOGIN_BYTES:
                return render_page("login", {"error": "Request too large.", "next": "/dashboard"}, status=413)
        form = dict(parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True))
        target = _safe_next(form.get("next"))
        if not auth.signer.check_password(form.get("password", "")):
            auth.failed(client)
            logger.warning("console: failed sign-in from %s", client)
            return render_page("login", {"error": "Wrong password.", "next": target}, status=401)
        response = RedirectResponse(target, status_code=303)
        auth.set_cookie(response)
        return response

    @router.post("/logout")
    async def logout(request: Request) -> Response:
        session = auth.session(request)
        if session is not None and not auth.csrf_ok(request, session):
            return _error(403, "csrf", "missing or wrong X-CSRF-Token")
        response = JSONResponse({"ok": True})
        response.delete_cookie(COOKIE_NAME, path="/", httponly=True, samesite="strict", secure=auth.secure)
        return response


def _disabled_message() -> str:
    return "The console is off: set CONSOLE_PASSWORD (or CALLPIPE_API_KEY) and restart."


def _add_pages(router: APIRouter, auth: ConsoleAuth) -> None:
    def page(name: str, request: Request, **values: str) -> Response:
        session = auth.session(request)
        if session is None or auth.signer is None:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)
        return render_page(name, {**values, "csrf": auth.signer.csrf_token(session)})

    @router.get("/dashboard")
    async def dashboard(request: Request) -> Response:
        return page("dashboard", request)

    @router.get("/dashboard/overview")
    async def overview_page(request: Request) -> Response:
        return page("overview", request)

    @router.get("/dashboard/calls/{call_control_id:path}")
    async def call_page(request: Request, call_control_id: str) -> Response:
        return page("call", request, call_id=call_control_id)

    @router.get("/phone")
    async def phone(request: Request) -> Response:
        return page("phone", request)
