"""``callpipe fake-telnyx`` and ``callpipe fake-realtime``: local stand-ins for the cloud APIs."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from callpipe.cli.common import LOOPBACK_HOSTS


def register(sub: Any) -> None:
    """Add ``fake-telnyx`` and ``fake-realtime`` to the ``callpipe`` parser's subparsers."""
    fake = sub.add_parser(
        "fake-telnyx", help="run the fake Telnyx API (dial-out answered by simulated callees)"
    )
    fake.add_argument("--host", default="127.0.0.1")
    fake.add_argument("--port", type=int, default=8765)
    fake.add_argument("--api-key", default="test-key", help="the API key it accepts (default test-key)")
    fake.add_argument("--webhook-url", help="where to send signed call webhooks")
    fake.add_argument(
        "--callee",
        action="append",
        metavar="NUMBER=KIND",
        help="what answers a dialled number: human, voicemail, screening, busy or no-answer (repeatable)",
    )
    fake.add_argument(
        "--default-callee",
        default="human",
        choices=("human", "voicemail", "screening", "busy", "no-answer"),
        help="what answers every other number (default human)",
    )
    fake.add_argument(
        "--callee-codec",
        metavar="CODEC[:RATE]",
        help="the codec the callees' calls carry, e.g. PCMA or L16:16000 (default: the stream's)",
    )
    fake.add_argument(
        "--agent",
        action="append",
        metavar="NUMBER=KIND",
        help="a warm-transfer agent: accept, decline, listen, no-answer or machine (repeatable)",
    )
    fake.add_argument("--allow-remote", action="store_true", help=argparse.SUPPRESS)
    fake.set_defaults(run=run_fake_telnyx, log_level=logging.INFO)

    realtime = sub.add_parser(
        "fake-realtime", help="run a fake OpenAI Realtime API (speech-to-speech wire protocol) for tests"
    )
    realtime.add_argument("--host", default="127.0.0.1")
    realtime.add_argument("--port", type=int, default=8766)
    realtime.add_argument("--api-key", help="the only API key it accepts (default: any)")
    realtime.add_argument("--allow-remote", action="store_true", help=argparse.SUPPRESS)
    realtime.set_defaults(run=run_fake_realtime, log_level=logging.INFO)


def run_fake_telnyx(args: argparse.Namespace) -> int:
    """Serve the fake Telnyx API with the callees and agents the arguments describe."""
    from callpipe.sim.fake_api import serve_fake_telnyx

    if args.host not in LOOPBACK_HOSTS and not args.allow_remote:
        raise SystemExit("the fake Telnyx API listens on loopback only (pass --allow-remote to override)")
    from callpipe.sim.fake_api.agent import FakeAgent
    from callpipe.sim.fake_api.callees import Callees, piper_voice

    try:
        callees = Callees.parse(
            args.callee or [], default=args.default_callee, voice=piper_voice(), human_hello=True
        )
        agents = FakeAgent.parse(args.agent or [])
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    codec, _, rate = (args.callee_codec or "").partition(":")
    serve_fake_telnyx(
        args.host,
        args.port,
        api_key=args.api_key,
        webhook_url=args.webhook_url,
        callees=callees,
        callee_codec=codec or None,
        callee_sample_rate=int(rate) if rate.isdigit() else None,
        agents=agents,
    )
    return 0


def run_fake_realtime(args: argparse.Namespace) -> int:
    """Serve the fake OpenAI Realtime API."""
    from callpipe.sim.fake_realtime import serve_fake_realtime

    if args.host not in LOOPBACK_HOSTS and not args.allow_remote:
        raise SystemExit("the fake Realtime API listens on loopback only (pass --allow-remote to override)")
    serve_fake_realtime(args.host, args.port, api_key=args.api_key)
    return 0
