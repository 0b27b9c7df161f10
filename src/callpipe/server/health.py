"""Health and metrics endpoints: ``/livez``, ``/readyz`` (and ``/healthz``), ``/metrics``.

* ``/livez``: the process is alive and its event loop answers; 200 also while draining,
  so an orchestrator never kills a process that is finishing its calls.
* ``/readyz`` (``/healthz`` is the same): 200 only while this process takes new calls;
  503 before start-up has finished (models warm, store started), while draining, and
  while it holds ``MAX_CALLS`` calls, so a load balancer sends calls elsewhere.
* ``/metrics``: Prometheus text, with ``Authorization: Bearer $CALLPIPE_API_KEY``. With
  ``METRICS_PORT`` it is also served, unauthenticated, on that separate listener (bind it
  to an internal interface with ``METRICS_HOST``); under ``--workers`` the supervisor
  serves that port for the whole box.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import prometheus_client
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from callpipe import metrics
from callpipe.server.api_key import api_key_denial

if TYPE_CHECKING:
    from callpipe.server.state import ServerState

__all__ = ["health_router", "readiness", "start_metrics_listener"]

logger = logging.getLogger("callpipe.server")


def readiness(state: ServerState) -> tuple[bool, str]:
    """Whether this process takes new calls, and the status word ``/readyz`` reports."""
    if state.draining:
        return False, "draining"
    if not state.ready:
        return False, "starting"
    if not state.models_warm:
        return False, "warming_up"
    if state.at_capacity():
        return False, "at_capacity"
    return True, "ok"


def health_router(state: ServerState) -> APIRouter:
    """The health and metrics routes of the public app."""
    router = APIRouter()

    @router.get("/livez")
    async def livez() -> Response:
        """Liveness: 200 as long as the process serves requests (draining included)."""
        return JSONResponse({"status": "draining" if state.draining else "alive"})

    @router.get("/readyz")
    async def readyz() -> Response:
        """Readiness: 503 while starting, draining, or at MAX_CALLS."""
        ready, status = readiness(state)
        body: dict[str, Any] = {"status": status, "active_calls": len(state.calls)}
        return JSONResponse(body, status_code=200 if ready else 503)

    router.add_api_route("/healthz", readyz, methods=["GET"], include_in_schema=False)

    @router.get("/metrics")
    async def metrics_endpoint(request: Request) -> Response:
        """Prometheus metrics, behind the API key (or unauthenticated on METRICS_PORT)."""
        denied = api_key_denial(
            request,
            state.settings.secret("callpipe_api_key"),
            disabled_code="metrics_disabled",
            disabled_detail="/metrics needs CALLPIPE_API_KEY here, or set METRICS_PORT",
        )
        if denied is not None:
            return denied
        return Response(metrics.REGISTRY.render(), media_type=metrics.CONTENT_TYPE)

    return router


def start_metrics_listener(host: str, port: int) -> Any:
    """Serve ``/metrics`` (unauthenticated) on ``host:port`` in a daemon thread; returns the server.

    prometheus-client's own small HTTP server: the scrape never touches the event loop
    that carries the calls' audio.
    """
    server, _thread = prometheus_client.start_http_server(
        port, addr=host, registry=metrics.REGISTRY.scrape_registry()
    )
    logger.info("metrics on http://%s:%d/metrics", host, server.server_port)
    return server
