"""Run an ASGI app under a real uvicorn server in a background thread.

Used by the tests, the simulator and ``callpipe demo``: each needs a real HTTP/WebSocket
server on 127.0.0.1 that runs on its own event loop while the caller's loop does other work.
"""

from __future__ import annotations

import socket
import threading
import time
from types import TracebackType
from typing import Any

import uvicorn


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class BackgroundServer:
    """A uvicorn server for ``app`` on ``host:port`` (a free port by default) in a daemon thread.

    Use as a context manager, or call :meth:`start` and :meth:`stop`. ``base_url`` and
    ``ws_url`` are valid once started.
    """

    def __init__(
        self,
        app: Any,
        host: str = "127.0.0.1",
        port: int | None = None,
        *,
        log_level: str = "warning",
        startup_timeout: float = 10.0,
        **uvicorn_options: Any,
    ) -> None:
        self.host = host
        self.port = port if port is not None else free_port(host)
        self._startup_timeout = startup_timeout
        config = uvicorn.Config(
            app, host=host, port=self.port, log_level=log_level, lifespan="auto", **uvicorn_options
        )
        self.server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        """``http://host:port`` of the running server."""
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        """``ws://host:port`` of the running server."""
        return f"ws://{self.host}:{self.port}"

    def start(self) -> BackgroundServer:
        """Start serving and wait until the socket accepts connections."""
        self._thread = threading.Thread(target=self.server.run, name=f"uvicorn:{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + self._startup_timeout
        while not self.server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"uvicorn failed to start on {self.host}:{self.port}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"uvicorn did not start on {self.host}:{self.port} in time")
            time.sleep(0.01)
        state = getattr(getattr(self.server.config.app, "state", None), "callpipe", None)
        # A callpipe app warms its models in the background after start-up; callers of
        # this helper (tests, the demo) want a server that is ready, as a load balancer does.
        while state is not None and not state.models_warm:
            if time.monotonic() > deadline + 120:
                raise TimeoutError("the models did not warm up in time")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the server to exit and wait for its thread."""
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
