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

This module holds the listener and the forwarding client (:class:`ControlPlane`); what an
event does to a call is :mod:`callpipe.server.delivery`, the forwards' signature
:mod:`callpipe.server.forward_signing`, the operator's API
:mod:`callpipe.server.routes.operator`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import quote

import httpx
import msgspec
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from callpipe import metrics
from callpipe.server.bodies import BodyTooLarge, read_capped

# Re-exported: callpipe.server.control was their home (the console, tests and bots import
# them from here); delivery, signing and the operator API are modules of their own now.
from callpipe.server.delivery import ControlEvent as ControlEvent
from callpipe.server.delivery import deliver_locally as deliver_locally
from callpipe.server.delivery import dispatch as dispatch
from callpipe.server.delivery import spawn_hangup as spawn_hangup
from callpipe.server.endpoints import error
from callpipe.server.forward_signing import FORWARD_HEADER as FORWARD_HEADER
from callpipe.server.forward_signing import sign_forward as sign_forward
from callpipe.server.forward_signing import verify_forward as verify_forward
from callpipe.server.recordings import add_internal_route
from callpipe.server.routes.operator import control_router as control_router
from callpipe.telnyx.api import TelnyxError

if TYPE_CHECKING:
    from callpipe.server.state import ServerState
    from callpipe.store.base import CallStore

__all__ = [
    "FORWARD_HEADER",
    "ControlEvent",
    "ControlPlane",
    "advertised_url",
    "control_router",
    "deliver_locally",
    "dispatch",
    "internal_app",
    "sign_forward",
    "spawn_hangup",
    "verify_forward",
    "worker_port",
]

logger = logging.getLogger("callpipe.server.control")

MAX_FORWARD_BYTES = 64 * 1024
# A little over the record writer's batch interval (0.5 s): by then a new call is stored.
OWNER_RETRY_SECS = 0.6


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
                owner = await _owner_of(store, ccid, event)
                looked_up = time.monotonic()
                if owner is None or owner.rstrip("/") == self.url:
                    # No live owner, or the store still names us for a call we no longer hold.
                    _count_sent("not_found")
                    return "not_found"
                response = await self._post(self._http, owner, ccid, event)
        except (TimeoutError, httpx.HTTPError, OSError) as exc:
            logger.warning("forwarding %s for %s failed: %s", _describe(event), ccid, type(exc).__name__)
            _count_sent("failed")
            return "failed"
        except Exception:
            logger.exception("forwarding %s for %s failed", _describe(event), ccid)
            _count_sent("failed")
            return "failed"
        outcome = _outcome_of(response.status_code, event, ccid)
        if outcome == "forwarded":
            logger.info(
                "forwarded %s for %s to its instance in %.0f ms (owner lookup %.0f ms)",
                _describe(event),
                ccid,
                (time.monotonic() - started) * 1000,
                (looked_up - started) * 1000,
            )
        _count_sent("delivered" if outcome == "forwarded" else outcome)
        return outcome

    async def _post(
        self, http: httpx.AsyncClient, owner: str, ccid: str, event: ControlEvent
    ) -> httpx.Response:
        """One signed request to the owner's internal listener."""
        body = msgspec.json.encode(event)
        return await http.post(
            f"{owner.rstrip('/')}/internal/calls/{quote(ccid, safe='')}/events",
            content=body,
            headers={FORWARD_HEADER: sign_forward(self.secret, body), "content-type": "application/json"},
        )


async def _owner_of(store: CallStore, ccid: str, event: ControlEvent) -> str | None:
    """The internal URL of the instance holding ``ccid`` (``None``: no live instance does)."""
    owner = await store.owner_of(ccid)
    if owner is None and _matters(event):
        # A call that started a moment ago may not be in the store yet (records are
        # written in batches): look once more before giving up on it.
        await asyncio.sleep(OWNER_RETRY_SECS)
        owner = await store.owner_of(ccid)
    return owner


def _outcome_of(status: int, event: ControlEvent, ccid: str) -> str:
    """What the owner's answer ``status`` means for the forwarded event (logged when it failed)."""
    if status == 404:
        return "not_found"
    if status == 502:
        # The owner took the event but Telnyx refused the action (a transfer).
        logger.warning("%s for %s: Telnyx refused it at the owner", _describe(event), ccid)
        return "telnyx_error"
    if status != 200:
        logger.warning("forwarding %s for %s: the owner answered %d", _describe(event), ccid, status)
        return "failed"
    return "forwarded"


def _count_sent(result: str) -> None:
    metrics.REGISTRY.forwarded.labels(direction="sent", result=result).inc()


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
        """Liveness of the internal listener (and the first request that warms it up)."""
        return JSONResponse({"status": "alive"})

    @app.post("/internal/calls/{ccid:path}/events")
    async def receive(ccid: str, request: Request) -> Response:
        """A forwarded event: verified, decoded, delivered here (never forwarded again)."""
        try:
            raw = await read_capped(request, MAX_FORWARD_BYTES)
        except BodyTooLarge:
            return error(413, "too_large", "forwarded event too large")
        if not verify_forward(secret, raw, request.headers.get(FORWARD_HEADER)):
            logger.warning("refused a forwarded event with a bad or stale signature")
            metrics.REGISTRY.forwarded.labels(direction="received", result="bad_signature").inc()
            return error(401, "bad_signature", "forwarded events must be signed with CALLPIPE_SECRET")
        try:
            event = msgspec.json.decode(raw, type=ControlEvent)
        except msgspec.DecodeError as exc:
            return error(400, "bad_event", str(exc))
        try:
            delivered = await deliver_locally(state, ccid, event)  # never forwarded again
        except TelnyxError as exc:
            return error(502, "telnyx_error", str(exc))
        result = "delivered" if delivered else "not_found"
        metrics.REGISTRY.forwarded.labels(direction="received", result=result).inc()
        return JSONResponse({"delivered": delivered}, status_code=200 if delivered else 404)

    add_internal_route(app, state, secret)
    return app
