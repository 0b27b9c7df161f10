"""``SqlCallStore``: the :class:`~callpipe.store.base.CallStore` over SQLite or PostgreSQL.

One object per process. ``start()`` connects, migrates, registers this instance and
starts its tasks: the record writer (``sink``), the heartbeat (every ``heartbeat_secs``),
housekeeping (the process_died sweep every ``sweep_secs``, token purge, retention) and,
with a webhook configured, the outbox delivery. ``close()`` flushes and stops them.

The instance's internal URL (where other instances forward a call's control requests)
is given to the constructor or set later with :meth:`SqlCallStore.set_internal_url`; it
reaches the database with the next heartbeat (at once when already started).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Insert
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from callpipe.records.model import IN_PROGRESS, CallRecord
from callpipe.records.sink import RecordSink
from callpipe.store import coord, queries
from callpipe.store.base import CallFilter, CallPage
from callpipe.store.engine import async_url, make_engine, upgrade
from callpipe.store.schema import calls, webhook_outbox
from callpipe.store.webhook import WebhookConfig, WebhookDeliverer, outbox_rows
from callpipe.store.writer import RecordWriter, Rows

if TYPE_CHECKING:
    from callpipe.server.settings import ServerSettings

__all__ = ["SqlCallStore"]

logger = logging.getLogger("callpipe.store")

TOKEN_PURGE_SECS = 60.0
RETENTION_EVERY_SECS = 3600.0


class SqlCallStore:
    """Call records and instance coordination in one SQL database (see the module doc).

    ``background=False`` gives a reader (the CLI): it migrates but registers no instance
    and starts no tasks.
    """

    def __init__(
        self,
        database_url: str | None = None,
        *,
        data_dir: str | Path = "./callpipe-data",
        internal_url: str | None = None,
        webhook: WebhookConfig | None = None,
        retention_days: float = 0.0,
        background: bool = True,
        flush_interval: float = 0.5,
        max_pending_finals: int = 10_000,
        heartbeat_secs: float = 2.0,
        stale_after_secs: float = 10.0,
        sweep_secs: float = 5.0,
    ) -> None:
        self.url = async_url(database_url, data_dir)
        self.instance_id = coord.new_instance_id()
        self.internal_url = internal_url
        self.webhook = webhook
        self.retention_days = retention_days
        self.background = background
        self.heartbeat_secs = heartbeat_secs
        self.stale_after_secs = stale_after_secs
        self.sweep_secs = sweep_secs
        self.started_at = time.time()
        self._engine: AsyncEngine | None = None
        self._writer = RecordWriter(
            self._write_rows,
            instance_id=self.instance_id,
            interval=flush_interval,
            max_pending_finals=max_pending_finals,
        )
        self._deliverer: WebhookDeliverer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._beat_now = asyncio.Event()
        self._stop = asyncio.Event()

    @classmethod
    def from_settings(cls, settings: ServerSettings, **options: Any) -> SqlCallStore:
        """A store configured by ``DATABASE_URL``, ``DATA_DIR``, ``RETENTION_DAYS`` and the webhook settings."""
        webhook = None
        if settings.call_webhook_url:
            secret = settings.secret("call_webhook_secret") or settings.secret("callpipe_secret")
            if not secret:
                raise ValueError("CALL_WEBHOOK_URL needs CALL_WEBHOOK_SECRET or CALLPIPE_SECRET to sign with")
            webhook = WebhookConfig(url=settings.call_webhook_url, secret=secret)
        return cls(
            settings.secret("database_url"),
            data_dir=settings.data_dir,
            webhook=webhook,
            retention_days=settings.retention_days,
            **options,
        )

    # ------------------------------------------------------------------ lifecycle

    @property
    def engine(self) -> AsyncEngine:
        """The SQLAlchemy engine (after :meth:`start`)."""
        if self._engine is None:
            raise RuntimeError("the store is not started")
        return self._engine

    @property
    def sink(self) -> RecordSink:
        """The batched writer live calls touch their records through."""
        return self._writer

    @property
    def writer(self) -> RecordWriter:
        """The same object as :attr:`sink`, with its stats and ``flush()``."""
        return self._writer

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self.engine.dialect.name

    def set_internal_url(self, url: str | None) -> None:
        """Where other instances reach this one (e.g. ``http://10.0.0.5:8000``); sent with the next heartbeat."""
        self.internal_url = url
        self._beat_now.set()

    async def start(self) -> None:
        """Connect, run migrations, register this instance, start the writer and heartbeat."""
        self._engine = make_engine(self.url)
        try:
            await upgrade(self._engine)
        except Exception as exc:
            await self._engine.dispose()
            self._engine = None
            raise RuntimeError(f"cannot open the call store ({_safe_url(self.url)}): {exc}") from exc
        if not self.background:
            return
        await coord.heartbeat(self.engine, self.instance_id, self.internal_url, self.started_at)
        await self._sweep()
        self._writer.start()
        if self.webhook is not None:
            self._deliverer = WebhookDeliverer(self.engine, self.webhook)
            self._deliverer.start()
        self._stop.clear()
        # Two tasks: a slow sweep or retention pass must never delay the heartbeat (a late
        # heartbeat makes the other instances think this one died).
        self._tasks = [
            asyncio.create_task(self._heartbeats(), name="callpipe-store-heartbeat"),
            asyncio.create_task(self._housekeeping(), name="callpipe-store-housekeeping"),
        ]
        logger.info("call store: %s, instance %s", _safe_url(self.url), self.instance_id)

    async def close(self) -> None:
        """Flush every pending record, deregister, and disconnect."""
        if self._engine is None:
            return
        self._stop.set()
        self._beat_now.set()
        await asyncio.gather(*self._tasks)
        self._tasks = []
        if self.background:
            await self._writer.close()
        if self._deliverer is not None:
            await self._deliverer.close()
            self._deliverer = None
        if self.background:
            with contextlib.suppress(Exception):
                await coord.deregister(self.engine, self.instance_id)
        await self._engine.dispose()
        self._engine = None

    async def _heartbeats(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._beat_now.wait(), self.heartbeat_secs)
            self._beat_now.clear()
            if self._stop.is_set():
                return
            try:
                await coord.heartbeat(self.engine, self.instance_id, self.internal_url, self.started_at)
            except Exception as exc:  # the database is down: the next beat tries again
                logger.warning("call store: heartbeat failed (%s: %s)", type(exc).__name__, exc)

    async def _housekeeping(self) -> None:
        last_purge = time.monotonic()
        last_retention = float("-inf")  # a first pass soon after start
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.sweep_secs)
            if self._stop.is_set():
                return
            now = time.monotonic()
            try:
                await self._sweep()
                if now - last_purge >= TOKEN_PURGE_SECS:
                    last_purge = now
                    await coord.purge_tokens(self.engine)
                if self.retention_days > 0 and now - last_retention >= RETENTION_EVERY_SECS:
                    last_retention = now
                    await self.apply_retention()
            except Exception as exc:  # the database is down: the next round tries again
                logger.warning("call store: housekeeping failed (%s: %s)", type(exc).__name__, exc)

    async def _sweep(self) -> list[str]:
        return await coord.sweep_dead(self.engine, self.stale_after_secs)

    async def _write_rows(self, rows: Rows, finals: list[CallRecord]) -> None:
        async with self.engine.begin() as conn:
            await _upsert(conn, rows)
            if finals and self.webhook is not None:
                await conn.execute(webhook_outbox.insert(), outbox_rows(self.webhook, finals, time.time()))
        if finals and self._deliverer is not None:
            self._deliverer.wake()

    # ------------------------------------------------------------------ CallStore

    async def get_call(self, call_control_id: str) -> CallRecord | None:
        """One whole record (turns and events), or ``None``."""
        return await queries.get_call(self.engine, call_control_id)

    async def list_calls(self, flt: CallFilter) -> CallPage:
        """Records (newest first) matching ``flt`` (:class:`queries.CursorError` on a bad cursor)."""
        return await queries.list_calls(self.engine, flt)

    async def owner_of(self, call_control_id: str) -> str | None:
        """The internal base URL of the live instance holding this call, or ``None``."""
        return await coord.owner_of(self.engine, call_control_id, self.stale_after_secs)

    async def instance_url(self, instance_id: str) -> str | None:
        """The internal base URL of a live instance (by id), or ``None``."""
        return await coord.instance_url(self.engine, instance_id, self.stale_after_secs)

    async def take_dial_slot(self, rate_per_sec: float) -> bool:
        """One dial-out under a token bucket shared by every instance on this database."""
        return await coord.take_dial_slot(self.engine, rate_per_sec)

    async def claim_token(self, token_id: str, expires_at: float) -> bool:
        """Mark a single-use token as used; ``False`` if it was already used (any instance)."""
        return await coord.claim_token(self.engine, token_id, expires_at)

    # ------------------------------------------------------------------ housekeeping

    async def sweep_dead(self) -> list[str]:
        """Mark calls of dead instances ``process_died`` now; their ids."""
        return await self._sweep()

    async def apply_retention(self) -> int:
        """Delete records (and recordings) older than ``retention_days``; how many."""
        if self.retention_days <= 0:
            return 0
        return await queries.purge_older_than(self.engine, time.time() - self.retention_days * 86400)


@functools.cache
def _upsert_statement(dialect: str) -> Insert:
    # Built once per dialect: the writer runs this every half second on the event loop,
    # and building the construct costs more than looking up its compiled form.
    insert = postgresql.insert(calls) if dialect == "postgresql" else sqlite.insert(calls)
    excluded = insert.excluded
    columns = [c.name for c in calls.columns if c.name != "call_control_id"]
    return insert.on_conflict_do_update(
        index_elements=[calls.c.call_control_id],
        set_={name: excluded[name] for name in columns},
        where=(calls.c.end_reason == IN_PROGRESS) | (excluded.end_reason != IN_PROGRESS),
    )


async def _upsert(conn: AsyncConnection, rows: Rows) -> None:
    """Insert or update ``calls`` rows; a finished row never goes back to in progress."""
    if rows:
        await conn.execute(_upsert_statement(conn.dialect.name), rows)


def _safe_url(url: str) -> str:
    """The URL without its password, for logs."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
