"""``callpipe serve``: load a bot, run the app under uvicorn, shut down gracefully."""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import inspect
import logging
import os
import re
import sys
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn

from callpipe.server.app import BotFunction, ServerState, create_app
from callpipe.server.limits import SAFE_WEBSOCKET_OPTIONS
from callpipe.server.settings import ServerSettings

logger = logging.getLogger("callpipe.server")

# Largest WebSocket message uvicorn accepts: a Telnyx media message is a few hundred
# bytes; refusing big frames in the protocol layer means they are never buffered whole.


# Settings that bots read from os.environ rather than from ServerSettings.
BOT_ENVIRONMENT = (
    "telnyx_api_key",
    "telnyx_api_base_url",
    "openai_api_key",
    "openai_base_url",
    "deepgram_api_key",
    "deepgram_base_url",
    "cartesia_api_key",
    "cartesia_base_url",
    "transfer_allowed_numbers",  # TelephonyTools reads it at each call
)

_TOKEN_IN_URL = re.compile(r"(\b(?:token|sig)=)[^&\s\"]+")
_TEXML_PATH_SECRET = re.compile(r"(/texml/)[^?\s\"/]+")


def _redact(text: str) -> str:
    return _TEXML_PATH_SECRET.sub(r"\1[redacted]", _TOKEN_IN_URL.sub(r"\1[redacted]", text))


class RedactStreamTokens(logging.Filter):
    """Keeps credentials out of uvicorn's request lines (``GET /ws?token=…``, ``/texml/<secret>``).

    A stream token is a bearer credential for ``/ws``, an ``/answer`` signature one for a
    dial-out body, the ``/texml/<secret>`` path one for TeXML: none may land in log storage.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Redact them in the record's arguments; never drops a record."""
        if isinstance(record.args, tuple) and any(
            isinstance(a, str) and ("=" in a or "/texml/" in a) for a in record.args
        ):
            record.args = tuple(_redact(a) if isinstance(a, str) else a for a in record.args)
        return True


_REDACT_TOKENS = RedactStreamTokens()


class BotLoadError(ValueError):
    """The bot file or module could not be loaded, or has no ``async def bot(runner_args)``."""


def load_bot(spec: str) -> BotFunction:
    """Load ``bot`` from a file (``bot.py``) or a module (``package.module`` / ``module:function``)."""
    module_name, _, attribute = spec.partition(":")
    attribute = attribute or "bot"
    path = Path(module_name)
    try:
        if path.suffix == ".py" or path.exists():
            if not path.exists():
                raise BotLoadError(f"bot file not found: {path}")
            module_spec = importlib.util.spec_from_file_location(f"callpipe_bot_{path.stem}", path)
            if module_spec is None or module_spec.loader is None:
                raise BotLoadError(f"cannot load {path}")
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[module_spec.name] = module
            sys.path.insert(0, str(path.resolve().parent))
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except BotLoadError:
        raise
    except Exception as exc:
        raise BotLoadError(f"cannot load bot {spec!r}: {type(exc).__name__}: {exc}") from exc
    function = getattr(module, attribute, None)
    if function is None or not inspect.iscoroutinefunction(function):
        raise BotLoadError(f"{spec!r} must define `async def {attribute}(runner_args)`")
    bot: BotFunction = function
    return bot


class GracefulServer(uvicorn.Server):
    """uvicorn that drains calls on the first SIGTERM/SIGINT and forces on the second.

    Draining: new streams and dial-outs are refused (``/readyz`` answers 503 so the load
    balancer stops sending calls), live calls run on for up to ``grace_secs``, and any
    still running then are ended (their pipelines cancelled, which hangs them up).
    """

    def __init__(self, config: uvicorn.Config, state: ServerState | None, grace_secs: float) -> None:
        super().__init__(config)
        self.callpipe_state = state
        self.grace_secs = grace_secs
        self._drain_task: asyncio.Task[None] | None = None

    def current_state(self) -> ServerState | None:
        """The app's state (a worker only knows it once its app factory has run)."""
        return self.callpipe_state

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """First signal: drain, then exit. Second signal: exit now."""
        state = self.current_state()
        if self._drain_task is not None or state is None:
            super().handle_exit(sig, frame)
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            super().handle_exit(sig, frame)
            return
        logger.info("signal %s: draining calls (up to %.0fs); send again to stop now", sig, self.grace_secs)
        state.draining = True
        self._drain_task = loop.create_task(self._drain_then_exit(state))

    async def _drain_then_exit(self, state: ServerState) -> None:
        try:
            await state.drain(self.grace_secs)
        finally:
            self.should_exit = True


def export_bot_environment(settings: ServerSettings) -> None:
    """Put the settings bots read from ``os.environ`` there (they may come from ``.env``).

    Bots read these from the process environment (create_telnyx_transport for auto
    hang-up, the built-in assistant for its providers), which a .env file is not part
    of: export them, so that a setting works the same from .env or the environment.
    """
    for name in BOT_ENVIRONMENT:
        value = settings.secret(name)
        if value:
            os.environ.setdefault(name.upper(), value)


def uvicorn_options(host: str, port: int, log_level: str) -> dict[str, Any]:
    """The uvicorn settings every callpipe server runs with (single process or workers)."""
    return {
        "host": host,
        "port": port,
        "log_level": log_level,
        **SAFE_WEBSOCKET_OPTIONS,
        "lifespan": "on",
        "proxy_headers": True,
    }


def redact_uvicorn_logs() -> None:
    """Keep stream tokens out of uvicorn's logs (call after ``uvicorn.Config``)."""
    for name in ("uvicorn.access", "uvicorn.error"):
        logging.getLogger(name).addFilter(_REDACT_TOKENS)


def build_server(
    bot: BotFunction,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    settings: ServerSettings | None = None,
    log_level: str = "info",
    **extra_uvicorn_options: Any,
) -> GracefulServer:
    """The configured, not yet running, server for ``bot``."""
    settings = settings or ServerSettings()
    app = create_app(bot, settings)
    app.state.callpipe.freeze_heap = True
    export_bot_environment(settings)
    config = uvicorn.Config(app, **uvicorn_options(host, port, log_level), **extra_uvicorn_options)
    redact_uvicorn_logs()  # after uvicorn.Config, which (re)configures its loggers
    return GracefulServer(config, app.state.callpipe, settings.shutdown_grace_secs)
