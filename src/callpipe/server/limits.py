"""Safe uvicorn settings for a media-stream server, and a one-line way to run an app with them.

A Telnyx media stream is many small text messages (a 20 ms ``media`` message is a few
hundred bytes). Uvicorn's defaults are made for general web apps and cost every other
call on the loop when one peer misbehaves:

* ``ws_max_size`` is 16 MiB: one such message is read, decompressed and decoded as UTF-8
  in one go before the app can refuse it. callpipe refuses anything over 64 KiB anyway,
  so the server is told to drop the connection at 256 KiB.
* permessage-deflate is negotiated with any client that offers it: every 20 ms message
  is then compressed on the way out, and a flood of tiny compressed frames is inflated
  thousands at a time in one read callback (measured in docs/benchmarks.md). Base64
  audio hardly compresses, so it is off.

``callpipe serve`` runs with these settings. A bot that runs its own FastAPI app, as
Pipecat's guide does with ``uvicorn.run(app)``, gets them with :func:`serve_app`.
"""

from __future__ import annotations

from typing import Any

WS_MAX_SIZE = 256 * 1024

SAFE_WEBSOCKET_OPTIONS: dict[str, Any] = {
    "ws_max_size": WS_MAX_SIZE,
    "ws_per_message_deflate": False,
}
"""The uvicorn options that keep one peer's messages from costing the other calls."""


def uvicorn_config(app: Any, *, host: str = "127.0.0.1", port: int = 8000, **options: Any) -> Any:
    """A ``uvicorn.Config`` for ``app`` with :data:`SAFE_WEBSOCKET_OPTIONS` (``options`` win)."""
    import uvicorn

    return uvicorn.Config(app, host=host, port=port, **{**SAFE_WEBSOCKET_OPTIONS, **options})


def serve_app(app: Any, *, host: str = "127.0.0.1", port: int = 8000, **options: Any) -> None:
    """Run ``app`` under uvicorn with safe limits: a drop-in for ``uvicorn.run(app, host=..., port=...)``.

    Blocks until the server stops (Ctrl-C). ``options`` are passed to uvicorn
    (``log_level="warning"``, ``proxy_headers=True``...) and override the safe defaults.
    """
    import uvicorn

    uvicorn.Server(uvicorn_config(app, host=host, port=port, **options)).run()
