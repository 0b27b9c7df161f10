"""Database URLs, engines and migrations: SQLite in a data directory, or PostgreSQL.

``DATABASE_URL`` unset: ``sqlite+aiosqlite:///<DATA_DIR>/callpipe.db`` in WAL mode with a
busy timeout. ``postgresql://`` and ``postgres://`` URLs get the asyncpg driver. The
schema is brought to the newest Alembic revision at start, under a lock (PostgreSQL
advisory lock, a file lock for SQLite) so that several workers starting at once migrate
once.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

__all__ = ["DB_FILE", "async_url", "make_engine", "upgrade"]

DB_FILE = "callpipe.db"
# SQLite waits this long for another writer's lock before failing (then the writer retries).
SQLITE_BUSY_MS = 5000
# PostgreSQL statements give up after this long (a stalled database fails a flush; it retries).
PG_COMMAND_TIMEOUT_SECS = 15.0
# Any constant: the advisory lock that serialises migrations between instances.
_MIGRATION_LOCK_KEY = 0x63616C6C


def async_url(database_url: str | None, data_dir: str | Path) -> str:
    """The SQLAlchemy async URL for ``DATABASE_URL`` (or SQLite in ``data_dir`` when unset)."""
    if not database_url:
        path = Path(data_dir).expanduser().resolve()
        return f"sqlite+aiosqlite:///{path / DB_FILE}"
    scheme, sep, rest = database_url.partition("://")
    if not sep:
        raise ValueError("DATABASE_URL must look like postgresql://user:pass@host/db or sqlite:///path")
    drivers = {
        "postgres": "postgresql+asyncpg",
        "postgresql": "postgresql+asyncpg",
        "postgresql+asyncpg": "postgresql+asyncpg",
        "sqlite": "sqlite+aiosqlite",
        "sqlite+aiosqlite": "sqlite+aiosqlite",
    }
    driver = drivers.get(scheme.lower())
    if driver is None:
        raise ValueError(f"DATABASE_URL: unsupported scheme {scheme!r} (use postgresql:// or sqlite://)")
    url = f"{driver}://{rest}"
    if driver.startswith("postgresql"):
        # Hosted PostgreSQL URLs say ?sslmode=require (libpq); asyncpg calls it ssl.
        parsed = make_url(url)
        if "sslmode" in parsed.query:
            query = dict(parsed.query)
            query["ssl"] = query.pop("sslmode")
            url = parsed.set(query=query).render_as_string(hide_password=False)
    return url


def make_engine(url: str) -> AsyncEngine:
    """An async engine for ``url`` (from :func:`async_url`), tuned for the store's use."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            # The records hold personal data: a new data directory is the owner's alone.
            Path(parsed.database).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        engine = create_async_engine(url, connect_args={"timeout": SQLITE_BUSY_MS / 1000})
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    return create_async_engine(
        url,
        pool_size=5,
        max_overflow=5,
        pool_pre_ping=True,
        connect_args={"command_timeout": PG_COMMAND_TIMEOUT_SECS, "timeout": 10},
    )


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL: readers never block the writer (the API reads while calls write); NORMAL sync
    # is durable across a process crash (kill -9), which is what records need.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_MS}")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


async def upgrade(engine: AsyncEngine) -> None:
    """Bring the schema to the newest revision (idempotent; safe with several starters)."""
    if engine.dialect.name == "sqlite":
        lock_path = Path(engine.url.database or ".").with_suffix(".migrate.lock")
        with await asyncio.to_thread(_file_lock_acquire, lock_path):
            async with engine.begin() as conn:
                await conn.run_sync(_upgrade_sync)
        return
    async with engine.begin() as conn:
        await conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY})
        await conn.run_sync(_upgrade_sync)


def _file_lock_acquire(path: Path) -> contextlib.AbstractContextManager[None]:
    handle = path.open("a+")
    fcntl.flock(handle, fcntl.LOCK_EX)

    @contextlib.contextmanager
    def held() -> Iterator[None]:
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()

    return held()


def _upgrade_sync(connection: sa.Connection) -> None:
    from alembic import command
    from alembic.config import Config

    # "setup plugin ..." at every start says nothing; "Running upgrade" (INFO) stays.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)

    config = Config()
    config.set_main_option("script_location", "callpipe.store:migrations")
    config.attributes["connection"] = connection
    command.upgrade(config, "head")
