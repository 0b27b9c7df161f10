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

from fastapi import FastAPI

from callpipe.server.api_calls import router as calls_router
from callpipe.server.health import health_router
from callpipe.server.lifespan import app_lifespan
from callpipe.server.routes.dial_out import dial_out_router
from callpipe.server.routes.media import media_router
from callpipe.server.routes.operator import control_router
from callpipe.server.routes.telnyx import telnyx_router
from callpipe.server.settings import ServerSettings

# Re-exported: callpipe.server.app was their home, and bots, tests and the other server
# modules import them from here.
from callpipe.server.state import BotFunction as BotFunction
from callpipe.server.state import ServerState as ServerState
from callpipe.server.telnyx_auth import TelnyxRequestAuth
from callpipe.server.urls import decode_body as decode_body
from callpipe.server.urls import encode_body as encode_body
from callpipe.server.urls import stream_url as stream_url
from callpipe.server.urls import texml_document as texml_document
from callpipe.store.base import CallStore
from callpipe.telnyx.api import TelnyxClient

__all__ = [
    "BotFunction",
    "ServerState",
    "create_app",
    "decode_body",
    "encode_body",
    "stream_url",
    "texml_document",
]


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

    # The API's own description is surface an attacker reads first: off unless asked for.
    docs = settings.callpipe_api_docs
    app = FastAPI(
        title="callpipe",
        lifespan=app_lifespan(state, telnyx_auth),
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
    )
    app.state.callpipe = state
    app.include_router(health_router(state))
    app.include_router(control_router(state))
    app.include_router(calls_router)
    from callpipe.console import mount_console

    mount_console(app, state)  # /dashboard, /phone and their /console/api
    app.include_router(telnyx_router(state, telnyx_auth))
    app.include_router(dial_out_router(state))
    app.include_router(media_router(state))
    return app
