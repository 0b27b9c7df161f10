"""One call, any instance: webhooks and control actions reach the process holding the call.

A call's WebSocket lives in exactly one process. A Telnyx webhook (``call.hangup``, an
answering-machine result) or an operator's action (``POST /api/calls/{id}/hangup`` or
``/transfer``) may arrive at any instance or worker. The receiving process handles the
event itself when the call is its own; otherwise it asks the store which instance holds
the call (``store.owner_of``: the live instance's internal URL, from the instances table)
and forwards the event there in one HMAC-signed HTTP request to that instance's
internal control listener, which injects it exactly as a local webhook would be.

Loops are impossible by construction: the internal listener only ever delivers locally
(a forwarded event is never forwarded again). Every step is bounded by
``FORWARD_TIMEOUT_SECS`` and every failure is logged and counted
(``callpipe_forwarded_events_total``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx
import msgspec
import uvicorn
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response

from callpipe import metrics
from callpipe.pipeline.frames import AnsweringMachineDetectionFrame
from callpipe.services import warm_transfer
from callpipe.services.call_policy import PolicyError, TransferPolicy
from callpipe.telnyx.api import TelnyxError
from callpipe.transports.fastapi import transport_for_call

if TYPE_CHECKING:
    from callpipe.server.state import ServerState

__all__ = [
    "FORWARD_HEADER",
    "ControlEvent",
    "ControlPlane",
    "control_router",
    "deliver_locally",
    "dispatch",
    "internal_app",
    "sign_forward",
    "spawn_hangup",
    "verify_forward",
]

logger = logging.getLogger("callpipe.server.control")

FORWARD_HEADER = "X-Callpipe-Forward"
# A forwarded event older than this (or this far in the future) is refused: a captured
# request cannot be replayed later.
FORWARD_TOLERANCE_SECS = 30.0
MAX_FORWARD_BYTES = 64 * 1024
# A little over the record writer's batch interval (0.5 s): by then a new call is stored.
OWNER_RETRY_SECS = 0.6
_PURPOSE = b"callpipe-forward-v1"


class ControlEvent(msgspec.Struct, frozen=True, omit_defaults=True):
    """What travels between instances: a Telnyx webhook or an operator's action.

    ``kind``: ``"webhook"`` (``event_type`` and ``payload`` as Telnyx sent them),
    ``"hangup"`` (an operator ends the call), ``"transfer"`` (to ``to``) or
    ``"transfer_leg"`` (a webhook of a warm transfer's agent leg, for the caller's call).
    """

    kind: str
    event_type: str = ""
    payload: dict[str, Any] = msgspec.field(default_factory=dict)
    to: str = ""


# ------------------------------------------------------------------------ signing


def _key(secret: str) -> bytes:
    # A key of its own, derived from CALLPIPE_SECRET: a forward signature is never valid
    # as a stream token or an /answer signature, nor the other way round.
    return hmac.new(secret.encode(), _PURPOSE, hashlib.sha256).digest()


def sign_forward(secret: str, body: bytes, now: float | None = None) -> str:
    """The ``X-Callpipe-Forward`` header value for ``body``: ``t=<unix>,v1=<hex hmac>``."""
    stamp = str(int(now if now is not None else time.time()))
    mac = hmac.new(_key(secret), stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={stamp},v1={mac}"


def verify_forward(secret: str, body: bytes, header: str | None, now: float | None = None) -> bool:
    """Whether ``header`` signs ``body`` with ``secret`` within the replay tolerance."""
    if not header:
        return False
    fields = dict(part.partition("=")[::2] for part in header.split(","))
    stamp, mac = fields.get("t", ""), fields.get("v1", "")
    if not stamp.isdigit():
        return False
    if abs((now if now is not None else time.time()) - int(stamp)) > FORWARD_TOLERANCE_SECS:
        return False
    expected = hmac.new(_key(secret), stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, mac)


# ------------------------------------------------------------------------ local delivery


def is_local(state: ServerState, ccid: str) -> bool:
    """Whether this process holds the call ``ccid``."""
    return bool(ccid) and (ccid in state.calls or transport_for_call(ccid) is not None)


async def deliver_locally(state: ServerState, ccid: str, event: ControlEvent) -> bool:
    """Inject ``event`` into the call ``ccid`` if this process holds it; ``False`` if not.

    A :class:`TelnyxError` from a transfer propagates (the caller answers 502).
    """
    if not is_local(state, ccid):
        return False
    call = state.calls.get(ccid)
    if call is not None and call.observer is not None:
        call.observer.control_event(event.kind, event.event_type, event.payload, to=event.to)
    transport = transport_for_call(ccid)
    if event.kind == "webhook":
        if event.event_type == "call.hangup":
            cause = event.payload.get("hangup_cause", "unknown")
            logger.info("call.hangup for %s (%s)", ccid, cause)
            await _end(state, ccid, f"call hung up ({cause})")
        elif event.event_type == "streaming.failed":
            reason = event.payload.get("failure_reason", "unknown")
            logger.warning("streaming.failed for %s (%s): ending the call", ccid, reason)
            await _end(state, ccid, f"Telnyx streaming failed ({reason})")
        elif event.event_type.startswith("call.machine.") and transport is not None:
            result = str(event.payload.get("result", ""))
            frame = AnsweringMachineDetectionFrame(result=result, event_type=event.event_type)
            await transport.push_call_event(frame)
    elif event.kind == "transfer_leg":
        warm_transfer.deliver(ccid, event.event_type, event.payload)
    elif event.kind == "hangup":
        logger.info("call %s hung up by an operator", ccid)
        await _end(state, ccid, "hung up by an operator")
        if state.telnyx is not None:
            # The bot is already ending; the REST hang-up makes sure the phone call ends
            # too, without holding up the operator's answer.
            _spawn(state, _hangup_quietly(state, ccid))
    elif event.kind == "transfer":
        if state.telnyx is None:
            raise TelnyxError("transfers need TELNYX_API_KEY")
        logger.info("call %s transferred by an operator", ccid)
        await state.telnyx.transfer(ccid, to=event.to)
        warm_transfer.keep_call_up(ccid)  # the bot leaving must not hang the transferred caller up
    return True


async def _end(state: ServerState, ccid: str, reason: str) -> None:
    transport = transport_for_call(ccid)
    if transport is not None:
        await transport.end_from_outside(reason)
        return
    call = state.calls.get(ccid)
    if call is not None:
        call.end()


_background: set[asyncio.Task[None]] = set()


def _spawn(state: ServerState, coro: Any) -> None:
    task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
    _background.add(task)
    task.add_done_callback(_background.discard)


def spawn_hangup(state: ServerState, ccid: str) -> None:
    """Hang ``ccid`` up through the Telnyx API in the background (failures are logged)."""
    _spawn(state, _hangup_quietly(state, ccid))


async def _hangup_quietly(state: ServerState, ccid: str) -> None:
    assert state.telnyx is not None
    try:
        await state.telnyx.hangup(ccid)
    except (TelnyxError, httpx.HTTPError) as exc:
        logger.warning("hang-up of %s through the Telnyx API failed: %s", ccid, exc)


async def dispatch(state: ServerState, ccid: str, event: ControlEvent) -> str:
    """Deliver ``event`` here if the call is ours, else forward it to the owner.

    Returns ``"local"``, ``"forwarded"``, ``"not_found"`` (no live instance holds the
    call), ``"failed"`` (the owner did not take it; logged) or ``"telnyx_error"`` (the
    owner took it, Telnyx refused the action).
    """
    if await deliver_locally(state, ccid, event):
        return "local"
    control = state.control
    if control is None or not ccid:
        return "not_found"
    return await control.forward(ccid, event)


# ------------------------------------------------------------------------ forwarding


@dataclass
class ControlPlane:
    """This process's internal control listener and its client for forwarding events.

    ``start`` binds ``host:port`` (port 0: an ephemeral one) and serves the internal
    app on the running loop; ``url`` is what the instances table records for others.
    """

    state: ServerState
    secret: str
    host: str = "127.0.0.1"
    port: int = 0
    advertised_url: str | None = None
    timeout_secs: float = 2.0
    url: str = ""
    _server: uvicorn.Server | None = None
    _task: asyncio.Task[None] | None = None
    _http: httpx.AsyncClient | None = None
    _sock: socket.socket | None = field(default=None, repr=False)

    async def start(self) -> None:
        """Bind the listener and start serving it; sets :attr:`url`."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        sock.listen(128)
        sock.setblocking(False)
        self._sock = sock
        self.url = advertised_url(self.host, sock.getsockname()[1], self.advertised_url)
        config = _OwnLoggingConfig(
            internal_app(self.state, self.secret), lifespan="off", log_level="warning", access_log=False
        )
        self._server = _SignalFreeServer(config)
        self._task = asyncio.get_running_loop().create_task(self._server.serve(sockets=[sock]))
        self._http = httpx.AsyncClient(timeout=self.timeout_secs)
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises what stopped it
                raise RuntimeError("the internal control listener stopped at start-up")
            await asyncio.sleep(0.01)
        # One request to ourselves: the client's and the listener's first-use costs (lazy
        # imports, the first connection) are paid now, not by the first forwarded hang-up.
        with contextlib.suppress(httpx.HTTPError):
            await self._http.get(f"http://{_loopback(self.host)}:{sock.getsockname()[1]}/internal/livez")
        logger.info("internal control listener on %s", self.url)

    async def stop(self) -> None:
        """Stop the listener and close the client."""
        if self._server is not None:
            self._server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._task, 5)
        if self._http is not None:
            await self._http.aclose()
        if self._sock is not None:
            self._sock.close()

    async def forward(self, ccid: str, event: ControlEvent) -> str:
        """Send ``event`` to the instance holding ``ccid`` (see :func:`dispatch` for results)."""
        store = self.state.store
        if store is None or self._http is None:
            return "not_found"
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.timeout_secs):
                owner = await store.owner_of(ccid)
                if owner is None and _matters(event):
                    # A call that started a moment ago may not be in the store yet (records
                    # are written in batches): look once more before giving up on it.
                    await asyncio.sleep(OWNER_RETRY_SECS)
                    owner = await store.owner_of(ccid)
                looked_up = time.monotonic()
                if owner is None or owner.rstrip("/") == self.url:
                    # No live owner, or the store still names us for a call we no longer hold.
                    metrics.REGISTRY.forwarded.labels(direction="sent", result="not_found").inc()
                    return "not_found"
                body = msgspec.json.encode(event)
                response = await self._http.post(
                    f"{owner.rstrip('/')}/internal/calls/{quote(ccid, safe='')}/events",
                    content=body,
                    headers={
                        FORWARD_HEADER: sign_forward(self.secret, body),
                        "content-type": "application/json",
                    },
                )
        except (TimeoutError, httpx.HTTPError, OSError) as exc:
            logger.warning("forwarding %s for %s failed: %s", _describe(event), ccid, type(exc).__name__)
            metrics.REGISTRY.forwarded.labels(direction="sent", result="failed").inc()
            return "failed"
        except Exception:
            logger.exception("forwarding %s for %s failed", _describe(event), ccid)
            metrics.REGISTRY.forwarded.labels(direction="sent", result="failed").inc()
            return "failed"
        elapsed_ms = (time.monotonic() - started) * 1000
        lookup_ms = (looked_up - started) * 1000
        if response.status_code == 404:
            metrics.REGISTRY.forwarded.labels(direction="sent", result="not_found").inc()
            return "not_found"
        if response.status_code == 502:
            # The owner took the event but Telnyx refused the action (a transfer).
            logger.warning("%s for %s: Telnyx refused it at the owner", _describe(event), ccid)
            metrics.REGISTRY.forwarded.labels(direction="sent", result="telnyx_error").inc()
            return "telnyx_error"
        if response.status_code != 200:
            logger.warning(
                "forwarding %s for %s: the owner answered %d", _describe(event), ccid, response.status_code
            )
            metrics.REGISTRY.forwarded.labels(direction="sent", result="failed").inc()
            return "failed"
        logger.info(
            "forwarded %s for %s to its instance in %.0f ms (owner lookup %.0f ms)",
            _describe(event),
            ccid,
            elapsed_ms,
            lookup_ms,
        )
        metrics.REGISTRY.forwarded.labels(direction="sent", result="delivered").inc()
        return "forwarded"


def advertised_url(host: str, port: int, template: str | None) -> str:
    """The URL other instances reach this listener at.

    ``template`` (INTERNAL_URL) may hold ``{port}``, replaced by the bound port (ephemeral,
    or offset per worker). Without it: ``http://host:port``, with the machine's hostname
    for a wildcard host (0.0.0.0 is nobody's address).
    """
    if template:
        return template.replace("{port}", str(port)).rstrip("/")
    if host in ("0.0.0.0", "::", ""):
        host = socket.gethostname()
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def worker_port(port: int, worker: str | None) -> int:
    """INTERNAL_PORT for this process: offset by the worker index under ``--workers``.

    Workers of one box cannot share a fixed port; ``INTERNAL_PORT=9000`` with two
    workers gives 9000 and 9001 (port 0 stays ephemeral).
    """
    if port == 0 or not worker or not worker.isdigit():
        return port
    return port + int(worker)


def _loopback(host: str) -> str:
    """An address of this listener reachable from this process."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if ":" in host:
        return "[::1]" if host == "::" else f"[{host}]"
    return host


def _matters(event: ControlEvent) -> bool:
    """Events worth a second owner lookup: those that change a live call."""
    if event.kind != "webhook":
        return True
    return event.event_type == "call.hangup" or event.event_type.startswith("call.machine.")


def _describe(event: ControlEvent) -> str:
    if event.kind == "transfer_leg":
        return f"agent-leg {event.event_type}"
    return event.event_type if event.kind == "webhook" else f"operator {event.kind}"


class _OwnLoggingConfig(uvicorn.Config):
    """A uvicorn config that leaves logging alone: the stock one sets the process-wide
    ``uvicorn.*`` levels and, with ``access_log=False``, removes the main server's access
    log handlers."""

    def configure_logging(self) -> None:
        """Nothing: the main server configured logging."""


class _SignalFreeServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to the process's main server."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """No signal handlers: the main (graceful) server owns SIGTERM/SIGINT."""
        yield


# ------------------------------------------------------------------------ the internal app


def internal_app(state: ServerState, secret: str) -> FastAPI:
    """The internal control listener: signed forwarded events, delivered here or 404."""
    app = FastAPI(title="callpipe internal", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/internal/livez")
    async def livez() -> Response:
        return JSONResponse({"status": "alive"})

    @app.post("/internal/calls/{ccid:path}/events")
    async def receive(ccid: str, request: Request) -> Response:
        raw = await _read_capped(request, MAX_FORWARD_BYTES)
        if raw is None:
            return _error(413, "too_large", "forwarded event too large")
        if not verify_forward(secret, raw, request.headers.get(FORWARD_HEADER)):
            logger.warning("refused a forwarded event with a bad or stale signature")
            metrics.REGISTRY.forwarded.labels(direction="received", result="bad_signature").inc()
            return _error(401, "bad_signature", "forwarded events must be signed with CALLPIPE_SECRET")
        try:
            event = msgspec.json.decode(raw, type=ControlEvent)
        except msgspec.DecodeError as exc:
            return _error(400, "bad_event", str(exc))
        try:
            delivered = await deliver_locally(state, ccid, event)  # never forwarded again
        except TelnyxError as exc:
            return _error(502, "telnyx_error", str(exc))
        result = "delivered" if delivered else "not_found"
        metrics.REGISTRY.forwarded.labels(direction="received", result=result).inc()
        return JSONResponse({"delivered": delivered}, status_code=200 if delivered else 404)

    # Imported here: the recordings module signs with this module's functions.
    from callpipe.server.recordings import add_internal_route

    add_internal_route(app, state, secret)
    return app


# ------------------------------------------------------------------------ the operator API


def control_router(state: ServerState) -> APIRouter:
    """``POST /api/calls/{id}/hangup`` and ``/transfer``, with ``Bearer CALLPIPE_API_KEY``."""
    router = APIRouter()

    async def act(request: Request, ccid: str, event: ControlEvent) -> Response:
        denied = _check_api_key(state, request)
        if denied is not None:
            return denied
        try:
            result = await dispatch(state, ccid, event)
        except TelnyxError as exc:
            return _error(502, "telnyx_error", str(exc))
        if result == "not_found":
            return _error(404, "no_such_call", "no live call with this call_control_id")
        if result == "failed":
            return _error(502, "forward_failed", "the instance holding the call did not answer")
        if result == "telnyx_error":
            return _error(502, "telnyx_error", "Telnyx refused the action (see the holding instance's log)")
        return JSONResponse({"ok": True, "call_control_id": ccid, "handled": result})

    @router.post("/api/calls/{ccid}/hangup")
    async def hangup(ccid: str, request: Request) -> Response:
        """End a live call, whichever instance holds it."""
        return await act(request, ccid, ControlEvent(kind="hangup"))

    @router.post("/api/calls/{ccid}/transfer")
    async def transfer(ccid: str, request: Request) -> Response:
        """Transfer a live call: ``{"to": "+E164" or "sip:…"}``."""
        denied = _check_api_key(state, request)
        if denied is not None:
            return denied
        raw = await _read_capped(request, state.settings.max_body_bytes)
        if raw is None:
            return _error(413, "too_large", f"request body over {state.settings.max_body_bytes} bytes")
        try:
            to = msgspec.json.decode(raw).get("to") if raw else None
        except (msgspec.DecodeError, AttributeError):
            to = None
        if not isinstance(to, str) or not to:
            return _error(422, "bad_destination", 'the body must be {"to": "+E164 number"}')
        try:
            to = _allowed_destination(state, to)
        except PolicyError as exc:
            logger.warning("operator transfer of %s refused: not on TRANSFER_ALLOWED_NUMBERS", ccid)
            return _error(403, "transfer_not_allowed", str(exc))
        return await act(request, ccid, ControlEvent(kind="transfer", to=to))

    return router


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


async def _read_capped(request: Request, limit: int) -> bytes | None:
    """The request body, or ``None`` once it passes ``limit`` bytes (not read further)."""
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > limit:
            return None
    return bytes(raw)


def _check_api_key(state: ServerState, request: Request) -> Response | None:
    expected = state.settings.secret("callpipe_api_key")
    if not expected:
        return _error(503, "api_disabled", "the call API needs CALLPIPE_API_KEY")
    auth = request.headers.get("authorization", "")
    if not auth.startswith("Bearer ") or not hmac.compare_digest(auth[7:].encode(), expected.encode()):
        return _error(401, "unauthorized", "a valid 'Authorization: Bearer <CALLPIPE_API_KEY>' is required")
    return None


def _error(status: int, code: str, detail: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "detail": detail}}, status_code=status)
