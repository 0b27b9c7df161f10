"""The ``callpipe`` command line.

Each module registers a group of sub-commands on the parser and sets, per sub-command,
``run`` (a function of the parsed arguments returning the exit code, or a coroutine for
it) and, where the command logs more or less than warnings, ``log_level``. ``main``
assembles the parser and dispatches. Modules import their heavy dependencies when a
command runs, so that ``callpipe --help`` stays quick.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import logging
import sys
from collections.abc import Sequence

from callpipe import __version__
from callpipe.cli import call, demo, dial, fakes, serve
from callpipe.log import configure_logging

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The ``callpipe`` parser with every sub-command registered."""
    from callpipe.store.cli import add_calls_parser

    parser = argparse.ArgumentParser(
        prog="callpipe", description="Real-time voice AI agents on Telnyx phone calls."
    )
    parser.add_argument("--version", action="version", version=f"callpipe {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at debug level")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo.register(sub)
    call.register(sub)
    serve.register(sub)
    dial.register(sub)
    add_calls_parser(sub)
    fakes.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``callpipe`` command line and return the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(logging.DEBUG if args.verbose else getattr(args, "log_level", logging.WARNING))
    run = getattr(args, "run", None)
    if run is None:
        parser.print_help(sys.stderr)
        return 2
    outcome = run(args)
    if inspect.iscoroutine(outcome):
        outcome = asyncio.run(outcome)
    return int(outcome)
