"""The callpipe server: TeXML for dial-in, ``/start`` for dial-out, ``/ws`` for the streams.

Stateless by design: everything a call needs travels in its URLs (a signed stream token,
the dial-out body, custom parameters), so any number of instances can sit behind a
load balancer.

Dial-in::

    Telnyx --POST /texml--> TeXML <Connect><Stream url="wss://PUBLIC/ws?token=…">
    Telnyx ==WS /ws=======> token check -> handshake -> bot(runner_args)

Dial-out::

    client --POST /start {"phone_number", "body"}--> Telnyx TeXML Calls API (Url=/answer?body=…)
    Telnyx --POST /answer--> TeXML <Stream url="wss://PUBLIC/ws?body=…&token=…">
    Telnyx ==WS /ws========> bot(runner_args) with runner_args.body
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import msgspec
from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import Response
from starlette.websockets import WebSocketState

from callpipe import metrics
from callpipe.log import call_id, mask_number
from callpipe.records.observer import CallObserver
from callpipe.records.sink import RecordSink
from callpipe.runner import RunnerArguments, TelephonyHandshakeError, parse_telephony_websocket
from callpipe.server import control, stream_options
from callpipe.server.api_calls import router as calls_router
from callpipe.server.bodies import BodyTooLarge, read_capped
from callpipe.server.endpoints import (
    claim_idempotency_key,
    claim_stream_token,
    idempotent_start,
    receive_webhook,
    serve_answer,
    serve_texml,
)
from callpipe.server.endpoints import error as _error
from callpipe.server.endpoints import error_body as _error_body
from callpipe.server.health import health_router, start_metrics_listener
from callpipe.server.heap import freeze_startup_heap
from callpipe.server.idempotency import IdempotencyCache
from callpipe.server.records import close_record, open_record, record_stream_failed, record_unanswered
from callpipe.server.replay import ReplayGuard
from callpipe.server.settings import ServerSettings
from callpipe.server.telnyx_auth import TelnyxRequestAuth
from callpipe.server.tokens import (
    MISSING_TOKEN_HELP,
    MISSING_TOKEN_REASON,
    TokenError,
    scope_digest,
    sign_expiring,
    verify_token,
)
from callpipe.server.urls import RESERVED_PARAMS, http_base

# Re-exported: callpipe.server.app was their home, and bots and tests import them from here.
from callpipe.server.urls import decode_body as decode_body
from callpipe.server.urls import encode_body as encode_body
from callpipe.server.urls import stream_url as stream_url
from callpipe.server.urls import texml_document as texml_document
from callpipe.services.telnyx_call import start_call_actions
from callpipe.services.warm_transfer import transfer_of
from callpipe.store.base import CallStore
from callpipe.telnyx.api import TelnyxClient, TelnyxError
from callpipe.transports.fastapi import fit_close_reason

logger = logging.getLogger("callpipe.server")

BotFunction = Callable[[RunnerArguments], Awaitable[None]]

E164 = re.compile(r"^\+[1-9]\d{6,14}$")
CLOSE_TRY_AGAIN_LATER = 1013
CLOSE_POLICY_VIOLATION = 1008


# ------------------------------------------------------------------------ state


@dataclass
class _ActiveCall:
    task: asyncio.Task[Any]
    call_control_id: str
    started_at: float
    ended_by_server: bool = False
    observer: CallObserver | None = None

    def end(self) -> None:
        """Cancel the call's bot on purpose (shutdown, hang-up): a normal end, not a crash."""
        self.ended_by_server = True
        self.task.cancel()


@dataclass
class ServerState:
    """Per-app state: live calls, readiness, shutdown flag, dial-out rate limiter.

    ``store`` (when set) is shared by every instance on one database; ``control`` is this
    process's internal control listener (see :mod:`callpipe.server.control`).
    """

    settings: ServerSettings
    bot: BotFunction
    telnyx: TelnyxClient | None = None
    store: CallStore | None = None  # call records and cross-instance state (None: RECORDS=off)
    record_sink: RecordSink | None = None  # where call records go, if not the store's sink
    control: control.ControlPlane | None = None
    calls: dict[str, _ActiveCall] = field(default_factory=dict)
    ready: bool = False
    replay: ReplayGuard = field(default_factory=ReplayGuard)
    idempotency: IdempotencyCache = field(default_factory=lambda: IdempotencyCache(86400.0))
    draining: bool = False
    metrics_server: Any = None
    no_calls: asyncio.Event = field(default_factory=asyncio.Event)
    # True once every embedded model is loaded and has run once (callpipe.services.warmup);
    # readiness is 503 until then and /ws holds a new call until then.
    models_warm: bool = False
    # Set by the process-level servers (`callpipe serve`, its workers): freeze the start-up
    # heap out of full GC collections (callpipe.server.heap). Off for apps built in tests or
    # embedded in another process, whose heap is not ours to freeze.
    freeze_heap: bool = False
    _dial_tokens: float = 0.0
    _dial_refill_at: float = 0.0

    def at_capacity(self) -> bool:
        """Whether this process holds ``MAX_CALLS`` live calls (0: no limit)."""
        limit = self.settings.max_calls
        return limit > 0 and len(self.calls) >= limit

    def take_dial_token(self) -> bool:
        """In-process token bucket for dial-out: ``dial_rate_per_sec`` sustained.

        The burst is the rate, but never less than one dial: a rate below 1/s (one dial
        every few seconds) must still let a dial through once a token has refilled.
        """
        rate = self.settings.dial_rate_per_sec
        capacity = max(1.0, rate)
        now = time.monotonic()
        self._dial_tokens = min(capacity, self._dial_tokens + (now - self._dial_refill_at) * rate)
        self._dial_refill_at = now
        if self._dial_tokens >= 1.0:
            self._dial_tokens -= 1.0
            return True
        return False

    async def take_dial_slot(self) -> bool:
        """One dial-out under the rate limit: shared through the store, else per process.

        If the store cannot answer in time, the in-process bucket decides (logged): a
        slow database must not stop dial-out, at the cost of a looser shared limit.
        """
        if self.store is None:
            return self.take_dial_token()
        try:
            async with asyncio.timeout(self.settings.forward_timeout_secs):
                return await self.store.take_dial_slot(self.settings.dial_rate_per_sec)
        except Exception as exc:
            logger.warning(
                "shared dial rate limit unavailable (%s): using this instance's", type(exc).__name__
            )
            return self.take_dial_token()

    async def warm_up_models(self) -> None:
        """Load and run every registered model once, in a thread; then set ``models_warm``."""
        from callpipe.services import warmup

        await asyncio.to_thread(warmup.warm_up_models)
        self.models_warm = warmup.models_warm()
        if self.freeze_heap and not self.calls:
            freeze_startup_heap()  # the models' objects live as long as the process

    async def wait_models_warm(self, timeout: float = 120.0) -> None:
        """Hold a new call until the models are warm (free once they are)."""
        from callpipe.services import warmup

        if not self.models_warm or not warmup.models_warm():
            # Runs what is still pending (an app whose lifespan never ran, e.g. mounted in
            # another app) and waits for what the start-up task is warming.
            await asyncio.wait_for(asyncio.to_thread(warmup.warm_up_models), timeout)
            self.models_warm = warmup.models_warm()

    async def drain(self, grace_secs: float) -> None:
        """Stop taking calls; let live calls finish for ``grace_secs``, then end the rest."""
        self.draining = True
        if self.calls:
            logger.info("shutting down: waiting up to %.0fs for %d call(s)", grace_secs, len(self.calls))
            self.no_calls.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.no_calls.wait(), grace_secs)
        calls = list(self.calls.values())
        if calls:
            logger.warning("shutting down: ending %d call(s) still running", len(calls))
            for call in calls:
                if call.observer is not None:
                    call.observer.note_end("shutdown", "server")
                call.end()  # the pipeline is cancelled; auto hang-up hangs the call up
            await asyncio.wait([call.task for call in calls], timeout=10)


# ------------------------------------------------------------------------ the app


def create_app(
    bot: BotFunction,
    settings: ServerSettings | None = None,
    *,
    telnyx: TelnyxClient | None = None,
    store: CallStore | None = None,
) -> FastAPI:
    """The FastAPI app that serves ``bot``. Settings are checked here, at start-up.

    ``store`` defaults to a :class:`~callpipe.store.sql.SqlCallStore` from the settings
    (none with ``RECORDS=off``); the app starts it and closes it (flushing) in its lifespan.
    """
    settings = settings or ServerSettings()
    settings.check_for_serving()
    if telnyx is None and settings.secret("telnyx_api_key"):
        telnyx = TelnyxClient(settings.secret("telnyx_api_key") or "", base_url=settings.telnyx_api_base_url)
    if store is None and settings.records:
        from callpipe.store.sql import SqlCallStore

        store = SqlCallStore.from_settings(settings)
    state = ServerState(settings=settings, bot=bot, telnyx=telnyx, store=store)
    state.idempotency.ttl_secs = settings.idempotency_ttl_secs
    telnyx_auth = TelnyxRequestAuth(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Off the event loop and in the background: /livez answers while models warm up,
        # /readyz says 503 until they are (state.models_warm).
        from callpipe.services import warmup

        telnyx_auth.log_startup()
        state.models_warm = warmup.models_warm()  # already warm (another app in this process)
        warming = asyncio.create_task(state.warm_up_models())
        await _start_operations(state)  # first: the store registers the internal URL at start
        if state.store is not None:
            await state.store.start()
        if state.freeze_heap:
            freeze_startup_heap()  # the store and what is loaded so far; again once models are warm
        state.ready = True
        yield
        state.ready = False
        if not warming.done():
            warming.cancel()
        await state.drain(0.0)
        await _stop_operations(state)
        if state.store is not None:
            await state.store.close()  # after the drain: the calls' final records are flushed
        if state.telnyx is not None:
            await state.telnyx.aclose()

    # The API's own description is surface an attacker reads first: off unless asked for.
    docs = settings.callpipe_api_docs
    app = FastAPI(
        title="callpipe",
        lifespan=lifespan,
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
    )
    app.state.callpipe = state
    app.include_router(health_router(state))
    app.include_router(control.control_router(state))
    app.include_router(calls_router)
    from callpipe.console import mount_console

    mount_console(app, state)  # /dashboard, /phone and their /console/api

    # ------------------------------------------------------------------ dial-in

    @app.api_route("/texml", methods=["GET", "POST"], include_in_schema=False)
    async def texml(request: Request) -> Response:
        """Telnyx asks what to do with an incoming call (signed): stream it to /ws."""
        return await serve_texml(state, telnyx_auth, request, None)

    @app.api_route("/texml/{path_secret}", methods=["GET", "POST"], include_in_schema=False)
    async def texml_with_secret(request: Request, path_secret: str) -> Response:
        """The same, authenticated by the voice URL's secret path segment (TEXML_PATH_SECRET)."""
        return await serve_texml(state, telnyx_auth, request, path_secret)

    @app.api_route("/answer", methods=["GET", "POST"], include_in_schema=False)
    async def answer(request: Request) -> Response:
        """Telnyx fetches this when an outbound call is answered: stream it, body and all."""
        return await serve_answer(state, request)

    # ------------------------------------------------------------------ dial-out

    @app.post("/start")
    async def start(request: Request) -> Response:
        """Place an outbound call: ``{"phone_number": "+E164", "body": {...}}``."""
        expected = settings.secret("callpipe_api_key")
        if not expected:
            return _error(503, "dial_out_disabled", "dial-out needs CALLPIPE_API_KEY and Telnyx settings")
        auth = request.headers.get("authorization", "")
        if not auth.startswith("Bearer ") or not _equal(auth[7:], expected):
            return _error(
                401, "unauthorized", "a valid 'Authorization: Bearer <CALLPIPE_API_KEY>' is required"
            )
        try:
            raw = await read_capped(request, settings.max_body_bytes)
        except BodyTooLarge as exc:
            return _error(413, "too_large", str(exc))
        payload: dict[str, Any] = dict(request.query_params)
        if raw:
            try:
                parsed = msgspec.json.decode(raw)
            except msgspec.DecodeError:
                return _error(400, "bad_json", "the request body must be JSON")
            if not isinstance(parsed, dict):
                return _error(400, "bad_json", "the request body must be a JSON object")
            payload.update(parsed)
        number = payload.get("phone_number")
        if not isinstance(number, str) or not E164.match(number):
            return _error(422, "bad_phone_number", "phone_number must be an E.164 number like +15551234567")
        body = payload.get("body", {})
        if isinstance(body, str):
            try:
                body = msgspec.json.decode(body)
            except msgspec.DecodeError:
                return _error(422, "bad_body", "body must be a JSON object")
        if not isinstance(body, dict):
            return _error(422, "bad_body", "body must be a JSON object")
        amd = _amd_of(payload.get("amd"))
        if amd is not None and amd not in AMD_MODES:
            return _error(422, "bad_amd", f"amd must be one of {', '.join(AMD_MODES)} or false")
        if amd is not None and settings.dial_mode != "call_control":
            return _error(422, "bad_amd", "amd needs DIAL_MODE=call_control (Telnyx's dial request)")
        try:
            stream = stream_options.from_request(settings, payload)
        except ValueError as exc:
            return _error(422, "bad_stream", str(exc))
        if stream is not None and settings.dial_mode != "call_control":
            return _error(
                422, "bad_stream", "stream_* fields need DIAL_MODE=call_control (Telnyx's dial request)"
            )

        idempotency_key = request.headers.get("idempotency-key")

        async def place() -> tuple[int, dict[str, Any]]:
            if state.draining:
                return 503, _error_body("shutting_down", "the server is shutting down")
            if not await state.take_dial_slot():
                return 429, _error_body(
                    "rate_limited", f"at most {settings.dial_rate_per_sec:g} dials per second"
                )
            if state.telnyx is None or not settings.dial_out_configured:
                return 503, _error_body(
                    "dial_out_disabled", "dial-out needs TELNYX_API_KEY and the dial settings"
                )
            if idempotency_key and not await claim_idempotency_key(state, idempotency_key):
                return 409, _error_body(
                    "idempotency_conflict",
                    "this Idempotency-Key was used before, on another instance: no second call was placed",
                )
            try:
                return 200, await _dial(state, number, body, amd=amd, stream=stream)
            except TelnyxError as exc:
                logger.error("dial-out to %s failed: %s", mask_number(number), exc)
                return 502, _error_body("telnyx_error", str(exc))

        return await idempotent_start(state, idempotency_key, number, body, place)

    # ------------------------------------------------------------------ streams

    @app.websocket("/ws")
    async def ws(websocket: WebSocket) -> None:
        """One call's media stream."""
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
        token_claims = None
        secret = settings.secret("callpipe_secret")
        if not settings.callpipe_insecure_streams:
            try:
                token_claims = verify_token(secret or "", websocket.query_params.get("token"))
            except TokenError as exc:
                reason = str(exc)
                if not websocket.query_params.get("token"):  # e.g. a TeXML Bin from Pipecat's guide
                    logger.warning(MISSING_TOKEN_HELP)
                    reason = MISSING_TOKEN_REASON
                else:
                    logger.warning("refusing stream: %s", exc)
                await websocket.close(code=CLOSE_POLICY_VIOLATION, reason=fit_close_reason(reason))
                _count_refused()
                return
        try:
            body = decode_body(websocket.query_params.get("body"))
        except ValueError as exc:
            await websocket.close(code=CLOSE_POLICY_VIOLATION, reason=fit_close_reason(str(exc)))
            _count_refused()
            return
        try:
            _, call_data = await parse_telephony_websocket(websocket)
        except TelephonyHandshakeError:
            _count_refused()
            return
        ccid = call_data["call_control_id"]
        call_id.set(ccid)
        if token_claims is not None and token_claims.scope is not None:
            expected = scope_digest(
                websocket.query_params.get("direction", "inbound"),
                websocket.query_params.get("body", ""),
                *stream_options.scope_parts(websocket.query_params),
            )
            if expected != token_claims.scope:
                logger.warning("refusing stream: its parameters do not match its token")
                await websocket.close(
                    code=CLOSE_POLICY_VIOLATION, reason="stream parameters do not match the token"
                )
                _count_refused()
                return
        if token_claims is not None and token_claims.call_id and token_claims.call_id != ccid:
            logger.warning("refusing stream: token is for another call")
            await websocket.close(code=CLOSE_POLICY_VIOLATION, reason="stream token is for another call")
            _count_refused()
            return
        if token_claims is not None and not await claim_stream_token(state, token_claims):
            logger.warning("refusing stream: its token was used before")
            await websocket.close(code=CLOSE_POLICY_VIOLATION, reason="stream token already used")
            _count_refused()
            return
        try:
            bidirectional = stream_options.bidirectional_of(settings, websocket.query_params)
        except ValueError as exc:
            await websocket.close(code=CLOSE_POLICY_VIOLATION, reason=fit_close_reason(str(exc)))
            _count_refused()
            return
        # What Telnyx takes back (the TeXML's or the dial's): the bot's serializer encodes that.
        call_data["bidirectional_codec"], call_data["bidirectional_sampling_rate"] = bidirectional
        query = {k: v for k, v in websocket.query_params.items() if k not in RESERVED_PARAMS}
        call_data["query_params"] = query
        websocket.state.callpipe_telephony = call_data  # what a guide-style bot's own parse returns
        direction = websocket.query_params.get("direction", "inbound")
        runner_args = RunnerArguments(
            websocket=websocket,
            call_data=call_data,
            body=body,
            direction=direction if direction in ("inbound", "outbound") else "inbound",
            pipeline_idle_timeout_secs=settings.idle_timeout_secs,
        )
        await _run_bot(state, runner_args, ccid)

    # ------------------------------------------------------------------ webhooks

    @app.post("/webhooks/telnyx", include_in_schema=False)
    async def webhooks(request: Request) -> Response:
        """Call lifecycle events from Telnyx (signed with TELNYX_PUBLIC_KEY; each applied once)."""
        return await receive_webhook(state, telnyx_auth, request, _handle_webhook)

    return app


async def _start_operations(state: ServerState) -> None:
    """The internal control listener and the metrics port, before the first call."""
    settings = state.settings
    secret = settings.secret("callpipe_secret")
    if secret and state.store is not None:
        # Without a store nobody can look up where a call lives: nothing to forward to.
        state.control = control.ControlPlane(
            state,
            secret,
            host=settings.internal_host,
            port=control.worker_port(settings.internal_port, os.environ.get("CALLPIPE_WORKER")),
            advertised_url=settings.internal_url,
            timeout_secs=settings.forward_timeout_secs,
        )
        await state.control.start()
        state.store.set_internal_url(state.control.url)  # in the instances table with the next heartbeat
    if settings.metrics_port is not None and not _is_worker():
        state.metrics_server = start_metrics_listener(settings.metrics_host, settings.metrics_port)


async def _stop_operations(state: ServerState) -> None:
    if state.control is not None:
        await state.control.stop()
    if state.metrics_server is not None:
        state.metrics_server.shutdown()
        state.metrics_server.server_close()


def _is_worker() -> bool:
    # Under ``--workers`` the supervisor serves METRICS_PORT for the whole box.
    return bool(os.environ.get("CALLPIPE_WORKER"))


def _count_refused() -> None:
    # A refused stream never started a call: count it without touching the active-call gauge
    # (``call_ended`` would decrement it under a call that is still running).
    metrics.REGISTRY.call_refused()


def _equal(given: str, expected: str) -> bool:
    import hmac

    return hmac.compare_digest(given.encode(), expected.encode())


# Telnyx's ``answering_machine_detection`` values (its AMD guide); ``false`` means off.
AMD_MODES = ("premium", "detect", "detect_beep", "detect_words", "greeting_end")


def _amd_of(value: Any) -> str | None:
    """``/start``'s ``amd``: ``None`` when off (absent, ``false``, ``"false"``), else the string given."""
    if value is None or value is False or value in ("", "false"):
        return None
    return value if isinstance(value, str) else repr(value)


async def _dial(
    state: ServerState,
    number: str,
    body: dict[str, Any],
    *,
    amd: str | None = None,
    stream: stream_options.StreamOptions | None = None,
) -> dict[str, Any]:
    settings = state.settings
    assert state.telnyx is not None
    encoded = encode_body(body)
    if len(encoded) > settings.max_body_bytes * 2:
        raise TelnyxError("body too large to carry in the call's URL")
    if settings.dial_mode == "texml":
        query = {"body": encoded}
        secret = settings.secret("callpipe_secret")
        if secret:
            query["exp"], query["sig"] = sign_expiring(
                secret, "answer", encoded, ttl=settings.answer_url_ttl_secs
            )
        answer_url = f"{http_base(settings)}/answer?{urlencode(query)}"
        data = await state.telnyx.texml_call(
            account_sid=settings.telnyx_account_sid or "",
            application_sid=settings.telnyx_application_sid or "",
            to=number,
            from_=settings.telnyx_phone_number or "",
            url=answer_url,
        )
        call_control_id = str(data.get("call_sid") or data.get("call_control_id") or "")
    else:
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
        data = await state.telnyx.dial(
            to=number,
            from_=settings.telnyx_phone_number or "",
            connection_id=settings.telnyx_connection_id or "",
            stream_url=url,
            answering_machine_detection=amd,
            webhook_url=f"{http_base(settings)}/webhooks/telnyx" if amd else None,
            **options.dial_fields(),
        )
        call_control_id = str(data.get("call_control_id", ""))
    logger.info("dialled %s: %s", mask_number(number), call_control_id)
    return {
        "call_control_id": call_control_id,
        "status": str(data.get("status", "queued")),
        "phone_number": number,
    }


async def _run_bot(state: ServerState, runner_args: RunnerArguments, ccid: str) -> None:
    task = asyncio.current_task()
    assert task is not None
    if state.at_capacity():
        # Checked again here, where registering the call follows without an await: streams
        # that passed the early check together cannot push the process past MAX_CALLS.
        await runner_args.websocket.close(code=CLOSE_TRY_AGAIN_LATER, reason="server at capacity (MAX_CALLS)")
        _count_refused()
        return
    observer = open_record(state, runner_args, ccid)
    active = _ActiveCall(task=task, call_control_id=ccid, started_at=time.monotonic(), observer=observer)
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
        # Ended on purpose by ``_ActiveCall.end``: the handler returns normally (re-raising
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
    control._spawn(
        state,
        start_call_actions(
            state.telnyx,
            ccid,
            observer,
            recording=settings.telnyx_recording,
            recording_channels=settings.telnyx_recording_channels,
            noise_suppression=settings.telnyx_noise_suppression,
        ),
    )


async def _handle_webhook(state: ServerState, event_type: str, ccid: str, payload: dict[str, Any]) -> None:
    """Deliver a Telnyx event to the call: here, or at the instance that holds it."""
    caller = transfer_of(payload.get("client_state"))
    if caller is not None and caller != ccid:
        # An agent leg of a warm transfer: its events belong to the caller's call.
        leg = control.ControlEvent(kind="transfer_leg", event_type=event_type, payload=payload)
        await control.dispatch(state, caller, leg)
        return
    event = control.ControlEvent(kind="webhook", event_type=event_type, payload=payload)
    result = await control.dispatch(state, ccid, event)
    if result == "not_found" and event_type == "streaming.failed":
        # The stream never reached a bot (or its instance is gone): record why, end the call.
        record_stream_failed(state, ccid, payload)
        if state.telnyx is not None:
            control.spawn_hangup(state, ccid)
    if result == "not_found" and event_type == "call.hangup" and not record_unanswered(state, ccid, payload):
        logger.info("call.hangup for %s: no live call here or elsewhere", ccid)
