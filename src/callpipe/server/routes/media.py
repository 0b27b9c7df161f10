"""``/ws``: one call's media stream, admitted (token, body, handshake), then its bot run.

A stream is refused with a close code and a reason the peer can read (1013 while
draining or at ``MAX_CALLS``, 1008 for a bad token or parameters); an admitted one runs
the bot in this connection's task, under ``MAX_CALL_SECS``, with the call's record opened
before and closed after.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid

from fastapi import APIRouter, WebSocket
from starlette.datastructures import QueryParams
from starlette.websockets import WebSocketState

from callpipe import metrics
from callpipe.log import call_id
from callpipe.records.observer import CallObserver
from callpipe.runner import RunnerArguments, TelephonyHandshakeError, parse_telephony_websocket
from callpipe.server import stream_options
from callpipe.server.delivery import spawn_in_background
from callpipe.server.endpoints import claim_stream_token
from callpipe.server.records import close_record, open_record
from callpipe.server.settings import ServerSettings
from callpipe.server.state import ActiveCall, ServerState
from callpipe.server.tokens import (
    MISSING_TOKEN_HELP,
    MISSING_TOKEN_REASON,
    StreamToken,
    TokenError,
    scope_digest,
    verify_token,
)
from callpipe.server.urls import RESERVED_PARAMS, decode_body
from callpipe.services.telnyx_call import start_call_actions
from callpipe.transports.fastapi import fit_close_reason
from callpipe.transports.params import CLOSE_POLICY_VIOLATION

__all__ = ["CLOSE_TRY_AGAIN_LATER", "media_router", "run_bot", "serve_stream"]

logger = logging.getLogger("callpipe.server")

CLOSE_TRY_AGAIN_LATER = 1013


class _Refused(Exception):
    """A stream that may not open: closed with 1008 and ``reason``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def media_router(state: ServerState) -> APIRouter:
    """The ``/ws`` WebSocket route."""
    router = APIRouter()

    @router.websocket("/ws")
    async def ws(websocket: WebSocket) -> None:
        """One call's media stream."""
        await serve_stream(state, websocket)

    return router


async def serve_stream(state: ServerState, websocket: WebSocket) -> None:
    """Admit the stream (or close it with the reason), then run the bot on it."""
    call_id.set(f"ws-{uuid.uuid4().hex[:8]}")
    # Accept first, so that a refusal reaches the peer as a close code with a reason
    # (closing before the handshake would only answer HTTP 403).
    await websocket.accept()
    if state.draining or state.at_capacity():
        reason = "server shutting down" if state.draining else "server at capacity (MAX_CALLS)"
        await websocket.close(code=CLOSE_TRY_AGAIN_LATER, reason=reason)
        _count_refused()
        return
    await state.wait_models_warm()
    try:
        runner_args = await _admit(state, websocket)
    except _Refused as exc:
        await websocket.close(code=CLOSE_POLICY_VIOLATION, reason=fit_close_reason(exc.reason))
        _count_refused()
        return
    except TelephonyHandshakeError:
        _count_refused()  # the handshake closed the socket with its own reason
        return
    await run_bot(state, runner_args, runner_args.call_data["call_control_id"])


async def _admit(state: ServerState, websocket: WebSocket) -> RunnerArguments:
    """The bot's arguments for an acceptable stream, else :class:`_Refused` (or a handshake error)."""
    settings = state.settings
    params = websocket.query_params
    claims = None if settings.callpipe_insecure_streams else _verified_token(settings, params)
    try:
        body = decode_body(params.get("body"))
    except ValueError as exc:
        raise _Refused(str(exc)) from None
    _, call_data = await parse_telephony_websocket(websocket)
    ccid = call_data["call_control_id"]
    call_id.set(ccid)
    if claims is not None:
        await _check_claims(state, claims, params, ccid)
    try:
        bidirectional = stream_options.bidirectional_of(settings, params)
    except ValueError as exc:
        raise _Refused(str(exc)) from None
    # What Telnyx takes back (the TeXML's or the dial's): the bot's serializer encodes that.
    call_data["bidirectional_codec"], call_data["bidirectional_sampling_rate"] = bidirectional
    call_data["query_params"] = {k: v for k, v in params.items() if k not in RESERVED_PARAMS}
    websocket.state.callpipe_telephony = call_data  # what a guide-style bot's own parse returns
    direction = params.get("direction", "inbound")
    return RunnerArguments(
        websocket=websocket,
        call_data=call_data,
        body=body,
        direction=direction if direction in ("inbound", "outbound") else "inbound",
        pipeline_idle_timeout_secs=settings.idle_timeout_secs,
    )


def _verified_token(settings: ServerSettings, params: QueryParams) -> StreamToken:
    """The stream token's claims, or :class:`_Refused` saying what is wrong with it."""
    try:
        return verify_token(settings.secret("callpipe_secret") or "", params.get("token"))
    except TokenError as exc:
        if not params.get("token"):  # e.g. a TeXML Bin from Pipecat's guide
            logger.warning(MISSING_TOKEN_HELP)
            raise _Refused(MISSING_TOKEN_REASON) from None
        logger.warning("refusing stream: %s", exc)
        raise _Refused(str(exc)) from None


async def _check_claims(state: ServerState, claims: StreamToken, params: QueryParams, ccid: str) -> None:
    """The token must cover these parameters, this call, and never have opened a stream."""
    if claims.scope is not None:
        expected = scope_digest(
            params.get("direction", "inbound"), params.get("body", ""), *stream_options.scope_parts(params)
        )
        if expected != claims.scope:
            logger.warning("refusing stream: its parameters do not match its token")
            raise _Refused("stream parameters do not match the token")
    if claims.call_id and claims.call_id != ccid:
        logger.warning("refusing stream: token is for another call")
        raise _Refused("stream token is for another call")
    if not await claim_stream_token(state, claims):
        logger.warning("refusing stream: its token was used before")
        raise _Refused("stream token already used")


def _count_refused() -> None:
    # A refused stream never started a call: count it without touching the active-call gauge
    # (``call_ended`` would decrement it under a call that is still running).
    metrics.REGISTRY.call_refused()


async def run_bot(state: ServerState, runner_args: RunnerArguments, ccid: str) -> None:
    """Run the bot as the live call ``ccid``: registered, timed, recorded, then closed."""
    task = asyncio.current_task()
    assert task is not None
    if state.at_capacity():
        # Checked again here, where registering the call follows without an await: streams
        # that passed the early check together cannot push the process past MAX_CALLS.
        await runner_args.websocket.close(code=CLOSE_TRY_AGAIN_LATER, reason="server at capacity (MAX_CALLS)")
        _count_refused()
        return
    observer = open_record(state, runner_args, ccid)
    active = ActiveCall(task=task, call_control_id=ccid, started_at=time.monotonic(), observer=observer)
    state.calls[ccid] = active
    metrics.REGISTRY.call_started()
    _start_call_actions(state, ccid, observer)
    outcome = "completed"
    failure: BaseException | None = None
    try:
        async with asyncio.timeout(state.settings.max_call_secs):
            await state.bot(runner_args)
    except TimeoutError:
        outcome = "max_duration"
        logger.warning("call reached MAX_CALL_SECS (%.0fs); ended", state.settings.max_call_secs)
    except asyncio.CancelledError:
        outcome = "ended_by_server"
        # Ended on purpose by ``ActiveCall.end``: the handler returns normally (re-raising
        # would make uvicorn log "Exception in ASGI application"). Any other cancellation
        # propagates.
        if not (active.ended_by_server and task.uncancel() == 0):
            raise
    except Exception as exc:
        outcome, failure = "error", exc
        logger.exception("the bot failed")
    finally:
        await close_record(observer, outcome, failure)
        state.calls.pop(ccid, None)
        if not state.calls:
            state.no_calls.set()
        metrics.REGISTRY.call_ended(outcome)
        websocket = runner_args.websocket
        if websocket.client_state != WebSocketState.DISCONNECTED:
            with contextlib.suppress(Exception):
                await websocket.close(code=1000, reason="call ended")


def _start_call_actions(state: ServerState, ccid: str, observer: CallObserver | None) -> None:
    """TELNYX_RECORDING / TELNYX_NOISE_SUPPRESSION: asked for in the background (the call does not wait)."""
    settings = state.settings
    if state.telnyx is None or (
        settings.telnyx_recording == "off" and settings.telnyx_noise_suppression == "off"
    ):
        return
    spawn_in_background(
        start_call_actions(
            state.telnyx,
            ccid,
            observer,
            recording=settings.telnyx_recording,
            recording_channels=settings.telnyx_recording_channels,
            noise_suppression=settings.telnyx_noise_suppression,
        ),
    )
