"""The batched record writer: coalescing, bounds, retries, and a stalled database never blocking calls."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable

import pytest
from sqlalchemy.engine import make_url

from callpipe.records.model import CallRecord, Turn
from callpipe.store.writer import BATCH_LIMIT, RecordWriter, Rows
from tests.store_helpers import full_record, started_store


async def _eventually(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_many_touches_of_one_call_become_one_write(db_url: str) -> None:
    async with started_store(db_url, flush_interval=60) as store:
        a, b = full_record("a", end_reason="in_progress"), full_record("b", end_reason="in_progress")
        for i in range(1000):
            a.turns.append(Turn(speaker="caller", text=f"word {i}"))
            store.sink.touch(a)
        for _ in range(10):
            store.sink.touch(b)
        assert store.writer.pending == 2
        assert await store.writer.flush()
        assert (store.writer.stats.flushes, store.writer.stats.rows_written) == (1, 2)
        got = await store.get_call("a")
        assert got is not None and len(got.turns) == 1003 and got.turns[-1].text == "word 999"


async def test_the_background_task_flushes_without_being_asked(db_url: str) -> None:
    async with started_store(db_url, flush_interval=0.1) as store:
        record = full_record(end_reason="in_progress")
        store.sink.touch(record)

        async def written() -> bool:
            return await store.get_call(record.call_control_id) is not None

        await _eventually(written, 5, "the periodic flush")


async def test_close_flushes_what_is_pending(db_url: str) -> None:
    async with started_store(db_url, flush_interval=60) as store:
        store.sink.touch(full_record("live", end_reason="in_progress"))
        store.sink.finish(full_record("done"))
    async with started_store(db_url) as store:
        assert await store.get_call("live") is not None
        assert await store.get_call("done") is not None


async def test_finished_records_wait_for_a_failing_database_bounded(caplog: pytest.LogCaptureFixture) -> None:
    written: list[str] = []
    failing = True

    async def write(rows: Rows, finals: list[CallRecord]) -> None:
        if failing:
            raise ConnectionError("database down")
        written.extend(row["call_control_id"] for row in rows)

    writer = RecordWriter(write, instance_id="me", max_pending_finals=3)
    live = CallRecord(call_control_id="live", started_at=1.0)
    writer.touch(live)
    with caplog.at_level(logging.WARNING, logger="callpipe.store"):
        for i in range(5):
            writer.finish(CallRecord(call_control_id=f"c{i}", started_at=float(i), end_reason="bot_ended"))
        assert writer.stats.dropped == 2
        assert "dropped the oldest, call c0" in caplog.text and "call c1" in caplog.text
        assert not await writer.flush()
        assert not await writer.flush()
    assert writer.pending == 4 and writer.stats.failures == 2
    assert caplog.text.count("writing to the database failed") == 1  # logged once, not per retry
    failing = False
    assert await writer.flush()
    assert sorted(written) == ["c2", "c3", "c4", "live"]
    assert writer.pending == 0


def _hold_sqlite_write_lock(path: str, release: threading.Event, held: threading.Event) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN EXCLUSIVE")
    held.set()
    release.wait(30)
    conn.execute("COMMIT")
    conn.close()


async def _stall_database(db_url: str, secs: float) -> asyncio.Task[None]:
    """Block writes to ``calls`` for ``secs`` from another connection (a database that stalls)."""
    if db_url.startswith("sqlite"):
        path = make_url(db_url).database or ""
        release, held = threading.Event(), threading.Event()
        thread = threading.Thread(target=_hold_sqlite_write_lock, args=(path, release, held), daemon=True)
        thread.start()
        await asyncio.to_thread(held.wait, 10)

        async def unlock_sqlite() -> None:
            await asyncio.sleep(secs)
            release.set()
            await asyncio.to_thread(thread.join, 10)

        return asyncio.create_task(unlock_sqlite())
    import asyncpg

    conn = await asyncpg.connect(db_url)
    tx = conn.transaction()
    await tx.start()
    await conn.execute("LOCK TABLE calls IN ACCESS EXCLUSIVE MODE")

    async def unlock_pg() -> None:
        await asyncio.sleep(secs)
        await tx.rollback()
        await conn.close()

    return asyncio.create_task(unlock_pg())


async def test_a_stalled_database_never_blocks_calls_and_records_catch_up(db_url: str) -> None:
    async with started_store(db_url, flush_interval=0.1) as store:
        store.sink.touch(full_record("warm-up", end_reason="in_progress"))
        assert await store.writer.flush()
        flushes_before = store.writer.stats.flushes
        unlock = await _stall_database(db_url, 2.0)
        calls = [full_record(f"call-{i}", end_reason="in_progress") for i in range(20)]
        slowest_touch = worst_lag = 0.0
        stalled_at = time.monotonic()
        tick = 0.02
        # 20 "calls" touching their records every 20 ms (far more often than observers do).
        while time.monotonic() - stalled_at < 1.5:
            before = time.monotonic()
            await asyncio.sleep(tick)
            worst_lag = max(worst_lag, time.monotonic() - before - tick)
            for record in calls:
                record.turns.append(Turn(speaker="caller", text="more words"))
                start = time.perf_counter()
                store.sink.touch(record)
                slowest_touch = max(slowest_touch, time.perf_counter() - start)
        for record in calls[:10]:
            record.end_reason, record.ended_at = "caller_hangup", time.time()
            start = time.perf_counter()
            store.sink.finish(record)
            slowest_touch = max(slowest_touch, time.perf_counter() - start)
        # Nothing got through while stalled, yet the event loop and the sink never waited.
        assert store.writer.stats.flushes == flushes_before
        if db_url.startswith("sqlite"):  # (PostgreSQL's table lock blocks reads too)
            assert await store.get_call("call-0") is None
        assert slowest_touch < 0.002, slowest_touch
        assert worst_lag < 0.1, worst_lag
        await unlock

        async def caught_up() -> bool:
            got = [await store.get_call(r.call_control_id) for r in calls]
            return all(
                g is not None and len(g.turns) == len(r.turns) for g, r in zip(got, calls, strict=True)
            )

        await _eventually(caught_up, 20, "the records to catch up after the stall")
        done = await store.get_call("call-3")
        assert done is not None and done.end_reason == "caller_hangup"


async def test_live_records_are_rewritten_at_most_every_live_interval_new_and_finished_ones_at_once() -> None:
    batches: list[list[str]] = []

    async def write(rows: Rows, finals: list[CallRecord]) -> None:
        batches.append(sorted(row["call_control_id"] for row in rows))

    now = [100.0]
    writer = RecordWriter(write, instance_id="me", interval=0.5, live_interval=1.0, clock=lambda: now[0])
    a, b = CallRecord(call_control_id="a", started_at=1.0), CallRecord(call_control_id="b", started_at=2.0)

    async def tick(*touched: CallRecord) -> None:
        for record in touched:
            writer.touch(record)
        assert await writer.flush(due_only=True)
        now[0] += 0.5

    await tick(a)  # a is new: stored at once (other instances look its owner up)
    await tick(a, b)  # b is new; a was written 0.5 s ago
    await tick(a, b)  # a is due; b was written 0.5 s ago
    b.end_reason = "caller_hangup"
    writer.finish(b)
    await tick(a)  # b is finished: written at once; a was written 0.5 s ago
    assert batches == [["a"], ["b"], ["a"], ["b"]]
    assert writer.pending == 1  # a's latest state waits for its turn...
    assert await writer.flush()  # ...unless everything is asked for (close() does that)
    assert batches[-1] == ["a"] and writer.pending == 0


async def test_the_background_task_waits_for_live_records_that_are_not_due() -> None:
    batches: list[int] = []

    async def write(rows: Rows, finals: list[CallRecord]) -> None:
        batches.append(len(rows))

    # More live records than one batch takes: the task writes them in two batches back to
    # back, then waits; touched again, they are not due for a minute and nothing is written.
    writer = RecordWriter(write, instance_id="me", interval=0.02, live_interval=60.0)
    records = [CallRecord(call_control_id=f"c{i}", started_at=1.0) for i in range(BATCH_LIMIT + 100)]
    flushes = 0
    flush = writer.flush

    async def counted_flush(*, due_only: bool = False) -> bool:
        nonlocal flushes
        flushes += 1
        return await flush(due_only=due_only)

    writer.flush = counted_flush  # type: ignore[method-assign]
    for record in records:
        writer.touch(record)
    writer.start()

    async def two_batches() -> bool:
        return len(batches) == 2

    try:
        await _eventually(two_batches, 5, "the two first batches")
        for record in records:
            writer.touch(record)
        flushes = 0
        await asyncio.sleep(0.3)
    finally:
        await writer.close(timeout=1)
    assert batches[:2] == [BATCH_LIMIT, 100]
    assert batches[2:] == [BATCH_LIMIT, 100]  # close() wrote them
    assert flushes <= 0.3 / 0.02 + 2, flushes  # one per interval, not a busy loop
