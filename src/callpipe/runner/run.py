"""Pipecat's development-runner entry point, ``callpipe.runner.run.main``, mapped to ``callpipe serve``.

A Pipecat bot ends with::

    if __name__ == "__main__":
        from pipecat.runner.run import main
        main()

and runs as ``python bot.py -t telnyx --proxy HOST``. With ``callpipe`` on that import line
the same command serves the file's ``bot(runner_args)`` with callpipe's server: port 7860
and host ``localhost`` by default as in Pipecat, ``--proxy HOST`` becomes ``PUBLIC_URL``
(``https://HOST``). The Telnyx TeXML application's voice URL is ``https://HOST/texml``
(Pipecat's runner answers on ``/``). Flags of Pipecat's runner that have no meaning for a
Telnyx-only server stop with a message saying so.
"""

from __future__ import annotations

import argparse
import inspect
import logging
import os
import secrets
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["RUNNER_HOST", "RUNNER_PORT", "main", "runner_settings"]

RUNNER_HOST = "localhost"
RUNNER_PORT = 7860

# Pipecat runner flags callpipe does not have, and why.
_NOT_HERE = {
    "direct": "-d/--direct joins a Daily room; callpipe carries Telnyx calls only",
    "folder": "-f/--folder serves a downloads folder, which callpipe has not",
    "esp32": "--esp32 is for WebRTC SDP munging; callpipe carries Telnyx calls only",
    "whatsapp": "--whatsapp is for WhatsApp calls; callpipe carries Telnyx calls only",
    "runner_body": "--runner-body is for the eval transport; use `callpipe dial --body` for dial-out bodies",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Serve this file's bot(runner_args) on Telnyx calls with `callpipe serve` "
        "(callpipe's stand-in for Pipecat's development runner)"
    )
    parser.add_argument("--host", default=RUNNER_HOST, help=f"host address (default {RUNNER_HOST})")
    parser.add_argument("--port", type=int, default=RUNNER_PORT, help=f"port (default {RUNNER_PORT})")
    parser.add_argument("-t", "--transport", default="telnyx", help="only 'telnyx' (the default)")
    parser.add_argument(
        "-x", "--proxy", help="public host name Telnyx reaches (sets PUBLIC_URL=https://HOST)"
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    parser.add_argument("-d", "--direct", action="store_true", default=False, help=argparse.SUPPRESS)
    parser.add_argument("-f", "--folder", help=argparse.SUPPRESS)
    parser.add_argument("--esp32", action="store_true", default=False, help=argparse.SUPPRESS)
    parser.add_argument("--whatsapp", action="store_true", default=False, help=argparse.SUPPRESS)
    parser.add_argument("--runner-body", dest="runner_body", help=argparse.SUPPRESS)
    parser.add_argument(
        "--dialin", action=argparse.BooleanOptionalAction, default=True, help=argparse.SUPPRESS
    )
    return parser


def _clean_proxy(proxy: str) -> str:
    """The host name alone: Pipecat's runner also accepts (and strips) a scheme and slashes."""
    for prefix in ("https://", "http://", "wss://", "ws://"):
        proxy = proxy.removeprefix(prefix)
    return proxy.rstrip("/")


def runner_settings(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, dict[str, Any]]:
    """Parse Pipecat's runner flags; return them and the ``ServerSettings`` overrides they mean.

    Raises :class:`SystemExit` with a message for a flag callpipe does not have.
    """
    args, unknown = _parser().parse_known_args(argv)
    if unknown:
        raise SystemExit(f"unknown option(s) {' '.join(unknown)}: see --help (callpipe serve takes the rest)")
    if args.transport.lower() != "telnyx":
        raise SystemExit(
            f"-t {args.transport}: callpipe carries Telnyx calls only; use -t telnyx (the default)"
        )
    for name, why in _NOT_HERE.items():
        if getattr(args, name):
            raise SystemExit(why)
    overrides: dict[str, Any] = {}
    if args.proxy:
        overrides["public_url"] = "https://" + _clean_proxy(args.proxy)
    elif not os.environ.get("PUBLIC_URL"):
        overrides["public_url"] = f"http://{args.host}:{args.port}"
    if not os.environ.get("CALLPIPE_SECRET") and not os.environ.get("CALLPIPE_INSECURE_STREAMS"):
        # Pipecat's runner has no stream authentication; callpipe signs every stream URL.
        # A secret for this run keeps /texml working; a TeXML Bin needs a fixed one.
        overrides["callpipe_secret"] = secrets.token_urlsafe(32)
        print(
            "CALLPIPE_SECRET is not set: stream URLs are signed with a secret for this run only "
            "(TeXML applications pointing at /texml work, given TELNYX_PUBLIC_KEY or TEXML_PATH_SECRET; "
            "set CALLPIPE_SECRET for a TeXML Bin)",
            flush=True,
        )
    return args, overrides


def _bot_of_main() -> Any:
    """``bot`` of the script being run (as Pipecat's runner finds it), else ``bot.py`` in the cwd."""
    main_module = sys.modules.get("__main__")
    bot = getattr(main_module, "bot", None)
    if bot is None:
        from callpipe.server.serve import load_bot

        return load_bot("bot.py")
    if not inspect.iscoroutinefunction(bot):
        raise SystemExit("the bot file must define `async def bot(runner_args)`")
    return bot


def main(argv: Sequence[str] | None = None) -> None:
    """Run the calling file's ``bot`` under callpipe's server, with Pipecat's runner flags."""
    from callpipe.server.serve import build_server
    from callpipe.server.settings import ServerSettings, SettingsError

    args, overrides = runner_settings(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO)
    try:
        settings = ServerSettings(**overrides)
        settings.check_for_serving()
        server = build_server(_bot_of_main(), host=args.host, port=args.port, settings=settings)
    except (SettingsError, ValueError) as exc:
        raise SystemExit(str(exc)) from None
    print(f"callpipe serving on http://{args.host}:{args.port}", flush=True)
    print(f"  Telnyx TeXML application voice URL: {settings.public_url}/texml (POST)", flush=True)
    server.run()
