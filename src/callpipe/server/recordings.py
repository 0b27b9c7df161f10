"""A call's recording from any instance.

A recording is written to the disk of the process that held the call (``RECORDING_DIR``).
``GET /api/calls/{id}/recording`` (and the console's copy of it) is answered:

* from this disk when the file is under this instance's ``RECORDING_DIR`` (our own
  call, or a directory every instance mounts at the same path);
* else, when the record's instance is alive, by streaming it from that instance's
  internal control listener (``GET /internal/calls/{id}/recording``, HMAC-signed with
  the key control forwards use), passing ``Range``/``If-Range`` on and the status,
  length and range headers back, so seeking in a player works through any instance;
* else from this disk if the file is visible here anyway, or with a 404 that says
  which instance's disk holds it.

The owner serves only the path its own store row names (never a path from the request),
so the internal route reads nothing but recordings.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.background import BackgroundTask

from callpipe.records.model import IN_PROGRESS, CallRecord
from callpipe.server.forward_signing import FORWARD_HEADER, sign_forward, verify_forward
from callpipe.server.recording_file import attachment, recording_file_response
from callpipe.server.records import recording_dir

if TYPE_CHECKING:
    from callpipe.server.state import ServerState

__all__ = ["SERVED_BY_HEADER", "add_internal_route", "recording_response"]

logger = logging.getLogger("callpipe.server")

# Which instance's disk the bytes came from (local or proxied): for operators and tests.
SERVED_BY_HEADER = "X-Callpipe-Recording-Instance"
_PASSED_ON = ("range", "if-range")
_PASSED_BACK = (
    "content-type",
    "content-length",
    "content-range",
    "accept-ranges",
    "etag",
    "last-modified",
    SERVED_BY_HEADER.lower(),
)
# Reading a long recording through the proxy: each chunk within this many seconds.
READ_TIMEOUT_SECS = 30.0


def _error(status: int, code: str, detail: str, **extra: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "detail": detail, **extra}}, status_code=status)


def _signed_message(call_control_id: str) -> bytes:
    # Not JSON: a recording request's signature can never pass as a forwarded event's.
    return b"GET recording " + call_control_id.encode()


def _is_file(path: str, directory: Path | None) -> bool:
    resolved = Path(path).resolve()
    return (directory is None or resolved.is_relative_to(directory.resolve())) and resolved.is_file()


async def _file(path: str | None, directory: Path | None = None) -> str | None:
    """``path`` if it is a file (under ``directory``, when given); the stats run off the loop."""
    if not path:
        return None
    found: bool = await asyncio.to_thread(_is_file, path, directory)
    return path if found else None


async def _owner_url(state: ServerState, owner: str) -> str | None:
    assert state.store is not None
    try:
        async with asyncio.timeout(state.settings.forward_timeout_secs):
            return await state.store.instance_url(owner)
    except Exception as exc:
        logger.warning("recording of a call on %s: owner lookup failed (%s)", owner, type(exc).__name__)
        return None


async def recording_response(
    state: ServerState, request: Request, record: CallRecord, filename: str
) -> Response:
    """The recording of ``record``: from this disk, proxied from its instance, or a clear 404.

    Under this instance's RECORDING_DIR the file is ours to serve. Anywhere else a live
    owner serves it: on one box another instance's directory is visible too, but only
    the owner knows its file (it may still be writing it). With the owner gone, a file
    this disk can still see is served (an earlier RECORDING_DIR, a stopped neighbour).
    """
    path = record.recording_path
    if not path:
        return _error(404, "no_recording", "this call has no recording")
    store = state.store
    here = store.instance_id if store is not None else ""
    directory = recording_dir(state.settings)
    local = await _file(path, directory) if directory is not None else None
    owner = record.instance or ""
    if local is None and store is not None and state.control is not None and owner and owner != here:
        url = await _owner_url(state, owner)
        if url is not None:
            return await _proxy(state, request, record.call_control_id, owner, url, filename)
    local = local or await _file(path)
    if local is not None:
        return recording_file_response(
            local,
            live=record.end_reason == IN_PROGRESS,
            range_requested="range" in request.headers,
            filename=filename,
            headers={SERVED_BY_HEADER: here},
        )
    if owner and owner != here and store is not None:
        why = (
            "which is not running"
            if state.control is not None
            else "and without CALLPIPE_SECRET this server fetches no recordings from other instances"
        )
        return _error(
            404,
            "recording_unreachable",
            f"the recording is on the disk of instance {owner}, {why}; a RECORDING_DIR on storage "
            "every instance mounts at the same path makes it readable from any of them",
            instance=owner,
        )
    return _error(
        404,
        "recording_missing",
        "the recording file is not on this server's disk (deleted by retention, or the disk was lost)",
    )


async def _proxy(
    state: ServerState, request: Request, ccid: str, owner: str, url: str, filename: str
) -> Response:
    assert state.control is not None
    headers = {k: v for k, v in request.headers.items() if k.lower() in _PASSED_ON}
    headers[FORWARD_HEADER] = sign_forward(state.control.secret, _signed_message(ccid))
    timeout = httpx.Timeout(state.settings.forward_timeout_secs, read=READ_TIMEOUT_SECS)
    client = httpx.AsyncClient(timeout=timeout)
    target = f"{url.rstrip('/')}/internal/calls/{quote(ccid, safe='')}/recording"
    try:
        upstream = await client.send(client.build_request("GET", target, headers=headers), stream=True)
    except httpx.HTTPError as exc:
        await client.aclose()
        logger.warning(
            "recording of a call on %s: the instance did not answer (%s)", owner, type(exc).__name__
        )
        return _error(
            502, "recording_proxy_failed", f"instance {owner} holds the recording but did not answer"
        )

    async def close() -> None:
        await upstream.aclose()
        await client.aclose()

    if upstream.status_code not in (200, 206, 416):
        await close()
        if upstream.status_code == 404:
            return _error(404, "recording_missing", f"instance {owner} no longer has the recording file")
        logger.warning("recording of a call on %s: the instance answered %d", owner, upstream.status_code)
        return _error(502, "recording_proxy_failed", f"instance {owner} refused the recording request")

    async def body() -> AsyncIterator[bytes]:
        try:
            async for chunk in upstream.aiter_raw():
                yield chunk
        finally:  # also when the client goes away mid-file: the owner's connection is let go
            await close()

    passed = {k: v for k, v in upstream.headers.items() if k.lower() in _PASSED_BACK}
    passed["content-disposition"] = attachment(filename)
    return StreamingResponse(
        body(),
        status_code=upstream.status_code,
        headers=passed,
        background=BackgroundTask(close),
    )


def add_internal_route(app: FastAPI, state: ServerState, secret: str) -> None:
    """``GET /internal/calls/{id}/recording`` on the internal listener (signed requests only)."""

    @app.get("/internal/calls/{ccid:path}/recording")
    async def recording(ccid: str, request: Request) -> Response:
        if not verify_forward(secret, _signed_message(ccid), request.headers.get(FORWARD_HEADER)):
            logger.warning("refused a recording request with a bad or stale signature")
            return _error(401, "bad_signature", "recording requests must be signed with CALLPIPE_SECRET")
        store = state.store
        record = await store.get_call(ccid) if store is not None else None
        path = await _file(record.recording_path) if record is not None else None
        if record is None or path is None:
            return _error(404, "recording_missing", "no recording of this call on this instance's disk")
        here = store.instance_id if store is not None else ""
        return recording_file_response(
            path,
            live=record.end_reason == IN_PROGRESS,
            range_requested="range" in request.headers,
            filename=None,
            headers={SERVED_BY_HEADER: here},
        )
