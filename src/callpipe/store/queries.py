"""Reading records back: one call, newest-first pages with filters, and retention."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as _dt
import logging
import os
import time

import msgspec
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from callpipe.records.model import IN_PROGRESS, CallRecord
from callpipe.store.base import CallFilter, CallPage
from callpipe.store.schema import calls, webhook_outbox

__all__ = [
    "CursorError",
    "decode_cursor",
    "encode_cursor",
    "get_call",
    "list_calls",
    "parse_iso8601",
    "purge_older_than",
]

logger = logging.getLogger("callpipe.store")

MAX_LIMIT = 500


class CursorError(ValueError):
    """A ``cursor`` that this store did not hand out."""


def encode_cursor(started_at: float, call_control_id: str) -> str:
    """An opaque cursor for "calls after this one" (newest first)."""
    raw = msgspec.json.encode([started_at, call_control_id])
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_cursor(cursor: str) -> tuple[float, str]:
    """Inverse of :func:`encode_cursor`; :class:`CursorError` if malformed."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        started_at, ccid = msgspec.json.decode(raw, type=tuple[float, str])
    except (ValueError, msgspec.DecodeError):
        raise CursorError("malformed cursor (use the next_cursor of a previous page)") from None
    return started_at, ccid


def parse_iso8601(text: str, name: str) -> float:
    """UNIX seconds of an ISO 8601 time (UTC when it has no offset); ValueError naming ``name``."""
    try:
        value = _dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{name} must be ISO 8601, e.g. 2026-01-31T12:00:00Z, not {text!r}") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=_dt.UTC)
    return value.timestamp()


def _decode(raw: str) -> CallRecord:
    return msgspec.json.decode(raw, type=CallRecord)


async def get_call(engine: AsyncEngine, call_control_id: str) -> CallRecord | None:
    """One whole record, or ``None``."""
    async with engine.connect() as conn:
        raw = (
            await conn.execute(sa.select(calls.c.record).where(calls.c.call_control_id == call_control_id))
        ).scalar_one_or_none()
    return None if raw is None else _decode(raw)


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _conditions(flt: CallFilter) -> list[sa.ColumnElement[bool]]:
    conds: list[sa.ColumnElement[bool]] = []
    if flt.direction:
        conds.append(calls.c.direction == flt.direction)
    if flt.number:
        conds.append(sa.or_(calls.c.from_number == flt.number, calls.c.to_number == flt.number))
    if flt.since is not None:
        conds.append(calls.c.started_at >= flt.since)
    if flt.until is not None:
        conds.append(calls.c.started_at < flt.until)
    if flt.end_reason:
        conds.append(calls.c.end_reason == flt.end_reason)
    if flt.text:
        pattern = f"%{_like_escape(flt.text.lower())}%"
        conds.append(calls.c.transcript.like(pattern, escape="\\"))
    if flt.cursor:
        started_at, ccid = decode_cursor(flt.cursor)
        conds.append(
            sa.or_(
                calls.c.started_at < started_at,
                sa.and_(calls.c.started_at == started_at, calls.c.call_control_id < ccid),
            )
        )
    return conds


async def list_calls(engine: AsyncEngine, flt: CallFilter) -> CallPage:
    """Records matching ``flt``, newest first (by ``started_at``, then id), one page."""
    limit = max(1, min(MAX_LIMIT, flt.limit))
    query = (
        sa.select(calls.c.record)
        .where(*_conditions(flt))
        .order_by(calls.c.started_at.desc(), calls.c.call_control_id.desc())
        .limit(limit + 1)
    )
    async with engine.connect() as conn:
        raws = (await conn.execute(query)).scalars().all()
    records = [_decode(raw) for raw in raws[:limit]]
    next_cursor = None
    if len(raws) > limit:
        last = records[-1]
        next_cursor = encode_cursor(last.started_at, last.call_control_id)
    return CallPage(calls=records, next_cursor=next_cursor)


def _remove_files(paths: list[str]) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


async def purge_older_than(engine: AsyncEngine, cutoff: float, batch: int = 500) -> int:
    """Delete finished records that started before ``cutoff``, and their recording files."""
    total = 0
    while True:
        async with engine.connect() as conn:
            rows = (
                await conn.execute(
                    sa.select(calls.c.call_control_id, calls.c.recording_path)
                    .where(calls.c.started_at < cutoff, calls.c.end_reason != IN_PROGRESS)
                    .limit(batch)
                )
            ).all()
        if not rows:
            break
        await asyncio.to_thread(_remove_files, [path for _, path in rows if path])
        ids = [ccid for ccid, _ in rows]
        async with engine.begin() as conn:
            await conn.execute(calls.delete().where(calls.c.call_control_id.in_(ids)))
        total += len(ids)
        if len(rows) < batch:
            break
    async with engine.begin() as conn:
        # Webhooks that gave up long ago (next_attempt_at NULL) go with the records.
        await conn.execute(
            webhook_outbox.delete().where(
                webhook_outbox.c.next_attempt_at.is_(None), webhook_outbox.c.created_at < cutoff
            )
        )
    if total:
        logger.info("records: retention deleted %d record(s) started before %s", total, time.ctime(cutoff))
    return total
