"""PostgreSQL goes away mid-run and comes back: calls' records wait, the API says so, nothing is lost."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from callpipe.runner import RunnerArguments
from callpipe.server.app import create_app
from callpipe.server.background import BackgroundServer
from callpipe.server.settings import ServerSettings
from callpipe.store.sql import SqlCallStore
from tests.pg import PostgresServer
from tests.store_helpers import full_record, started_store

pytestmark = pytest.mark.slow

KEY = "outage-api-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


async def _noop_bot(args: RunnerArguments) -> None:
    return None


@pytest.fixture()
async def own_postgres() -> AsyncIterator[PostgresServer]:
    """A PostgreSQL server of this test's own, so that it can be stopped and started."""
    server = PostgresServer()
    await asyncio.to_thread(server.start)
    try:
        yield server
    finally:
        await asyncio.to_thread(server.stop)


async def test_records_wait_out_a_database_outage(own_postgres: PostgresServer) -> None:
    url = await asyncio.to_thread(own_postgres.new_database)
    settings = ServerSettings(
        _env_file=None,  # type: ignore[call-arg]
        public_url="https://bot.example",
        callpipe_insecure_streams=True,
        callpipe_api_key=KEY,  # type: ignore[arg-type]
    )
    app = create_app(_noop_bot, settings, store=SqlCallStore(url))
    with BackgroundServer(app) as api:
        async with (
            started_store(url, flush_interval=0.1) as store,
            httpx.AsyncClient(base_url=api.base_url, headers=AUTH, timeout=30) as http,
        ):
            store.sink.finish(full_record("before"))
            assert await store.writer.flush()

            await asyncio.to_thread(own_postgres.halt)
            slowest = 0.0
            for record in (full_record("during-final"), full_record("during-live", end_reason="in_progress")):
                start = time.perf_counter()
                if record.end_reason == "in_progress":
                    store.sink.touch(record)
                else:
                    store.sink.finish(record)
                slowest = max(slowest, time.perf_counter() - start)
            assert slowest < 0.002
            assert not await store.writer.flush()  # fails (connection refused), keeps them
            assert store.writer.pending == 2 and store.writer.stats.failures >= 1
            response = await http.get("/api/calls")
            assert response.status_code == 503
            assert response.json()["error"]["code"] == "store_unavailable"

            await asyncio.to_thread(own_postgres.resume)
            deadline = time.monotonic() + 30
            while store.writer.pending:
                assert time.monotonic() < deadline, "the records never caught up"
                await asyncio.sleep(0.1)
            response = await http.get("/api/calls")
            assert response.status_code == 200, response.text
            ids = sorted(c["call_control_id"] for c in response.json()["calls"])
            assert ids == ["before", "during-final", "during-live"]
            assert store.writer.stats.dropped == 0
