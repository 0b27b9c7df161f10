"""``callpipe texml`` (the document for dial-in) and ``callpipe dial`` (ask a server to dial out)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from callpipe.cli.common import settings_from


def register(sub: Any) -> None:
    """Add ``texml`` and ``dial`` to the ``callpipe`` parser's subparsers."""
    texml = sub.add_parser("texml", help="print the TeXML document for a TeXML Bin (dial-in)")
    texml.add_argument("--public-url", help="the public https URL of the server (default: PUBLIC_URL)")
    texml.add_argument(
        "--ttl-minutes",
        type=float,
        default=10.0,
        help="without TEXML_PATH_SECRET: lifetime of the document's one-use stream token (max 60)",
    )
    texml.set_defaults(run=run_texml)

    dial = sub.add_parser("dial", help="ask a running server to place an outbound call (POST /start)")
    dial.add_argument("phone_number", help="E.164 number, e.g. +15551234567")
    dial.add_argument("--body", help="JSON passed to the bot as runner_args.body")
    dial.add_argument("--server", default="http://127.0.0.1:8000", help="the callpipe server")
    dial.add_argument(
        "--amd",
        help="answering machine detection: premium, detect, detect_beep, detect_words or greeting_end",
    )
    dial.add_argument("--api-key", help="CALLPIPE_API_KEY of the server (default: from the environment)")
    dial.add_argument(
        "--stream-codec", help="what the bot sends back: PCMU, PCMA, G722 or L16 (DIAL_MODE=call_control)"
    )
    dial.add_argument("--stream-rate", type=int, help="its sampling rate (8000, or 16000 for G722/L16)")
    dial.add_argument("--target-legs", choices=("self", "opposite", "both"), help="who hears the bot")
    dial.add_argument(
        "--stream-track",
        choices=("inbound_track", "outbound_track", "both_tracks"),
        help="tracks Telnyx streams",
    )
    dial.set_defaults(run=run_dial)


def run_texml(args: argparse.Namespace) -> int:
    """Print TeXML for a TeXML Bin, and say on stderr how long and how often it works."""
    from xml.sax.saxutils import escape

    from callpipe.server.settings import SettingsError
    from callpipe.server.urls import http_base, stream_url, texml_document

    settings = settings_from(args)
    try:
        settings.check_for_serving()
    except SettingsError as exc:
        raise SystemExit(str(exc)) from None
    path_secret = settings.secret("texml_path_secret")
    if path_secret:
        # A static bin that works for every call: it sends each call to the server, which
        # gives the call a stream token of its own (bound to its CallSid, single-use).
        url = f"{http_base(settings)}/texml/{path_secret}"
        print(
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f'<Response><Redirect method="POST">{escape(url)}</Redirect></Response>'
        )
        print(
            "This document redirects every call to PUBLIC_URL/texml/<TEXML_PATH_SECRET>, which issues "
            "each call its own single-use stream token. Keep it private: the path is a secret. "
            "(Or give Telnyx that URL as the TeXML application's voice URL.)",
            file=sys.stderr,
        )
        return 0
    if not 0 < args.ttl_minutes <= 60:
        raise SystemExit("--ttl-minutes must be between 0 and 60")
    url = stream_url(settings, direction="inbound", call_sid=None, extra={}, ttl=args.ttl_minutes * 60)
    print(texml_document(settings, url))
    if settings.secret("callpipe_secret"):
        print(
            f"NOTE: this document's stream token is bound to no call: it opens ONE stream within "
            f"{args.ttl_minutes:g} minutes, then never again. For a TeXML Bin that serves every call, "
            "set TEXML_PATH_SECRET and run this again.",
            file=sys.stderr,
        )
    return 0


async def run_dial(args: argparse.Namespace) -> int:
    """POST /start to a running server and print its answer; 0 if the call was placed."""
    import httpx

    body = {}
    if args.body:
        try:
            body = json.loads(args.body)
        except json.JSONDecodeError as exc:
            raise SystemExit(f"--body must be JSON: {exc}") from None
    settings = settings_from(args)
    key = args.api_key or settings.secret("callpipe_api_key")
    if not key:
        raise SystemExit("set CALLPIPE_API_KEY (or --api-key) to call /start")
    request: dict[str, Any] = {"phone_number": args.phone_number, "body": body, "amd": args.amd or False}
    stream = {
        "stream_bidirectional_codec": args.stream_codec,
        "stream_bidirectional_sampling_rate": args.stream_rate,
        "stream_bidirectional_target_legs": args.target_legs,
        "stream_track": args.stream_track,
    }
    request.update({name: value for name, value in stream.items() if value is not None})
    async with httpx.AsyncClient(timeout=30) as http:
        response = await http.post(
            args.server.rstrip("/") + "/start",
            json=request,
            headers={"Authorization": f"Bearer {key}"},
        )
    print(json.dumps(response.json(), indent=2))
    return 0 if response.status_code == 200 else 1
