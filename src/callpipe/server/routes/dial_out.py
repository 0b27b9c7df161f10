"""``POST /start``: place an outbound call (Telnyx TeXML Calls API or Call Control dial).

The request is checked here in full (number, body, AMD, stream options) before anything
is dialled; the dial itself runs once per ``Idempotency-Key`` and under the dial rate
limit. What Telnyx is given carries the body in the call's URLs (see
:mod:`callpipe.server.urls`), so any instance can answer the call.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import msgspec
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from callpipe.log import mask_number
from callpipe.server import stream_options
from callpipe.server.api_key import api_key_denial
from callpipe.server.bodies import BodyTooLarge, read_capped
from callpipe.server.endpoints import claim_idempotency_key, error, error_body, idempotent_start
from callpipe.server.settings import ServerSettings
from callpipe.server.state import ServerState
from callpipe.server.tokens import sign_expiring
from callpipe.server.urls import encode_body, http_base, stream_url
from callpipe.services.call_policy import E164
from callpipe.telnyx.api import TelnyxClient, TelnyxError

__all__ = ["AMD_MODES", "StartRequest", "dial", "dial_out_router", "parse_start"]

logger = logging.getLogger("callpipe.server")

# Telnyx's ``answering_machine_detection`` values (its AMD guide); ``false`` means off.
AMD_MODES = ("premium", "detect", "detect_beep", "detect_words", "greeting_end")


@dataclass(frozen=True, slots=True)
class StartRequest:
    """A checked ``/start`` request: whom to call, the bot's body, AMD and stream options."""

    number: str
    body: dict[str, Any]
    amd: str | None
    stream: stream_options.StreamOptions | None


def dial_out_router(state: ServerState) -> APIRouter:
    """``POST /start``, with ``Bearer CALLPIPE_API_KEY``."""
    router = APIRouter()

    @router.post("/start")
    async def start(request: Request) -> Response:
        """Place an outbound call: ``{"phone_number": "+E164", "body": {...}}``."""
        return await start_call(state, request)

    return router


async def start_call(state: ServerState, request: Request) -> Response:
    """``/start``: authenticate, check the request, then dial once per Idempotency-Key."""
    settings = state.settings
    denied = api_key_denial(
        request,
        settings.secret("callpipe_api_key"),
        disabled_code="dial_out_disabled",
        disabled_detail="dial-out needs CALLPIPE_API_KEY and Telnyx settings",
    )
    if denied is not None:
        return denied
    try:
        raw = await read_capped(request, settings.max_body_bytes)
    except BodyTooLarge as exc:
        return error(413, "too_large", str(exc))
    checked = parse_start(settings, dict(request.query_params), raw)
    if isinstance(checked, JSONResponse):
        return checked
    idempotency_key = request.headers.get("idempotency-key")
    place = functools.partial(_place, state, checked, idempotency_key)
    return await idempotent_start(state, idempotency_key, checked.number, checked.body, place)


def parse_start(settings: ServerSettings, query: dict[str, Any], raw: bytes) -> StartRequest | JSONResponse:
    """The ``/start`` request from its query and JSON body (the body wins), or its 400/422."""
    payload = dict(query)
    if raw:
        try:
            parsed = msgspec.json.decode(raw)
        except msgspec.DecodeError:
            return error(400, "bad_json", "the request body must be JSON")
        if not isinstance(parsed, dict):
            return error(400, "bad_json", "the request body must be a JSON object")
        payload.update(parsed)
    number = payload.get("phone_number")
    if not isinstance(number, str) or not E164.match(number):
        return error(422, "bad_phone_number", "phone_number must be an E.164 number like +15551234567")
    body = payload.get("body", {})
    if isinstance(body, str):
        try:
            body = msgspec.json.decode(body)
        except msgspec.DecodeError:
            return error(422, "bad_body", "body must be a JSON object")
    if not isinstance(body, dict):
        return error(422, "bad_body", "body must be a JSON object")
    amd = _amd_of(payload.get("amd"))
    if amd is not None and amd not in AMD_MODES:
        return error(422, "bad_amd", f"amd must be one of {', '.join(AMD_MODES)} or false")
    if amd is not None and settings.dial_mode != "call_control":
        return error(422, "bad_amd", "amd needs DIAL_MODE=call_control (Telnyx's dial request)")
    try:
        stream = stream_options.from_request(settings, payload)
    except ValueError as exc:
        return error(422, "bad_stream", str(exc))
    if stream is not None and settings.dial_mode != "call_control":
        return error(422, "bad_stream", "stream_* fields need DIAL_MODE=call_control (Telnyx's dial request)")
    return StartRequest(number=number, body=body, amd=amd, stream=stream)


def _amd_of(value: Any) -> str | None:
    """``/start``'s ``amd``: ``None`` when off (absent, ``false``, ``"false"``), else the string given."""
    if value is None or value is False or value in ("", "false"):
        return None
    return value if isinstance(value, str) else repr(value)


async def _place(
    state: ServerState, start: StartRequest, idempotency_key: str | None
) -> tuple[int, dict[str, Any]]:
    """Dial, unless draining, rate-limited, unconfigured or already dialled for the key."""
    settings = state.settings
    if state.draining:
        return 503, error_body("shutting_down", "the server is shutting down")
    if not await state.take_dial_slot():
        return 429, error_body("rate_limited", f"at most {settings.dial_rate_per_sec:g} dials per second")
    if state.telnyx is None or not settings.dial_out_configured:
        return 503, error_body("dial_out_disabled", "dial-out needs TELNYX_API_KEY and the dial settings")
    if idempotency_key and not await claim_idempotency_key(state, idempotency_key):
        return 409, error_body(
            "idempotency_conflict",
            "this Idempotency-Key was used before, on another instance: no second call was placed",
        )
    try:
        return 200, await dial(state, start.number, start.body, amd=start.amd, stream=start.stream)
    except TelnyxError as exc:
        logger.error("dial-out to %s failed: %s", mask_number(start.number), exc)
        return 502, error_body("telnyx_error", str(exc))


async def dial(
    state: ServerState,
    number: str,
    body: dict[str, Any],
    *,
    amd: str | None = None,
    stream: stream_options.StreamOptions | None = None,
) -> dict[str, Any]:
    """Ask Telnyx to call ``number`` (as DIAL_MODE says); what ``/start`` answers with."""
    settings = state.settings
    assert state.telnyx is not None
    encoded = encode_body(body)
    if len(encoded) > settings.max_body_bytes * 2:
        raise TelnyxError("body too large to carry in the call's URL")
    if settings.dial_mode == "texml":
        call_control_id, data = await _dial_texml(settings, state.telnyx, number, encoded)
    else:
        call_control_id, data = await _dial_call_control(settings, state.telnyx, number, encoded, amd, stream)
    logger.info("dialled %s: %s", mask_number(number), call_control_id)
    return {
        "call_control_id": call_control_id,
        "status": str(data.get("status", "queued")),
        "phone_number": number,
    }


async def _dial_texml(
    settings: ServerSettings, telnyx: TelnyxClient, number: str, encoded: str
) -> tuple[str, dict[str, Any]]:
    """TeXML Calls API: Telnyx fetches our signed ``/answer`` URL once the callee answers."""
    query = {"body": encoded}
    secret = settings.secret("callpipe_secret")
    if secret:
        query["exp"], query["sig"] = sign_expiring(
            secret, "answer", encoded, ttl=settings.answer_url_ttl_secs
        )
    answer_url = f"{http_base(settings)}/answer?{urlencode(query)}"
    data = await telnyx.texml_call(
        account_sid=settings.telnyx_account_sid or "",
        application_sid=settings.telnyx_application_sid or "",
        to=number,
        from_=settings.telnyx_phone_number or "",
        url=answer_url,
    )
    return str(data.get("call_sid") or data.get("call_control_id") or ""), data


async def _dial_call_control(
    settings: ServerSettings,
    telnyx: TelnyxClient,
    number: str,
    encoded: str,
    amd: str | None,
    stream: stream_options.StreamOptions | None,
) -> tuple[str, dict[str, Any]]:
    """Call Control dial: the stream URL goes with the dial request itself."""
    # Bound to no call (its id comes back from this dial): UNBOUND_TOKEN_TTL_SECS, one use.
    # The AMD mode rides on the stream URL (``call_data["query_params"]["amd"]``) so the
    # bot knows to wait for the result; the results come back as webhooks to us.
    extra = {"amd": amd} if amd else {}
    options = stream or stream_options.from_settings(settings)
    url = stream_url(
        settings,
        direction="outbound",
        call_sid=None,
        extra=extra,
        body=encoded,
        media=options.url_params(),
    )
    data = await telnyx.dial(
        to=number,
        from_=settings.telnyx_phone_number or "",
        connection_id=settings.telnyx_connection_id or "",
        stream_url=url,
        answering_machine_detection=amd,
        webhook_url=f"{http_base(settings)}/webhooks/telnyx" if amd else None,
        **options.dial_fields(),
    )
    return str(data.get("call_control_id", "")), data
