"""The operator's call API: ``POST /api/calls/{id}/hangup`` and ``/transfer``.

Both need ``Authorization: Bearer $CALLPIPE_API_KEY`` and act on the call whichever
instance holds it (:func:`callpipe.server.delivery.dispatch`); a transfer's destination
must be on ``TRANSFER_ALLOWED_NUMBERS``.
"""

from __future__ import annotations

import logging

import msgspec
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from callpipe.server.api_key import api_key_denial
from callpipe.server.bodies import BodyTooLarge, read_capped
from callpipe.server.delivery import ControlEvent, dispatch
from callpipe.server.endpoints import error
from callpipe.server.state import ServerState
from callpipe.services.call_policy import PolicyError, TransferPolicy
from callpipe.telnyx.api import TelnyxError

__all__ = ["control_router"]

logger = logging.getLogger("callpipe.server.control")


def control_router(state: ServerState) -> APIRouter:
    """``POST /api/calls/{id}/hangup`` and ``/transfer``, with ``Bearer CALLPIPE_API_KEY``."""
    router = APIRouter()

    @router.post("/api/calls/{ccid}/hangup")
    async def hangup(ccid: str, request: Request) -> Response:
        """End a live call, whichever instance holds it."""
        denied = _denial(state, request)
        if denied is not None:
            return denied
        return await _act(state, ccid, ControlEvent(kind="hangup"))

    @router.post("/api/calls/{ccid}/transfer")
    async def transfer(ccid: str, request: Request) -> Response:
        """Transfer a live call: ``{"to": "+E164" or "sip:…"}``."""
        denied = _denial(state, request)
        if denied is not None:
            return denied
        to = await _transfer_destination(state, request, ccid)
        if isinstance(to, Response):
            return to
        return await _act(state, ccid, ControlEvent(kind="transfer", to=to))

    return router


async def _act(state: ServerState, ccid: str, event: ControlEvent) -> Response:
    """Apply ``event`` to the call, wherever it lives; the answer says how it went."""
    try:
        result = await dispatch(state, ccid, event)
    except TelnyxError as exc:
        return error(502, "telnyx_error", str(exc))
    if result == "not_found":
        return error(404, "no_such_call", "no live call with this call_control_id")
    if result == "failed":
        return error(502, "forward_failed", "the instance holding the call did not answer")
    if result == "telnyx_error":
        return error(502, "telnyx_error", "Telnyx refused the action (see the holding instance's log)")
    return JSONResponse({"ok": True, "call_control_id": ccid, "handled": result})


async def _transfer_destination(state: ServerState, request: Request, ccid: str) -> str | Response:
    """The allowed ``to`` of a transfer request, or the answer refusing it (413, 422, 403)."""
    try:
        raw = await read_capped(request, state.settings.max_body_bytes)
    except BodyTooLarge as exc:
        return error(413, "too_large", str(exc))
    try:
        to = msgspec.json.decode(raw).get("to") if raw else None
    except (msgspec.DecodeError, AttributeError):
        to = None
    if not isinstance(to, str) or not to:
        return error(422, "bad_destination", 'the body must be {"to": "+E164 number"}')
    try:
        return _allowed_destination(state, to)
    except PolicyError as exc:
        logger.warning("operator transfer of %s refused: not on TRANSFER_ALLOWED_NUMBERS", ccid)
        return error(403, "transfer_not_allowed", str(exc))


def _allowed_destination(state: ServerState, to: str) -> str:
    """``to`` normalised if ``TRANSFER_ALLOWED_NUMBERS`` allows it, else :class:`PolicyError`.

    The same allowlist the bot's ``transfer_call`` tool obeys: an API key that leaks must
    not be a way to bridge calls to premium-rate numbers either. It holds E.164 numbers
    and prefixes only, so SIP URIs are refused; empty, it allows no transfer at all.
    """
    policy = TransferPolicy.parse(state.settings.transfer_allowed_numbers)
    try:
        return policy.check(to)
    except PolicyError:
        # The policy's own message speaks to the model; the operator gets the setting's name.
        shown = to if to.startswith("+") else "this destination"
        raise PolicyError(
            f"transfers to {shown} are not allowed: TRANSFER_ALLOWED_NUMBERS must list the E.164 "
            "number or a +prefix* matching it (SIP URIs cannot be allowed)"
        ) from None


def _denial(state: ServerState, request: Request) -> Response | None:
    """The API-key refusal of ``request``, ``None`` when it may act."""
    return api_key_denial(
        request,
        state.settings.secret("callpipe_api_key"),
        disabled_code="api_disabled",
        disabled_detail="the call API needs CALLPIPE_API_KEY",
    )
