"""``callpipe calls list|show|export``: the call records from the terminal.

Reads the store that ``callpipe serve`` writes: ``DATABASE_URL`` / ``DATA_DIR`` from the
environment or ``.env`` (``--database-url`` / ``--data-dir`` override them).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from callpipe.records.model import END_REASONS, CallRecord
from callpipe.store.base import CallFilter

if TYPE_CHECKING:  # imported when run: building the parser must not load SQLAlchemy
    from callpipe.store.sql import SqlCallStore

__all__ = ["add_calls_parser", "run_calls"]

CSV_COLUMNS = (
    "call_control_id",
    "direction",
    "from",
    "to",
    "started_at",
    "answered_at",
    "ended_at",
    "duration_secs",
    "end_reason",
    "hangup_by",
    "instance",
    "turn_count",
    "transcript",
    "custom",
)


def add_calls_parser(sub: Any) -> None:
    """Add ``calls`` and its sub-commands to the ``callpipe`` parser's subparsers."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--database-url", help="the store's database (default: DATABASE_URL)")
    common.add_argument("--data-dir", help="where the embedded SQLite store is (default: DATA_DIR)")
    filters = argparse.ArgumentParser(add_help=False)
    filters.add_argument("--direction", choices=("inbound", "outbound"))
    filters.add_argument("--number", help="calls from or to this number (E.164)")
    filters.add_argument("--since", help="started at or after (ISO 8601, e.g. 2026-01-31T09:00:00Z)")
    filters.add_argument("--until", help="started before (ISO 8601)")
    filters.add_argument("--end-reason", choices=END_REASONS)
    filters.add_argument("-q", "--text", help="text said in the call (case-insensitive)")

    calls = sub.add_parser("calls", help="read the call records (list, show, export)")
    calls.set_defaults(run=run_calls)
    calls_sub = calls.add_subparsers(dest="calls_command", metavar="COMMAND", required=True)
    listing = calls_sub.add_parser("list", parents=[common, filters], help="the newest calls, a line each")
    listing.add_argument("--limit", type=int, default=20, help="calls to show (default 20, at most 500)")
    listing.add_argument("--cursor", help="continue after a previous listing (its next-page cursor)")
    listing.add_argument("--json", action="store_true", help="the API's JSON instead of a table")
    show = calls_sub.add_parser("show", parents=[common], help="one call's whole record, as JSON")
    show.add_argument("call_control_id")
    export = calls_sub.add_parser("export", parents=[common, filters], help="every matching call, to a file")
    export.add_argument("--format", choices=("json", "csv"), default="json")
    export.add_argument("-o", "--output", help="the file to write (default: standard output)")


def run_calls(args: argparse.Namespace) -> int:
    """Run a ``calls`` sub-command; the exit code."""
    output = getattr(args, "output", None)
    out: IO[str] = open(output, "w", newline="") if output else sys.stdout  # noqa: SIM115
    try:
        return asyncio.run(_run(args, out))
    except ValueError as exc:  # a bad time, cursor or location (CursorError is one)
        print(f"callpipe calls: {exc}", file=sys.stderr)
        return 2
    finally:
        if output:
            out.close()


def _store(args: argparse.Namespace) -> SqlCallStore:
    from callpipe.server.settings import ServerSettings
    from callpipe.store.engine import DB_FILE
    from callpipe.store.sql import SqlCallStore

    settings = ServerSettings()
    url = args.database_url or settings.secret("database_url")
    data_dir = Path(args.data_dir or settings.data_dir)
    if not url and not (data_dir / DB_FILE).is_file():
        raise ValueError(
            f"no call records at {data_dir / DB_FILE} (set DATA_DIR or --data-dir, or DATABASE_URL)"
        )
    return SqlCallStore(url, data_dir=data_dir, background=False)


def _filter(args: argparse.Namespace, *, limit: int = 500) -> CallFilter:
    from callpipe.store.queries import parse_iso8601

    return CallFilter(
        direction=args.direction,
        number=args.number,
        since=parse_iso8601(args.since, "--since") if args.since else None,
        until=parse_iso8601(args.until, "--until") if args.until else None,
        end_reason=args.end_reason,
        text=args.text,
        limit=limit,
        cursor=getattr(args, "cursor", None),
    )


async def _run(args: argparse.Namespace, out: IO[str]) -> int:
    store = _store(args)
    await store.start()
    try:
        if args.calls_command == "show":
            record = await store.get_call(args.call_control_id)
            if record is None:
                print(f"callpipe calls: no call {args.call_control_id!r}", file=sys.stderr)
                return 1
            print(json.dumps(record.to_json(recording_url=_recording_url(record)), indent=2))
            return 0
        if args.calls_command == "list":
            return await _list(store, args)
        count = await _export(store, _filter(args), args.format, out)
        if args.output:
            print(f"{count} call(s) written to {args.output}", file=sys.stderr)
        return 0
    finally:
        await store.close()


def _recording_url(record: CallRecord) -> str | None:
    from callpipe.server.api_calls import recording_url

    return recording_url(record)


async def _list(store: SqlCallStore, args: argparse.Namespace) -> int:
    page = await store.list_calls(_filter(args, limit=max(1, min(500, args.limit))))
    if args.json:
        items = [r.to_json(full=False, recording_url=_recording_url(r)) for r in page.calls]
        print(json.dumps({"calls": items, "next_cursor": page.next_cursor}, indent=2))
        return 0
    rows = [("STARTED", "DIR", "FROM", "TO", "SECS", "END", "TURNS", "CALL")]
    for r in page.calls:
        data = r.to_json(full=False)
        secs = "" if data["duration_secs"] is None else f"{data['duration_secs']:.0f}"
        rows.append(
            (
                str(data["started_at"])[:19].replace("T", " "),
                r.direction[:3],
                r.from_ or "",
                r.to or "",
                secs,
                r.end_reason,
                str(len(r.turns)),
                r.call_control_id,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    if page.next_cursor:
        print(f"(more: --cursor {page.next_cursor})")
    return 0


async def _all(store: SqlCallStore, flt: CallFilter) -> AsyncIterator[CallRecord]:
    while True:
        page = await store.list_calls(flt)
        for record in page.calls:
            yield record
        if page.next_cursor is None:
            return
        flt.cursor = page.next_cursor


async def _export(store: SqlCallStore, flt: CallFilter, fmt: str, out: IO[str]) -> int:
    count = 0
    if fmt == "json":
        out.write("[")
        async for record in _all(store, flt):
            out.write(",\n" if count else "\n")
            out.write(json.dumps(record.to_json(recording_url=_recording_url(record))))
            count += 1
        out.write("\n]\n")
        return count
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    async for record in _all(store, flt):
        data = record.to_json(full=False)
        data["transcript"] = "\n".join(f"{t.speaker}: {t.text}" for t in record.turns)
        data["custom"] = json.dumps(record.custom) if record.custom else ""
        writer.writerow(data)
        count += 1
    return count
