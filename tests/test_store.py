"""The SQL call store on real SQLite and a real PostgreSQL server: records, paging, coordination."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from callpipe.records.model import CallRecord, Turn
from callpipe.store.base import CallFilter
from callpipe.store.engine import async_url
from callpipe.store.queries import CursorError
from callpipe.store.schema import instances
from tests.store_helpers import full_record, started_store


def test_database_urls_map_to_async_drivers(tmp_path: Path) -> None:
    assert async_url(None, tmp_path) == f"sqlite+aiosqlite:///{tmp_path.resolve()}/callpipe.db"
    assert async_url("postgres://u:p@h/db", tmp_path) == "postgresql+asyncpg://u:p@h/db"
    assert async_url("postgresql://u@h:5/db", tmp_path) == "postgresql+asyncpg://u@h:5/db"
    assert async_url("sqlite:////x/y.db", tmp_path) == "sqlite+aiosqlite:////x/y.db"
    assert (
        async_url("postgres://u:p@h/db?sslmode=require", tmp_path)
        == "postgresql+asyncpg://u:p@h/db?ssl=require"
    )
    with pytest.raises(ValueError, match="unsupported scheme"):
        async_url("mysql://h/db", tmp_path)


async def test_full_record_round_trips(db_url: str) -> None:
    record = full_record()
    async with started_store(db_url) as store:
        store.sink.finish(record)
        assert await store.writer.flush()
        got = await store.get_call(record.call_control_id)
        assert got == record
        assert got is not None and got.instance == store.instance_id
        assert got.to_json() == record.to_json()
        assert await store.get_call("nope") is None


async def test_a_live_record_is_updated_in_place_and_never_reopened(db_url: str) -> None:
    record = full_record(end_reason="in_progress")
    async with started_store(db_url) as store:
        store.sink.touch(record)
        await store.writer.flush()
        record.turns.append(Turn(speaker="caller", text="two people at eight"))
        store.sink.touch(record)
        await store.writer.flush()
        got = await store.get_call(record.call_control_id)
        assert got is not None and len(got.turns) == 4 and got.end_reason == "in_progress"
        record.end_reason, record.ended_at = "bot_ended", time.time()
        store.sink.finish(record)
        await store.writer.flush()
        # A stray late touch of an in-progress copy does not turn a finished record back.
        stale = full_record(end_reason="in_progress")
        store.sink.touch(stale)
        await store.writer.flush()
        got = await store.get_call(record.call_control_id)
        assert got is not None and got.end_reason == "bot_ended" and len(got.turns) == 4


async def test_paging_filters_and_text_search(db_url: str) -> None:
    t0 = 1_800_000_000.0
    records = [
        full_record(
            f"call-{i:02d}",
            started_at=t0 + i * 60,
            direction="outbound" if i % 3 == 0 else "inbound",
            from_=f"+1555000{i:04d}",
            to="+15559990000" if i % 2 else "+15558880000",
            caller_says=f"order number {i} please" if i != 7 else "I need a REFUND_now 100%",
            end_reason="error" if i == 5 else "caller_hangup",
        )
        for i in range(12)
    ]
    async with started_store(db_url) as store:
        for record in records:
            store.sink.finish(record)
        await store.writer.flush()

        seen: list[str] = []
        cursor = None
        while True:
            page = await store.list_calls(CallFilter(limit=5, cursor=cursor))
            seen += [r.call_control_id for r in page.calls]
            cursor = page.next_cursor
            if cursor is None:
                break
        assert seen == [f"call-{i:02d}" for i in reversed(range(12))]

        async def ids(**kw: object) -> list[str]:
            page = await store.list_calls(CallFilter(**kw))  # type: ignore[arg-type]
            return [r.call_control_id for r in page.calls]

        assert await ids(direction="outbound") == ["call-09", "call-06", "call-03", "call-00"]
        assert await ids(number="+15550000004") == ["call-04"]
        assert len(await ids(number="+15559990000")) == 6
        assert await ids(since=t0 + 600, until=t0 + 660) == ["call-10"]
        assert await ids(end_reason="error") == ["call-05"]
        assert await ids(text="refund_now 100%") == ["call-07"]
        assert await ids(text="Number 1 ") == ["call-01"]
        assert await ids(text="%") == ["call-07"]  # LIKE wildcards are literal
        assert await ids(text="nobody said this") == []
        page = await store.list_calls(CallFilter(direction="inbound", limit=3))
        assert [r.call_control_id for r in page.calls] == ["call-11", "call-10", "call-08"]
        page = await store.list_calls(CallFilter(direction="inbound", limit=3, cursor=page.next_cursor))
        assert [r.call_control_id for r in page.calls] == ["call-07", "call-05", "call-04"]
        with pytest.raises(CursorError):
            await store.list_calls(CallFilter(cursor="garbage!"))


async def test_stale_instance_calls_are_swept_to_process_died(db_url: str) -> None:
    async with started_store(db_url) as a, started_store(db_url) as b:
        record = full_record(end_reason="in_progress")
        a.sink.touch(record)
        await a.writer.flush()
        async with a.engine.connect() as conn:
            updated_at = (await conn.execute(sa.text("SELECT updated_at FROM calls"))).scalar_one()
        assert await b.sweep_dead() == []  # a is alive
        assert await b.owner_of(record.call_control_id) is None  # no internal URL yet
        a.set_internal_url("http://10.0.0.1:8000")
        await asyncio.sleep(0)  # the heartbeat writes it
        for _ in range(50):
            if await b.owner_of(record.call_control_id):
                break
            await asyncio.sleep(0.05)
        assert await b.owner_of(record.call_control_id) == "http://10.0.0.1:8000"
        # a stops heartbeating (as if its host vanished): its row goes stale.
        async with b.engine.begin() as conn:
            await conn.execute(
                instances.update()
                .where(instances.c.instance_id == a.instance_id)
                .values(heartbeat_at=time.time() - 60, hostname="elsewhere")
            )
        assert await b.owner_of(record.call_control_id) is None
        assert await b.sweep_dead() == [record.call_control_id]
        got = await b.get_call(record.call_control_id)
        assert got is not None and got.end_reason == "process_died"
        assert got.ended_at == pytest.approx(updated_at)
        assert len(got.turns) == 3  # what was written before the death is kept
        page = await b.list_calls(CallFilter(end_reason="process_died"))
        assert [r.call_control_id for r in page.calls] == [record.call_control_id]


_DYING_WRITER = """
import asyncio, sys, time
from callpipe.store.sql import SqlCallStore
from callpipe.records.model import CallRecord, Turn

async def main():
    store = SqlCallStore(sys.argv[1], heartbeat_secs=0.2)
    await store.start()
    record = CallRecord(call_control_id="killed-call", started_at=time.time())
    while True:
        record.turns.append(Turn(speaker="caller", text=f"turn {len(record.turns)}"))
        store.sink.touch(record)
        if len(record.turns) == 3:
            await store.writer.flush()
            print("written", flush=True)
        await asyncio.sleep(0.05)

asyncio.run(main())
"""


async def test_kill_9_mid_call_is_marked_process_died_at_the_next_start(db_url: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _DYING_WRITER, db_url, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert line.strip() == b"written"
        await asyncio.sleep(0.6)  # a flush or two more
    finally:
        proc.send_signal(signal.SIGKILL)
        await asyncio.wait_for(proc.wait(), 10)
    # Its heartbeat is fresh, but its pid is gone on this host: the start-up sweep sees it.
    async with started_store(db_url) as store:
        got = await store.get_call("killed-call")
        assert got is not None and got.end_reason == "process_died"
        assert len(got.turns) >= 3 and got.ended_at is not None


async def test_dial_bucket_is_shared_and_lets_rates_below_one_through(db_url: str) -> None:
    async with started_store(db_url) as a, started_store(db_url) as b:
        assert await a.take_dial_slot(0.5)
        assert not await b.take_dial_slot(0.5)
        assert not await a.take_dial_slot(0.5)
        start = time.monotonic()
        while not await b.take_dial_slot(0.5):
            assert time.monotonic() - start < 5
            await asyncio.sleep(0.05)
        assert time.monotonic() - start > 1.5  # one dial per 2 s, across both instances
        # Burst: with a full bucket at 4/s, 20 concurrent attempts from two stores get 4.
        async with a.engine.begin() as conn:
            await conn.execute(sa.text("UPDATE dial_bucket SET tokens = 0, updated_at = 0"))
        results = await asyncio.gather(*[(a if i % 2 else b).take_dial_slot(4) for i in range(20)])
        assert sum(results) == 4


async def test_claim_token_once_across_instances(db_url: str) -> None:
    async with started_store(db_url) as a, started_store(db_url) as b:
        later = time.time() + 60
        assert await a.claim_token("tok-1", later)
        assert not await b.claim_token("tok-1", later)
        assert not await a.claim_token("tok-1", later)
        results = await asyncio.gather(*[(a if i % 2 else b).claim_token("tok-2", later) for i in range(10)])
        assert sum(results) == 1
        assert await a.claim_token("tok-old", time.time() - 1)
        from callpipe.store import coord

        assert await coord.purge_tokens(a.engine) == 1
        async with a.engine.connect() as conn:
            left = (
                await conn.execute(sa.text("SELECT token_id FROM used_tokens ORDER BY token_id"))
            ).scalars()
            assert list(left) == ["tok-1", "tok-2"]


async def test_retention_deletes_old_records_and_their_recordings(db_url: str, tmp_path: Path) -> None:
    old_wav, new_wav = tmp_path / "old.wav", tmp_path / "new.wav"
    old_wav.write_bytes(b"RIFF")
    new_wav.write_bytes(b"RIFF")
    day = 86400
    async with started_store(db_url, retention_days=30) as store:
        store.sink.finish(full_record("old", started_at=time.time() - 31 * day, recording_path=str(old_wav)))
        store.sink.finish(full_record("new", started_at=time.time() - 29 * day, recording_path=str(new_wav)))
        store.sink.touch(full_record("old-live", started_at=time.time() - 40 * day, end_reason="in_progress"))
        await store.writer.flush()
        assert await store.apply_retention() == 1
        assert await store.get_call("old") is None and not old_wav.exists()
        assert await store.get_call("new") is not None and new_wav.exists()
        assert await store.get_call("old-live") is not None  # live calls are never deleted
    async with started_store(db_url, retention_days=0) as store:
        assert await store.apply_retention() == 0  # 0 keeps everything
        assert await store.get_call("new") is not None


async def test_migrations_run_once_with_concurrent_starters(db_url: str) -> None:
    stores = [started_store(db_url) for _ in range(3)]
    opened = await asyncio.gather(*[s.__aenter__() for s in stores])
    try:
        for store in opened:
            record = CallRecord(call_control_id=store.instance_id, started_at=time.time())
            store.sink.finish(record)
            assert await store.writer.flush()
        page = await opened[0].list_calls(CallFilter())
        assert len(page.calls) == 3
    finally:
        for s in stores:
            await s.__aexit__(None, None, None)


async def test_housekeeping_sweeps_and_applies_retention_on_its_own(db_url: str) -> None:
    async with started_store(db_url, heartbeat_secs=3600) as a:
        a.sink.touch(full_record("orphan", end_reason="in_progress"))
        a.sink.finish(full_record("ancient", started_at=time.time() - 400 * 86400))
        await a.writer.flush()
        async with started_store(db_url, sweep_secs=0.1, retention_days=365) as b:
            orphan = await b.get_call("orphan")
            assert orphan is not None and orphan.end_reason == "in_progress"  # a is alive
            async with a.engine.begin() as conn:  # now a's host vanishes
                await conn.execute(
                    instances.update()
                    .where(instances.c.instance_id == a.instance_id)
                    .values(heartbeat_at=time.time() - 60, hostname="elsewhere")
                )
            deadline = time.monotonic() + 10
            while True:
                orphan, ancient = await b.get_call("orphan"), await b.get_call("ancient")
                if orphan is not None and orphan.end_reason == "process_died" and ancient is None:
                    break
                assert time.monotonic() < deadline, (orphan, ancient)
                await asyncio.sleep(0.05)


async def test_the_migrations_build_exactly_the_schema_the_code_uses(db_url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from callpipe.store.schema import metadata

    def diff(conn: sa.Connection) -> list[object]:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        # The trigram index is PostgreSQL's, made only where pg_trgm can be (0002): not in schema.py.
        ignored = ("alembic_version", "ix_calls_transcript_trgm")
        return [d for d in compare_metadata(context, metadata) if not any(name in str(d) for name in ignored)]

    async with started_store(db_url, background=False) as store, store.engine.connect() as conn:
        assert await conn.run_sync(diff) == []


async def test_an_unreachable_database_fails_start_clearly_without_the_password() -> None:
    from callpipe.server.background import free_port
    from callpipe.store.sql import SqlCallStore

    store = SqlCallStore(f"postgresql://app:hunter2-secret@127.0.0.1:{free_port()}/calls")
    with pytest.raises(RuntimeError, match="cannot open the call store") as failure:
        await store.start()
    assert "hunter2-secret" not in str(failure.value) and "***" in str(failure.value)
    await store.close()  # nothing to close; must not raise


async def test_postgresql_search_has_a_trigram_index(postgres_server: object) -> None:
    url = await asyncio.to_thread(postgres_server.new_database)  # type: ignore[attr-defined]
    async with started_store(url, background=False) as store, store.engine.connect() as conn:
        names = (
            await conn.execute(sa.text("SELECT indexname FROM pg_indexes WHERE tablename = 'calls'"))
        ).scalars()
        assert "ix_calls_transcript_trgm" in set(names)


async def test_a_pid_is_only_trusted_within_the_same_pid_namespace(db_url: str) -> None:
    from callpipe.store.coord import host_key

    assert host_key().split()[0]  # hostname first, then the namespace (on Linux)
    async with started_store(db_url, heartbeat_secs=3600) as a, started_store(db_url) as b:
        a.sink.touch(full_record("elsewhere-call", end_reason="in_progress"))
        await a.writer.flush()
        # Same hostname, another PID namespace (a host-network container), a pid that is
        # not running here: alive as long as it heartbeats.
        async with b.engine.begin() as conn:
            await conn.execute(
                instances.update()
                .where(instances.c.instance_id == a.instance_id)
                .values(hostname=f"{host_key().split()[0]} pid:[1]", pid=2**22 + 17)
            )
        assert await b.sweep_dead() == []
        async with b.engine.begin() as conn:  # same namespace: the pid is believed
            await conn.execute(
                instances.update().where(instances.c.instance_id == a.instance_id).values(hostname=host_key())
            )
        assert await b.sweep_dead() == ["elsewhere-call"]
