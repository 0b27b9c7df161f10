"""The ``callpipe`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from callpipe import __version__


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="callpipe",
        description="Real-time voice AI agents on Telnyx phone calls.",
    )
    parser.add_argument("--version", action="version", version=f"callpipe {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("demo", help="hold a spoken demo call with the built-in assistant, offline")
    return parser


def _demo(args: argparse.Namespace) -> int:
    # The demo (simulated caller + built-in assistant) arrives with the services layer;
    # until then say plainly what this build offers.
    print(f"callpipe {__version__}: the offline demo call is not available in this build yet.")
    print("Available now:")
    print("  callpipe.telnyx.protocol  Telnyx media-stream messages (parse/build, sans-I/O)")
    print("  callpipe.telnyx.api       Telnyx REST client (dial, TeXML calls, hang-up, transfer, DTMF)")
    print("  callpipe.telnyx.webhooks  Ed25519 webhook signature verification")
    print("  callpipe.audio            G.711 PCMU/PCMA, L16, G.722 codecs and streaming resampling")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``callpipe`` command line and return the process exit code."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command == "demo":
        return _demo(args)
    parser.print_help(sys.stderr)
    return 2
