"""A real PostgreSQL server for the tests: Debian's initdb/postgres in a temporary directory.

The server listens on 127.0.0.1 on a free port (its socket in the temporary directory),
runs as the ``postgres`` system user when the tests run as root (postgres refuses root),
with durability off (fsync) since the data dies with the test session.
"""

from __future__ import annotations

import asyncio
import glob
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from callpipe.server.background import free_port

__all__ = ["PostgresServer", "postgres_server"]

START_TIMEOUT_SECS = 30.0


def _bin_dir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    if not found:
        pytest.fail(
            "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/postgres): run scripts/system-deps.sh"
        )
    return Path(found[-1]).parent


class PostgresServer:
    """One running server; :meth:`new_database` gives each test an empty database."""

    def __init__(self) -> None:
        self.bin = _bin_dir()
        self.root = Path(tempfile.mkdtemp(prefix="callpipe-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.user = "postgres"
        self._as_root = os.geteuid() == 0
        self.process: subprocess.Popen[bytes] | None = None

    def _cmd(self, *args: str) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *args] if self._as_root else list(args)

    def start(self) -> PostgresServer:
        """initdb, start postgres, and wait (bounded) until it accepts a connection."""
        if self._as_root:
            shutil.chown(self.root, "postgres", "postgres")
        subprocess.run(
            self._cmd(
                str(self.bin / "initdb"),
                "-D",
                str(self.data),
                "-U",
                self.user,
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
            ),
            check=True,
            capture_output=True,
        )
        return self.resume()

    def resume(self) -> PostgresServer:
        """Start the server process on the existing data directory and port; wait until it answers."""
        log = open(self.root / "postgres.log", "ab")  # noqa: SIM115 - closed with the process
        self.process = subprocess.Popen(
            self._cmd(
                str(self.bin / "postgres"),
                "-D", str(self.data),
                "-h", "127.0.0.1",
                "-p", str(self.port),
                "-k", str(self.root),
                "-c", "fsync=off",
                "-c", "synchronous_commit=off",
                "-c", "full_page_writes=off",
                "-c", "max_connections=200",
            ),
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + START_TIMEOUT_SECS
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"postgres exited: {(self.root / 'postgres.log').read_text()[-2000:]}")
            try:
                asyncio.run(self._execute("SELECT 1"))
                return self
            except Exception:  # not up yet (refused, starting up)
                if time.monotonic() > deadline:
                    raise TimeoutError("postgres did not accept connections in time") from None
                time.sleep(0.1)

    def halt(self) -> None:
        """Stop the server process (fast shutdown: clients are disconnected), keeping its data."""
        if self.process is None or self.process.poll() is not None:
            return
        # pg_ctl signals the postmaster itself (runuser, our child, would only kill it).
        stopped = subprocess.run(
            self._cmd(str(self.bin / "pg_ctl"), "stop", "-D", str(self.data), "-m", "fast", "-w", "-t", "15"),
            capture_output=True,
            check=False,
        )
        try:
            self.process.wait(15 if stopped.returncode == 0 else 1)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)

    def url(self, database: str = "postgres") -> str:
        """A ``postgresql://`` URL of ``database`` on this server."""
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    async def _execute(self, sql: str, database: str = "postgres") -> None:
        import asyncpg

        conn = await asyncpg.connect(
            host="127.0.0.1", port=self.port, user=self.user, database=database, timeout=5
        )
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    def new_database(self) -> str:
        """Create an empty database; its URL."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        asyncio.run(self._execute(f'CREATE DATABASE "{name}"'))
        return self.url(name)

    def stop(self) -> None:
        """Stop the server and delete its directory."""
        self.halt()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the whole test session."""
    server = PostgresServer().start()
    try:
        yield server
    finally:
        server.stop()
