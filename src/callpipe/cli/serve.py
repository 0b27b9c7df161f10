"""``callpipe serve``: the dial-in / dial-out server for a bot."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from callpipe.cli.common import settings_from


def register(sub: Any) -> None:
    """Add ``serve`` to the ``callpipe`` parser's subparsers."""
    serve = sub.add_parser("serve", help="run the dial-in / dial-out server for a bot")
    serve.add_argument(
        "bot", nargs="?", help="bot file (bot.py) or module[:function] defining async def bot(runner_args)"
    )
    serve.add_argument("--host", default="0.0.0.0")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--public-url", help="the public https URL Telnyx reaches (default: PUBLIC_URL)")
    serve.add_argument(
        "--workers", type=int, default=1, help="processes serving the port (default 1; e.g. one per core)"
    )
    serve.set_defaults(run=run_serve, log_level=logging.INFO)


def run_serve(args: argparse.Namespace) -> int:
    """Serve a bot (or the built-in assistant) in this process, or in ``--workers`` processes."""
    from callpipe.server.serve import BotLoadError, build_server, load_bot
    from callpipe.server.settings import SettingsError

    if args.workers < 1:
        raise SystemExit("--workers must be at least 1")
    if args.workers > 1:
        return _serve_workers(args)
    try:
        if args.bot:
            bot = load_bot(args.bot)
        else:
            from callpipe.services.assistant import bot as assistant_bot
            from callpipe.services.assistant import preload_models

            print("no bot file given: running the built-in assistant (loading its models…)", flush=True)
            preload_models()
            bot = assistant_bot
        settings = settings_from(args)
        server = build_server(bot, host=args.host, port=args.port, settings=settings)
    except (BotLoadError, SettingsError) as exc:
        raise SystemExit(str(exc)) from None
    print(
        f"callpipe serving {args.bot or 'the built-in assistant'} on http://{args.host}:{args.port}",
        flush=True,
    )
    texml_path = "/texml/<TEXML_PATH_SECRET>" if settings.secret("texml_path_secret") else "/texml"
    print(
        f"  TeXML for dial-in: {settings.public_url}{texml_path}   streams: {settings.public_url}/ws",
        flush=True,
    )
    server.run()
    return 0


def _serve_workers(args: argparse.Namespace) -> int:
    from callpipe.server.serve import BotLoadError, load_bot
    from callpipe.server.settings import SettingsError
    from callpipe.server.workers import run_workers

    settings = settings_from(args)
    try:
        if args.bot:
            load_bot(args.bot)  # fail here, once, with a clear message, not in every worker
        settings.check_for_serving()
    except (BotLoadError, SettingsError) as exc:
        raise SystemExit(str(exc)) from None
    print(
        f"callpipe serving {args.bot or 'the built-in assistant'} on http://{args.host}:{args.port}"
        f" with {args.workers} workers",
        flush=True,
    )
    level = logging.DEBUG if args.verbose else logging.INFO
    return run_workers(
        args.bot, host=args.host, port=args.port, workers=args.workers, settings=settings, level=level
    )
