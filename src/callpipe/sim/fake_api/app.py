"""The fake Telnyx API's FastAPI app and the standalone server (``callpipe fake-telnyx``)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import uvicorn
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from callpipe.sim.fake_api.actions import _Handle, add_action_routes
from callpipe.sim.fake_api.agent import FakeAgent
from callpipe.sim.fake_api.callees import Callees
from callpipe.sim.fake_api.session import DEFAULT_MAX_CALL_SECS, CalleeScript
from callpipe.sim.fake_api.simulator import FakeTelnyxSimulator
from callpipe.sim.fake_api.state import (
    API_PREFIX,
    AUTH_FAILED,
    DEFAULT_IDEMPOTENCY_WINDOW,
    NOT_FOUND,
    FakeCallEvent,
    FakeTelnyxState,
    _Handler,
)

# --------------------------------------------------------------------------- app


def create_fake_telnyx_app(
    api_key: str = "test-key",
    *,
    state: FakeTelnyxState | None = None,
    idempotency_window: float = DEFAULT_IDEMPOTENCY_WINDOW,
    simulate_calls: bool = False,
    webhook_url: str | None = None,
    webhook_private_key: str | bytes | Ed25519PrivateKey | None = None,
    callee_script: CalleeScript | None = None,
    max_call_secs: float = DEFAULT_MAX_CALL_SECS,
    simulator: FakeTelnyxSimulator | None = None,
    callees: Callees | None = None,
) -> FastAPI:
    """Build the fake Telnyx API; its :class:`FakeTelnyxState` is ``app.state.telnyx``.

    Pass ``state`` to share one state object (``api_key``/``idempotency_window`` are then
    taken from it, not from the arguments).

    ``simulate_calls=True`` attaches a :class:`FakeTelnyxSimulator` built from
    ``webhook_url``, ``webhook_private_key`` (default: a fresh key pair), ``callee_script``,
    ``max_call_secs`` and ``callees`` (who answers which number); pass ``simulator`` instead to configure it fully. It is then
    ``app.state.simulator`` (and ``state.simulator``), its public key
    ``state.webhook_public_key``, and its calls are cleaned up when the app shuts down.
    """
    st = state if state is not None else FakeTelnyxState(api_key, idempotency_window=idempotency_window)
    sim = simulator
    if sim is None and simulate_calls:
        sim = FakeTelnyxSimulator(
            webhook_url=webhook_url,
            webhook_private_key=webhook_private_key,
            callee_script=callee_script,
            max_call_secs=max_call_secs,
            callees=callees,
        )
    if sim is not None:
        sim.attach(st)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            if sim is not None:
                await sim.aclose()

    app = FastAPI(
        title="callpipe fake Telnyx API", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan
    )
    app.state.telnyx = st
    app.state.simulator = sim
    _add_routes(app, st, functools.partial(_handle_request, st))
    return app


async def _handle_request(
    st: FakeTelnyxState, request: Request, handler: _Handler | None, idem_key: tuple[str, str] | None
) -> Response:
    """The common pipeline: record -> fault -> auth -> parse -> (idempotent) handler."""
    raw = await request.body()
    try:
        parsed: Any = json.loads(raw) if raw else {}
    except ValueError:
        parsed = None
    record = st._record(request, raw, parsed)
    fault = st._take_fault(request.method, request.scope["path"])
    record.fault = fault
    if fault is not None and fault.delay > 0:
        await asyncio.sleep(fault.delay)
    response: Response
    if fault is not None and fault.status is not None and not fault.after:
        response = fault.response()
    elif not st._authorized(request):
        response = JSONResponse({"errors": [AUTH_FAILED]}, status_code=401)
    elif handler is None:
        response = JSONResponse({"errors": [NOT_FOUND]}, status_code=404)
    elif not isinstance(parsed, dict):
        response = JSONResponse({"errors": [_NOT_AN_OBJECT]}, status_code=400)
    else:
        events: list[FakeCallEvent] = []
        body = parsed
        if idem_key is not None:
            command_id = body.get("command_id")
            key = (idem_key[0], idem_key[1], command_id if isinstance(command_id, str) else "")
            (status, payload), record.deduplicated = st._idempotent(key, lambda: handler(body, events))
        else:
            status, payload = handler(body, events)
        await st._emit(events)
        response = JSONResponse(payload, status_code=status)
        if fault is not None and fault.status is not None and fault.after:
            response = fault.response()
    record.status_code = response.status_code
    return response


_NOT_AN_OBJECT = {
    "code": "10015",
    "title": "Bad Request",
    "detail": "The request body must be a JSON object.",
}


def _add_routes(app: FastAPI, st: FakeTelnyxState, handle: _Handle) -> None:
    """Route dials, TeXML calls and call actions through ``handle``; everything else to a 404."""

    @app.post(f"{API_PREFIX}/calls")
    async def dial(request: Request) -> Response:
        # Telnyx de-duplicates dials by command_id alone (there is no call yet).
        return await handle(request, st._dial, ("dial", ""))

    @app.post(f"{API_PREFIX}/texml/Accounts/{{account_sid}}/Calls")
    async def texml_call(request: Request, account_sid: str) -> Response:
        return await handle(request, lambda body, ev: st._texml_call(account_sid, body, ev), None)

    # ":path" so ids with an encoded '/' still route (uvicorn decodes %2F before routing).
    @app.post(f"{API_PREFIX}/calls/{{call_control_id:path}}/actions/hangup")
    async def hangup(request: Request, call_control_id: str) -> Response:
        return await handle(
            request, lambda body, ev: st._hangup(call_control_id, body, ev), ("hangup", call_control_id)
        )

    @app.post(f"{API_PREFIX}/calls/{{call_control_id:path}}/actions/transfer")
    async def transfer(request: Request, call_control_id: str) -> Response:
        return await handle(
            request, lambda body, ev: st._transfer(call_control_id, body, ev), ("transfer", call_control_id)
        )

    @app.post(f"{API_PREFIX}/calls/{{call_control_id:path}}/actions/send_dtmf")
    async def send_dtmf(request: Request, call_control_id: str) -> Response:
        return await handle(
            request, lambda body, ev: st._send_dtmf(call_control_id, body, ev), ("send_dtmf", call_control_id)
        )

    add_action_routes(app, st, handle)  # speak, bridge, streaming_stop, record_*, suppression_*...

    # Everything else: recorded, faultable, and answered with Telnyx's 404 shape.
    @app.api_route("/{rest:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
    async def fallback(request: Request, rest: str) -> Response:
        return await handle(request, None, None)


# --------------------------------------------------------------------------- standalone


def serve_fake_telnyx(
    host: str = "127.0.0.1",
    port: int = 8765,
    *,
    api_key: str = "test-key",
    webhook_url: str | None = None,
    webhook_private_key: str | bytes | Ed25519PrivateKey | None = None,
    callee_script: CalleeScript | None = None,
    max_call_secs: float = DEFAULT_MAX_CALL_SECS,
    callees: Callees | None = None,
    log_level: str = "info",
    announce: Callable[[str], None] = print,
    callee_codec: str | None = None,
    callee_sample_rate: int | None = None,
    agents: dict[str, FakeAgent] | None = None,
) -> None:
    """Run the fake Telnyx API with simulated calls; blocks, returns after Ctrl-C / SIGTERM.

    Announces the base URL (point ``TelnyxClient(base_url=...)`` at it), the API key and the
    webhook public key to verify the webhooks with. ``port=0`` picks a free port.
    ``callee_codec``: the codec the callees' calls carry (what the bot receives; default:
    the stream's bidirectional codec).
    """
    app = create_fake_telnyx_app(
        api_key,
        simulate_calls=True,
        webhook_url=webhook_url,
        webhook_private_key=webhook_private_key,
        callee_script=callee_script,
        max_call_secs=max_call_secs,
        callees=callees,
    )
    state: FakeTelnyxState = app.state.telnyx
    if state.simulator is not None:
        state.simulator.callee_codec = callee_codec
        state.simulator.callee_sample_rate = callee_sample_rate
        state.simulator.agents.update(agents or {})  # warm-transfer agents (agent.py)
    sock = _bind(host, port)
    _announce(announce, state, host, sock.getsockname()[1], api_key, webhook_url, callees)
    config = uvicorn.Config(app, log_level=log_level, lifespan="on")
    try:
        # uvicorn shuts down gracefully on Ctrl-C (lifespan included), then re-raises it.
        with contextlib.suppress(KeyboardInterrupt):
            uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()


def _bind(host: str, port: int) -> socket.socket:
    """Bind first so the announced port is the real one (also for port=0)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def _announce(
    announce: Callable[[str], None],
    state: FakeTelnyxState,
    host: str,
    port: int,
    api_key: str,
    webhook_url: str | None,
    callees: Callees | None,
) -> None:
    """Say where the fake listens, its key, its webhook key and target, and its callees."""
    shown_host = f"[{host}]" if ":" in host else host
    announce(f"fake Telnyx API: http://{shown_host}:{port}/v2 (API key: {api_key})")
    announce(f"webhook public key (base64): {state.webhook_public_key}")
    target = webhook_url or "none by default (only to a dial's own webhook_url)"
    announce(f"webhooks: {target}")
    if callees is not None and (callees.by_number or callees.default != "human"):
        shown = ", ".join(f"{n}={k}" for n, k in callees.by_number.items())
        announce(f"callees: {shown or '-'} (others: {callees.default})")
