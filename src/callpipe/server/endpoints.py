"""The handlers of the Telnyx-facing endpoints and ``/start``'s idempotency, outside ``create_app``.

``/texml`` and ``/answer`` answer TeXML only to requests that prove where they come from
(see :mod:`callpipe.server.telnyx_auth` and the threat model in docs/architecture.md),
``/webhooks/telnyx`` applies each signed event once, ``/ws`` claims each stream token once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from callpipe.server.bodies import BodyTooLarge, read_capped, read_form_or_query
from callpipe.server.idempotency import IdempotencyConflict, check_key, request_digest
from callpipe.server.telnyx_auth import RequestAuthError, TelnyxRequestAuth
from callpipe.server.tokens import StreamToken, TokenError, check_expiring
from callpipe.server.urls import decode_body, stream_url, texml_document
from callpipe.store.base import CallStore
from callpipe.telnyx.webhooks import DEFAULT_TOLERANCE, parse_webhook_event

if TYPE_CHECKING:
    from callpipe.server.state import ServerState

__all__ = [
    "MAX_FORM_BYTES",
    "claim_idempotency_key",
    "claim_stream_token",
    "error",
    "error_body",
    "idempotent_start",
    "receive_webhook",
    "serve_answer",
    "serve_texml",
    "xml_response",
]

logger = logging.getLogger("callpipe.server")

WebhookHandler = Callable[["ServerState", str, str, dict[str, Any]], Awaitable[None]]


# Largest TeXML request body read (Telnyx sends a dozen short form fields).
MAX_FORM_BYTES = 64 * 1024


def xml_response(text: str) -> Response:
    """A TeXML answer."""
    return Response(content=text, media_type="application/xml")


def error_body(code: str, detail: str) -> dict[str, Any]:
    """The JSON of every error answer: ``{"error": {"code", "detail"}}``."""
    return {"error": {"code": code, "detail": detail}}


def error(status: int, code: str, detail: str) -> JSONResponse:
    """An error answer with ``status``."""
    return JSONResponse(error_body(code, detail), status_code=status)


async def idempotent_start(
    state: ServerState,
    key: str | None,
    number: str,
    body: dict[str, Any],
    place: Callable[[], Awaitable[tuple[int, dict[str, Any]]]],
) -> Response:
    """Run ``place`` once per ``Idempotency-Key`` (a retry gets the first answer; see idempotency)."""
    if key is None:
        status, content = await place()
        return JSONResponse(content, status_code=status)
    try:
        check_key(key)
    except ValueError as exc:
        return error(400, "bad_idempotency_key", str(exc))
    try:
        (status, content), replayed = await state.idempotency.run(key, request_digest(number, body), place)
    except IdempotencyConflict as exc:
        return error(409, "idempotency_conflict", str(exc))
    headers = {"Idempotent-Replayed": "true"} if replayed else None
    return JSONResponse(content, status_code=status, headers=headers)


def _store(state: ServerState) -> CallStore | None:
    # The call store shared by every instance on one database, when there is one.
    return state.store


async def claim_idempotency_key(state: ServerState, key: str) -> bool:
    """Whether no instance placed a call for ``key`` yet (claimed in the store when there is one).

    The per-process :class:`~callpipe.server.idempotency.IdempotencyCache` answers a retry
    that comes back to the same instance with the first answer; this claim, made just
    before dialling, stops one that lands on another instance from dialling again.
    """
    ttl = state.settings.idempotency_ttl_secs
    return await state.replay.claim(f"idem:{key}", time.time() + ttl, _store(state))


async def claim_stream_token(state: ServerState, claims: StreamToken) -> bool:
    """A stream token opens one stream, on any instance (its id is claimed until it expires)."""
    return await state.replay.claim(f"tok:{claims.token_id}", claims.expires_at, _store(state))


async def serve_texml(
    state: ServerState, auth: TelnyxRequestAuth, request: Request, path_secret: str | None
) -> Response:
    """``/texml``: authenticate Telnyx, then a TeXML document with a call-bound stream URL."""
    settings = state.settings
    try:
        values, raw = await read_form_or_query(request, MAX_FORM_BYTES)
        signed = auth.check_texml(raw, request.headers, path_secret)
    except BodyTooLarge as exc:
        return error(413, "too_large", str(exc))
    except RequestAuthError as exc:
        return error(exc.status, exc.code, exc.detail)
    if signed is not None and not await state.replay.claim(
        signed.replay_key, signed.expires_at, _store(state)
    ):
        logger.warning("rejected TeXML request: its signature was used before")
        return error(409, "replayed", "this signed request was already answered")
    # Never a body: only /answer URLs that /start signed carry one.
    url = stream_url(
        settings, direction="inbound", call_sid=values.get("CallSid"), extra=dict(request.query_params)
    )
    return xml_response(texml_document(settings, url))


async def serve_answer(state: ServerState, request: Request) -> Response:
    """``/answer``: a URL /start signed (with an expiry), fetched once when the callee answers."""
    settings = state.settings
    try:
        values, _ = await read_form_or_query(request, MAX_FORM_BYTES)
    except BodyTooLarge as exc:
        return error(413, "too_large", str(exc))
    query = request.query_params
    body = query.get("body", "")
    secret = settings.secret("callpipe_secret")
    if secret:
        try:
            # Only /start issues /answer URLs: anything else is a forged or altered body.
            check_expiring(secret, "answer", body, query.get("exp"), query.get("sig"))
        except TokenError as exc:
            return error(403, "bad_signature", f"{exc} (/answer URLs come from POST /start)")
        expires_at = float(query.get("exp") or 0)
        if not await state.replay.claim(f"answer:{query.get('sig')}", expires_at, _store(state)):
            return error(409, "replayed", "this /answer URL was already used")
    try:
        decode_body(body)
    except ValueError as exc:
        return error(400, "bad_body", str(exc))
    url = stream_url(
        settings, direction="outbound", call_sid=values.get("CallSid"), extra=dict(query), body=body
    )
    return xml_response(texml_document(settings, url))


async def receive_webhook(
    state: ServerState, auth: TelnyxRequestAuth, request: Request, handle: WebhookHandler
) -> Response:
    """``/webhooks/telnyx``: verify, drop replays (by event id), then act on the event."""
    try:
        raw = await read_capped(request, state.settings.max_webhook_bytes)
        signed = auth.check_webhook(raw, request.headers)
    except BodyTooLarge as exc:
        return error(413, "too_large", str(exc))
    except RequestAuthError as exc:
        return error(exc.status, exc.code, exc.detail)
    try:
        event = parse_webhook_event(raw)
    except ValueError as exc:
        return error(400, "bad_event", str(exc))
    # A replay inside the tolerance window carries a valid signature: the event id (else the
    # signature) is what tells it apart. Telnyx retrying a delivery gets 200 either way.
    expires_at = signed.expires_at if signed is not None else time.time() + DEFAULT_TOLERANCE
    key = f"event:{event.id}" if event.id else (signed.replay_key if signed is not None else "")
    if key and not await state.replay.claim(key, expires_at, _store(state)):
        logger.info("ignored a repeated webhook %s", event.event_type)
        return JSONResponse({"ok": True, "duplicate": True})
    await handle(state, event.event_type, event.call_control_id or "", event.payload)
    return JSONResponse({"ok": True})
