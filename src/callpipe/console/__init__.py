"""The web console: ``/dashboard`` (live calls, call list, call pages, overview) and ``/phone``.

A FastAPI router plus static assets shipped in this package (plain JS and CSS, no build
step, nothing from a CDN). :func:`mount_console` adds both to the server's app.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from callpipe.console.pages import static_dir
from callpipe.console.router import console_router

if TYPE_CHECKING:
    from callpipe.server.app import ServerState

__all__ = ["mount_console"]


def mount_console(app: FastAPI, state: ServerState) -> None:
    """Serve the console's pages, API and static assets from ``app``."""
    app.include_router(console_router(state))
    app.mount("/console/static", StaticFiles(directory=static_dir()), name="console-static")
