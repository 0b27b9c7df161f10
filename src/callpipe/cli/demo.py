"""``callpipe demo``: a spoken call with the built-in assistant, everything in one process, offline."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    """Add ``demo`` to the ``callpipe`` parser's subparsers."""
    demo = sub.add_parser("demo", help="hold a spoken demo call with the built-in assistant, offline")
    demo.add_argument("--say", action="append", default=[], help="a line for the caller (repeatable)")
    demo.add_argument("--script", help="a text file with one caller line per line")
    demo.add_argument("--record", default="callpipe-demo.wav", help="stereo WAV of the call")
    demo.add_argument("--json", default="callpipe-demo.json", help="JSON transcript of the call")
    demo.add_argument(
        "--calls", type=int, default=1, help="hold N simultaneous calls (different callers, a second apart)"
    )
    demo.add_argument(
        "--serve", action="store_true", help="then keep serving the web console (/dashboard, /phone)"
    )
    demo.add_argument("--port", type=int, default=8000, help="the console's port with --serve")
    # The demo prints its own conversation: warnings in between would garble it.
    demo.set_defaults(run=run_demo, log_level=logging.ERROR)


def run_demo(args: argparse.Namespace) -> int:
    """Hold the demo call(s) with the caller lines from ``--say`` and ``--script``."""
    from callpipe import demo

    lines: list[str] = list(args.say)
    if args.script:
        try:
            text = Path(args.script).read_text()
        except OSError as exc:
            raise SystemExit(f"cannot read {args.script}: {exc}") from None
        lines += [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    if args.calls < 1:
        raise SystemExit("--calls must be at least 1")
    serve_port = args.port if args.serve else None
    return demo.main(
        lines or None, record=args.record, transcript=args.json, calls=args.calls, serve_port=serve_port
    )
