"""Reaching the fake Telnyx simulator's event loop from a test (it runs in a server thread)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import Response
from fastapi.routing import APIRoute

from callpipe.server.background import BackgroundServer


async def on_fake_loop(server: BackgroundServer, coro: Any) -> Any:
    """Run ``coro`` on the fake server's event loop (where its simulator lives)."""
    async with httpx.AsyncClient() as http:
        await http.get(f"{server.base_url}/loop-probe")
    loop = server.server.config.app.state.loop
    return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, loop))


def probe_loop(app: FastAPI) -> None:
    """A route (first, before the fake's catch-all) that remembers the server's loop."""

    async def probe(request: Request) -> Response:
        request.app.state.loop = asyncio.get_running_loop()
        return Response("ok")

    app.router.routes.insert(0, APIRoute("/loop-probe", probe, methods=["GET"]))
