"""The console's JSON and SSE endpoints (cookie-authenticated), over the call store's queries.

``/console/api/calls`` (list, filters, cursor), ``/console/api/calls/{id}`` (the whole
record plus a cost estimate), ``…/recording``, ``…/live`` (SSE of one call's record while
it runs), ``/console/api/live`` (SSE of the live calls), ``/console/api/overview``,
``POST …/hangup`` and ``POST /console/api/phone/session`` (a browser call's stream URL).
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from callpipe.console import views
from callpipe.records.model import END_REASONS, IN_PROGRESS, CallRecord
from callpipe.store.base import CallFilter, CallStore
from callpipe.telnyx.api import TelnyxError

if TYPE_CHECKING:
    from callpipe.console.router import ConsoleAuth
    from callpipe.server.app import ServerState

logger = logging.getLogger("callpipe.console")

__all__ = ["add_api"]

LIVE_POLL_SECS = 1.0
CALL_POLL_SECS = 0.5
HEARTBEAT_SECS = 15.0
# Most records the overview reads (newest first) and live calls the live view details.
OVERVIEW_MAX_CALLS = 5000
LIVE_MAX_CALLS = 50
MAX_PARAMS = 20
MAX_PARAM_CHARS = 256
MAX_SESSION_BYTES = 8192
# The page opens the stream right after it gets the URL (the microphone is already open).
PHONE_TOKEN_TTL_SECS = 60.0


def _error(status: int, code: str, detail: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "detail": detail}}, status_code=status)


def _store(state: ServerState) -> CallStore | None:
    return state.store


def _date(text: str | None, *, end: bool = False) -> float | None:
    """``YYYY-MM-DD`` (UTC) as UNIX seconds; ``end`` gives the next midnight. ValueError if bad."""
    if not text:
        return None
    day = _dt.datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=_dt.UTC)
    return (day + _dt.timedelta(days=1 if end else 0)).timestamp()


def call_filter(query: dict[str, str]) -> CallFilter:
    """The store filter of the console's list query (``q`` is a number or transcript text)."""
    q = (query.get("q") or "").strip()
    digits = q.replace("+", "").replace(" ", "").replace("-", "")
    is_number = bool(q) and digits.isdigit() and len(digits) >= 3
    direction = query.get("direction") or None
    if direction not in (None, "inbound", "outbound"):
        raise ValueError("direction must be inbound or outbound")
    end_reason = query.get("end_reason") or None
    if end_reason is not None and end_reason not in END_REASONS:
        raise ValueError(f"end_reason must be one of {', '.join(END_REASONS)}")
    limit = int(query.get("limit") or 25)
    return CallFilter(
        direction=direction,
        number=("+" + digits if q.startswith("+") else digits) if is_number else None,
        text=q if q and not is_number else None,
        end_reason=end_reason,
        since=_date(query.get("since")),
        until=_date(query.get("until"), end=True),
        limit=max(1, min(limit, 200)),
        cursor=query.get("cursor") or None,
    )


def _sse(
    request: Request, produce: Callable[[], Awaitable[tuple[dict[str, Any] | None, bool]]], every: float
) -> StreamingResponse:
    """Server-sent events: ``produce()`` polled every ``every`` s, sent when it changes.

    ``produce`` returns ``(data, done)``; the stream ends after a ``done`` value is sent.
    """

    session = getattr(request.state, "console_session", None)
    expires_at = session.expires_at if session is not None else 0.0

    async def events() -> AsyncIterator[str]:
        last = None
        quiet_since = time.monotonic()
        failing = False
        while not await request.is_disconnected():
            if time.time() >= expires_at:
                yield "event: signed-out\ndata: {}\n\n"  # the session expired mid-stream
                return
            try:
                value, done = await produce()
                failing = False
            except Exception as exc:
                if not failing:  # once per outage, not every poll
                    logger.warning("console: live query failed (%s)", type(exc).__name__)
                failing = True
                value, done = None, False
            if value is not None:
                text = json.dumps(value, separators=(",", ":"))
                if text != last:
                    last = text
                    quiet_since = time.monotonic()
                    yield f"data: {text}\n\n"
            if done:
                yield "event: end\ndata: {}\n\n"
                return
            if time.monotonic() - quiet_since > HEARTBEAT_SECS:
                quiet_since = time.monotonic()
                yield ": keep-alive\n\n"
            await asyncio.sleep(every)

    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)


Guard = Callable[..., "Response | CallStore"]


def add_api(router: APIRouter, state: ServerState, auth: ConsoleAuth) -> None:
    """Add the console's data endpoints to ``router``."""

    def guard(request: Request, *, change: bool = False) -> Response | CallStore:
        session = auth.session(request)
        if session is None:
            return _error(401, "unauthorized", "sign in at /login first")
        if change and not auth.csrf_ok(request, session):
            return _error(403, "csrf", "missing or wrong X-CSRF-Token")
        request.state.console_session = session  # live streams end when it expires
        store = _store(state)
        if store is None:
            return _error(503, "no_store", "call records are off on this server")
        return store

    # Routes with a suffix first: ``{call_control_id:path}`` alone would swallow them.
    _add_call_actions(router, state, guard)
    _add_calls(router, state, guard)
    _add_views(router, state, guard)


def _unavailable(exc: Exception) -> JSONResponse:
    logger.warning("console: the store failed (%s)", type(exc).__name__)
    return _error(503, "store_unavailable", "the call store is not answering; try again")


async def _stored_call(guard: Guard, request: Request, call_control_id: str) -> CallRecord | Response:
    """The call's record, or the answer to give instead (the guard's, 503 if the store
    fails, 404 if there is no such call)."""
    store = guard(request)
    if isinstance(store, Response):
        return store
    try:
        record = await store.get_call(call_control_id)
    except Exception as exc:
        return _unavailable(exc)
    if record is None:
        return _error(404, "not_found", "no call with this id")
    return record


def _add_call_actions(router: APIRouter, state: ServerState, guard: Guard) -> None:
    @router.get("/console/api/calls/{call_control_id:path}/recording")
    async def recording(request: Request, call_control_id: str) -> Response:
        record = await _stored_call(guard, request, call_control_id)
        if isinstance(record, Response):
            return record
        # From this disk, or streamed from the instance that holds the file.
        from callpipe.server.recordings import recording_response

        return await recording_response(state, request, record, f"{_file_name(call_control_id)}.wav")

    @router.get("/console/api/calls/{call_control_id:path}/live")
    async def call_live(request: Request, call_control_id: str) -> Response:
        store = guard(request)
        if isinstance(store, Response):
            return store

        async def produce() -> tuple[dict[str, Any] | None, bool]:
            record = await store.get_call(call_control_id)
            if record is None:
                return None, False  # not written yet: the call may be starting
            return _record_json(state, record), record.end_reason != IN_PROGRESS

        return _sse(request, produce, CALL_POLL_SECS)

    @router.post("/console/api/calls/{call_control_id:path}/hangup")
    async def hangup(request: Request, call_control_id: str) -> Response:
        store = guard(request, change=True)
        if isinstance(store, Response):
            return store
        try:
            result = await hang_up(state, call_control_id)
        except TelnyxError as exc:
            return _error(502, "telnyx_error", str(exc))
        if result == "not_found":
            return _error(404, "not_live", "no live call with this id")
        if result == "failed":
            return _error(502, "forward_failed", "the instance holding the call did not answer")
        return JSONResponse({"ok": True, "call_control_id": call_control_id, "handled": result})


def _add_calls(router: APIRouter, state: ServerState, guard: Guard) -> None:
    @router.get("/console/api/calls")
    async def list_calls(request: Request) -> Response:
        store = guard(request)
        if isinstance(store, Response):
            return store
        try:
            flt = call_filter(dict(request.query_params))
        except ValueError as exc:
            return _error(422, "bad_filter", str(exc))
        try:
            page = await store.list_calls(flt)
        except ValueError as exc:  # a cursor this store did not hand out
            return _error(400, "bad_cursor", str(exc))
        except Exception as exc:
            return _unavailable(exc)
        rows = [views.call_row(r) for r in page.calls]
        return JSONResponse({"calls": rows, "next_cursor": page.next_cursor})

    @router.get("/console/api/calls/{call_control_id:path}")
    async def get_call(request: Request, call_control_id: str) -> Response:
        record = await _stored_call(guard, request, call_control_id)
        if isinstance(record, Response):
            return record
        headers = {}
        if request.query_params.get("download"):
            headers["Content-Disposition"] = f'attachment; filename="{_file_name(call_control_id)}.json"'
        return JSONResponse(_record_json(state, record), headers=headers)


def _add_views(router: APIRouter, state: ServerState, guard: Guard) -> None:
    @router.get("/console/api/live")
    async def live(request: Request) -> Response:
        store = guard(request)
        if isinstance(store, Response):
            return store

        async def produce() -> tuple[dict[str, Any] | None, bool]:
            return {"calls": await live_calls(store)}, False

        return _sse(request, produce, LIVE_POLL_SECS)

    @router.get("/console/api/overview")
    async def overview(request: Request) -> Response:
        store = guard(request)
        if isinstance(store, Response):
            return store
        try:
            days = max(1, min(int(request.query_params.get("days") or 14), 90))
        except ValueError:
            return _error(422, "bad_days", "days must be a whole number")
        now = time.time()
        try:
            records = await _recent(store, since=now - 86400 * days)
        except Exception as exc:
            return _unavailable(exc)
        return JSONResponse(views.overview(records, days=days, now=now))

    @router.post("/console/api/phone/session")
    async def phone_session(request: Request) -> Response:
        guarded = guard(request, change=True)
        if isinstance(guarded, Response) and guarded.status_code != 503:
            return guarded  # the softphone works without records too
        raw = await request.body()
        if len(raw) > MAX_SESSION_BYTES:
            return _error(413, "too_large", "request body too large")
        try:
            return JSONResponse(phone_call(state, json.loads(raw or b"{}")))
        except (ValueError, TypeError) as exc:
            return _error(422, "bad_request", str(exc))


def _file_name(call_control_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in call_control_id)


def _record_json(state: ServerState, record: CallRecord) -> dict[str, Any]:
    url = f"/console/api/calls/{record.call_control_id}/recording" if record.recording_path else None
    data = record.to_json(full=True, recording_url=url)
    data["cost"] = views.cost_estimate(record, prices(state))
    data["v2v_p50_ms"] = views.call_row(record)["v2v_p50_ms"]
    return data


def prices(state: ServerState) -> views.Prices:
    """The per-unit prices from the settings."""
    s = state.settings
    return views.Prices(
        telephony_per_min=s.price_telephony_per_min,
        stt_per_min=s.price_stt_per_min,
        llm_prompt_per_million=s.price_llm_prompt_per_million,
        llm_completion_per_million=s.price_llm_completion_per_million,
        tts_per_million_chars=s.price_tts_per_million_chars,
    )


async def live_calls(store: CallStore) -> list[dict[str, Any]]:
    """The in-progress calls, newest first, each with what is being said now."""
    page = await store.list_calls(CallFilter(end_reason=IN_PROGRESS, limit=LIVE_MAX_CALLS))
    now = time.time()
    rows = []
    for record in page.calls:
        full = record if record.turns else (await store.get_call(record.call_control_id)) or record
        rows.append(views.live_row(full, now))
    return rows


async def _recent(store: CallStore, *, since: float) -> list[CallRecord]:
    records: list[CallRecord] = []
    cursor: str | None = None
    while len(records) < OVERVIEW_MAX_CALLS:
        page = await store.list_calls(CallFilter(since=since, limit=200, cursor=cursor))
        records.extend(page.calls)
        cursor = page.next_cursor
        if cursor is None:
            break
    return records


async def hang_up(state: ServerState, call_control_id: str) -> str:
    """End a live call, whichever instance holds it (the operator API's own path).

    ``"local"``/``"forwarded"`` on success, ``"not_found"`` or ``"failed"`` otherwise.
    """
    from callpipe.server.control import ControlEvent, dispatch

    return await dispatch(state, call_control_id, ControlEvent(kind="hangup"))


def _params(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > MAX_PARAMS:
        raise ValueError(f"custom_parameters must be an object of at most {MAX_PARAMS} entries")
    params = {str(k): str(v) for k, v in value.items()}
    if any(len(k) > MAX_PARAM_CHARS or len(v) > MAX_PARAM_CHARS for k, v in params.items()):
        raise ValueError(f"custom parameter names and values are at most {MAX_PARAM_CHARS} characters")
    return params


def _number(value: Any, default: str) -> str:
    text = str(value or default).strip()
    if len(text) > 32 or not all(c.isalnum() or c in "+-:@._" for c in text):
        raise ValueError("from/to must be a phone number or a short SIP-style name")
    return text


def phone_call(state: ServerState, request: Any) -> dict[str, Any]:
    """A browser call's identity, media format and signed, single-call stream URL query."""
    from callpipe.server.stream_options import StreamOptions
    from callpipe.server.urls import stream_url

    if not isinstance(request, dict):
        raise ValueError("the request body must be a JSON object")
    hd = bool(request.get("hd"))
    ccid = f"v3:console-{uuid.uuid4().hex}"
    # The page plays what it sends (one codec both ways): the URL tells /ws so.
    media = (
        StreamOptions(codec="L16", sampling_rate=16000)
        if hd
        else StreamOptions(codec="PCMU", sampling_rate=8000)
    )
    url = stream_url(
        state.settings,
        direction="inbound",
        call_sid=ccid,
        extra={},
        ttl=PHONE_TOKEN_TTL_SECS,
        media=media.url_params(),
    )
    return {
        "call_control_id": ccid,
        "call_session_id": f"console-session-{uuid.uuid4().hex[:12]}",
        "stream_id": str(uuid.uuid4()),
        "stream_query": urlsplit(url).query,
        "encoding": "L16" if hd else "PCMU",
        "sample_rate": 16000 if hd else 8000,
        "from": _number(request.get("from"), "+15550100001"),
        "to": _number(request.get("to"), state.settings.telnyx_phone_number or "+15550100002"),
        "custom_parameters": _params(request.get("custom_parameters")),
    }
