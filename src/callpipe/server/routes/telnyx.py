"""The routes Telnyx reaches: ``/texml`` (dial-in), ``/answer`` (dial-out), ``/webhooks/telnyx``.

The handlers themselves (authentication, replay checks) are in
:mod:`callpipe.server.endpoints`; here they are bound to their paths, and each webhook
event is delivered to the call it is for, on whichever instance holds it.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from callpipe.server.delivery import ControlEvent, dispatch, spawn_hangup
from callpipe.server.endpoints import receive_webhook, serve_answer, serve_texml
from callpipe.server.records import record_stream_failed, record_unanswered
from callpipe.server.state import ServerState
from callpipe.server.telnyx_auth import TelnyxRequestAuth
from callpipe.services.warm_transfer import transfer_of

__all__ = ["handle_webhook", "telnyx_router"]

logger = logging.getLogger("callpipe.server")


def telnyx_router(state: ServerState, telnyx_auth: TelnyxRequestAuth) -> APIRouter:
    """``/texml``, ``/texml/{path_secret}``, ``/answer`` and ``/webhooks/telnyx``."""
    router = APIRouter(include_in_schema=False)

    @router.api_route("/texml", methods=["GET", "POST"])
    async def texml(request: Request) -> Response:
        """Telnyx asks what to do with an incoming call (signed): stream it to /ws."""
        return await serve_texml(state, telnyx_auth, request, None)

    @router.api_route("/texml/{path_secret}", methods=["GET", "POST"])
    async def texml_with_secret(request: Request, path_secret: str) -> Response:
        """The same, authenticated by the voice URL's secret path segment (TEXML_PATH_SECRET)."""
        return await serve_texml(state, telnyx_auth, request, path_secret)

    @router.api_route("/answer", methods=["GET", "POST"])
    async def answer(request: Request) -> Response:
        """Telnyx fetches this when an outbound call is answered: stream it, body and all."""
        return await serve_answer(state, request)

    @router.post("/webhooks/telnyx")
    async def webhooks(request: Request) -> Response:
        """Call lifecycle events from Telnyx (signed with TELNYX_PUBLIC_KEY; each applied once)."""
        return await receive_webhook(state, telnyx_auth, request, handle_webhook)

    return router


async def handle_webhook(state: ServerState, event_type: str, ccid: str, payload: dict[str, Any]) -> None:
    """Deliver a Telnyx event to the call: here, or at the instance that holds it."""
    caller = transfer_of(payload.get("client_state"))
    if caller is not None and caller != ccid:
        # An agent leg of a warm transfer: its events belong to the caller's call.
        leg = ControlEvent(kind="transfer_leg", event_type=event_type, payload=payload)
        await dispatch(state, caller, leg)
        return
    event = ControlEvent(kind="webhook", event_type=event_type, payload=payload)
    result = await dispatch(state, ccid, event)
    if result == "not_found" and event_type == "streaming.failed":
        # The stream never reached a bot (or its instance is gone): record why, end the call.
        record_stream_failed(state, ccid, payload)
        if state.telnyx is not None:
            spawn_hangup(state, ccid)
    if result == "not_found" and event_type == "call.hangup" and not record_unanswered(state, ccid, payload):
        logger.info("call.hangup for %s: no live call here or elsewhere", ccid)
