"""``/api/calls``: the call records, read back (list, one call, its recording).

Every endpoint needs ``Authorization: Bearer $CALLPIPE_API_KEY``: 401 without it, 503
when no key is configured (the records hold personal data; they are never open).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import SQLAlchemyError

from callpipe.records.model import END_REASONS, CallRecord
from callpipe.server.api_key import api_key_denial
from callpipe.server.endpoints import error
from callpipe.server.recordings import recording_response
from callpipe.store.base import CallFilter, CallStore
from callpipe.store.queries import MAX_LIMIT, CursorError, parse_iso8601

if TYPE_CHECKING:
    from callpipe.server.state import ServerState

__all__ = ["recording_url", "router"]

logger = logging.getLogger("callpipe.server")

router = APIRouter(prefix="/api/calls")


class _ApiError(Exception):
    """A refused request; ``response`` is its answer."""

    def __init__(self, response: JSONResponse) -> None:
        super().__init__(response.status_code)
        self.response = response


def recording_url(record: CallRecord) -> str | None:
    """The API path of a record's recording, ``None`` without one."""
    if not record.recording_path:
        return None
    return f"/api/calls/{quote(record.call_control_id, safe=':')}/recording"


def _store(request: Request) -> CallStore:
    state: ServerState = request.app.state.callpipe
    denial = api_key_denial(
        request,
        state.settings.secret("callpipe_api_key"),
        disabled_code="api_disabled",
        disabled_detail="the calls API needs CALLPIPE_API_KEY to be set",
    )
    if denial is not None:
        raise _ApiError(denial)
    if state.store is None:
        raise _ApiError(error(503, "records_off", "call records are off on this server (RECORDS=off)"))
    return state.store


def _time(params: Any, name: str) -> float | None:
    text = params.get(name)
    if not text:
        return None
    try:
        return parse_iso8601(text, name)
    except ValueError as exc:
        raise _ApiError(error(422, "bad_time", str(exc))) from None


def _filter(request: Request) -> CallFilter:
    params = request.query_params
    try:
        limit = int(params.get("limit", "50"))
    except ValueError:
        raise _ApiError(error(422, "bad_limit", "limit must be an integer")) from None
    if not 1 <= limit <= MAX_LIMIT:
        raise _ApiError(error(422, "bad_limit", f"limit must be between 1 and {MAX_LIMIT}"))
    direction = params.get("direction") or None
    if direction not in (None, "inbound", "outbound"):
        raise _ApiError(error(422, "bad_direction", "direction must be 'inbound' or 'outbound'"))
    end_reason = params.get("end_reason") or None
    if end_reason is not None and end_reason not in END_REASONS:
        raise _ApiError(error(422, "bad_end_reason", f"end_reason must be one of {', '.join(END_REASONS)}"))
    return CallFilter(
        direction=direction,
        number=params.get("number") or None,
        since=_time(params, "since"),
        until=_time(params, "until"),
        end_reason=end_reason,
        text=params.get("q") or None,
        limit=limit,
        cursor=params.get("cursor") or None,
    )


def _unavailable(exc: Exception) -> JSONResponse:
    logger.warning("calls API: the store failed (%s)", type(exc).__name__)
    return error(503, "store_unavailable", "the call store is not answering; try again")


@router.get("")
async def list_calls(request: Request) -> Response:
    """Calls, newest first: ``{"calls": [...], "next_cursor": ...}`` (filters in the query)."""
    try:
        store = _store(request)
        page = await store.list_calls(_filter(request))
    except _ApiError as exc:
        return exc.response
    except CursorError as exc:
        return error(400, "bad_cursor", str(exc))
    except (SQLAlchemyError, OSError) as exc:
        return _unavailable(exc)
    items = [record.to_json(full=False, recording_url=recording_url(record)) for record in page.calls]
    return JSONResponse({"calls": items, "next_cursor": page.next_cursor})


async def _record(request: Request, call_control_id: str) -> CallRecord | Response:
    """The call's record, or the answer to give instead (503 if the store fails, 404 if none)."""
    try:
        record = await _store(request).get_call(call_control_id)
    except _ApiError as exc:
        return exc.response
    except (SQLAlchemyError, OSError) as exc:
        return _unavailable(exc)
    if record is None:
        return error(404, "not_found", f"no call {call_control_id!r} in the records")
    return record


@router.get("/{call_control_id}")
async def get_call(request: Request, call_control_id: str) -> Response:
    """One whole record: turns, latency breakdown, events, usage."""
    record = await _record(request, call_control_id)
    if isinstance(record, Response):
        return record
    return JSONResponse(record.to_json(full=True, recording_url=recording_url(record)))


@router.get("/{call_control_id}/recording")
async def get_recording(request: Request, call_control_id: str) -> Response:
    """The call's stereo WAV (caller left, bot right), from any instance; Range requests work."""
    record = await _record(request, call_control_id)
    if isinstance(record, Response):
        return record
    return await recording_response(request.app.state.callpipe, request, record, f"{call_control_id}.wav")
