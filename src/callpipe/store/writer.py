"""The batched record writer behind ``store.sink``: touch and finish return at once.

Live calls *touch* their :class:`CallRecord` after each change; the writer keeps only a
reference per call (a dirty set), and a background task writes the latest state of the
dirty records every ``interval`` seconds in one transaction (an upsert). Many touches of
one call between two flushes become one write, so a slow database costs memory per
call, never per change, and never time on the audio path: encoding happens in the
writer's task, the database work in the driver.

A new call's record and a finished one are written at the next flush (another instance
looks a call's owner up in the store, and a finished record is what readers wait for).
A live record already stored is rewritten at most every ``live_interval`` seconds: each
write encodes the whole record again, so this halves the store's work per live call at
the default settings, and a live record in the store is at most about a second old.

Finished records are kept until they are written, retrying with exponential backoff
while the database fails. At most ``max_pending_finals`` wait; past that the oldest is
dropped, counted (``callpipe_errors_total{kind="records_dropped"}``) and logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from callpipe import metrics
from callpipe.records.model import CallRecord

__all__ = ["RecordWriter", "WriterStats", "record_row"]

logger = logging.getLogger("callpipe.store")

# How many records one transaction writes at most (more wait for the next, immediate, round).
BATCH_LIMIT = 500
MAX_BACKOFF_SECS = 30.0

Rows = list[dict[str, Any]]
WriteFunction = Callable[[Rows, list[CallRecord]], Awaitable[None]]

_encoder = msgspec.json.Encoder()


def record_row(record: CallRecord, now: float) -> dict[str, Any]:
    """The ``calls`` row for ``record``'s current state."""
    transcript = "\n".join(turn.text for turn in record.turns if turn.text).lower()
    return {
        "call_control_id": record.call_control_id,
        "direction": record.direction,
        "from_number": record.from_,
        "to_number": record.to,
        "started_at": record.started_at,
        "ended_at": record.ended_at,
        "end_reason": record.end_reason,
        "instance": record.instance,
        "turn_count": len(record.turns),
        "transcript": transcript,
        "record": _encoder.encode(record).decode(),
        "recording_path": record.recording_path,
        "updated_at": now,
    }


# Encoding yields to the event loop after this long, so a flush of many long records never
# holds up the calls' audio for more than about this (msgspec encodes ~1 GB/s).
ENCODE_SLICE_SECS = 0.002


async def _encode(records: list[CallRecord], now: float) -> Rows:
    rows = []
    slice_start = time.perf_counter()
    for record in records:
        rows.append(record_row(record, now))
        if time.perf_counter() - slice_start > ENCODE_SLICE_SECS:
            await asyncio.sleep(0)
            slice_start = time.perf_counter()
    return rows


def _stamp(record: CallRecord, instance_id: str) -> None:
    # The instance that wrote it (the process_died sweep goes by it), and the recording's
    # absolute path, so that the API and retention find it whatever their working directory.
    if record.instance is None:
        record.instance = instance_id
    if record.recording_path and not os.path.isabs(record.recording_path):
        record.recording_path = os.path.abspath(record.recording_path)


@dataclass
class WriterStats:
    """What the writer did so far (for tests, logs and metrics)."""

    flushes: int = 0
    rows_written: int = 0
    failures: int = 0
    dropped: int = 0


class RecordWriter:
    """A :class:`~callpipe.records.sink.RecordSink` that writes through ``write`` in batches.

    ``write(rows, finals)`` writes the rows in one transaction (``finals`` are the finished
    records among them, for the post-call webhook) and raises on failure. ``clock`` times
    the live records' rewrites (``time.monotonic``; tests give their own).
    """

    def __init__(
        self,
        write: WriteFunction,
        *,
        instance_id: str,
        interval: float = 0.5,
        live_interval: float = 1.0,
        max_pending_finals: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._write = write
        self._clock = clock
        self._instance_id = instance_id
        self.interval = interval
        self.live_interval = live_interval
        self.max_pending_finals = max_pending_finals
        self._dirty: dict[str, CallRecord] = {}
        self._finals: OrderedDict[str, CallRecord] = OrderedDict()
        # Live calls whose record is stored: when it was last written (by ``clock``).
        self._written_at: dict[str, float] = {}
        self._backlog = False  # the last flush left due records for the next one
        self._lock = asyncio.Lock()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._failing_since: float | None = None
        self.stats = WriterStats()

    # ------------------------------------------------------------------ RecordSink

    def touch(self, record: CallRecord) -> None:
        """Remember ``record`` for the next flush (a dict store: no I/O, no copy)."""
        try:
            _stamp(record, self._instance_id)
            if record.call_control_id not in self._finals:
                self._dirty[record.call_control_id] = record
        except Exception:  # never raise into a call
            logger.exception("records: touch failed")

    def finish(self, record: CallRecord) -> None:
        """Keep ``record`` until it is written (bounded: the oldest is dropped past the limit)."""
        try:
            _stamp(record, self._instance_id)
            ccid = record.call_control_id
            self._dirty.pop(ccid, None)
            self._written_at.pop(ccid, None)
            self._finals[ccid] = record
            self._finals.move_to_end(ccid)
            while len(self._finals) > self.max_pending_finals:
                dropped, _ = self._finals.popitem(last=False)
                self.stats.dropped += 1
                metrics.REGISTRY.error("records_dropped")
                logger.warning(
                    "records: %d finished records are waiting for the database (limit %d); "
                    "dropped the oldest, call %s, unwritten",
                    len(self._finals) + 1,
                    self.max_pending_finals,
                    dropped,
                )
        except Exception:
            logger.exception("records: finish failed")

    # ------------------------------------------------------------------ the task

    @property
    def pending(self) -> int:
        """Records waiting to be written (dirty live calls plus finished ones)."""
        return len(self._dirty) + len(self._finals)

    def start(self) -> None:
        """Start the background flush task."""
        self._stop.clear()
        self._task = asyncio.create_task(self._run(), name="callpipe-record-writer")

    async def close(self, timeout: float = 10.0) -> None:
        """Stop the task and write what is pending, trying for up to ``timeout`` seconds."""
        self._stop.set()
        if self._task is not None:
            await self._task
            self._task = None
        deadline = time.monotonic() + timeout
        while self.pending and time.monotonic() < deadline:
            if not await self.flush():
                await asyncio.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
        if self.pending:
            logger.error(
                "records: closing with %d record(s) unwritten (the database did not answer): %s",
                self.pending,
                ", ".join(list(self._finals)[:20] + list(self._dirty)[:20]),
            )

    async def _run(self) -> None:
        delay = self.interval
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)
            if self._stop.is_set():
                return
            ok = await self.flush(due_only=True)
            if ok:
                delay = 0.0 if self._backlog else self.interval
            else:
                delay = min(MAX_BACKOFF_SECS, max(self.interval, delay) * 2)

    async def flush(self, *, due_only: bool = False) -> bool:
        """Write the dirty and finished records now; ``False`` if the database failed.

        With ``due_only`` (the background task), live records written less than
        ``live_interval`` ago wait for a later flush.
        """
        async with self._lock:
            self._backlog = False
            if not self._dirty and not self._finals:
                return True
            now, written_at = time.time(), self._clock()
            finals = list(self._finals.values())[:BATCH_LIMIT]
            dirty = self._take_dirty(BATCH_LIMIT - len(finals), written_at if due_only else None)
            self._backlog = len(finals) + len(dirty) == BATCH_LIMIT  # a full batch: maybe more due
            if not dirty and not finals:
                return True
            try:
                rows = await _encode(dirty + finals, now)
                await self._write(rows, finals)
            except Exception as exc:
                self._failed(exc, dirty)
                return False
            for record in finals:
                if self._finals.get(record.call_control_id) is record:
                    del self._finals[record.call_control_id]
            for record in dirty:
                if record.call_control_id not in self._finals:
                    self._written_at[record.call_control_id] = written_at
            self.stats.flushes += 1
            self.stats.rows_written += len(rows)
            if self._failing_since is not None:
                logger.warning(
                    "records: the database is writable again after %.1fs", time.time() - self._failing_since
                )
                self._failing_since = None
            return True

    def _take_dirty(self, room: int, due_at: float | None) -> list[CallRecord]:
        """Up to ``room`` dirty records out of the dirty set; with ``due_at``, only the due ones.

        A record is due if it was never written, or last written ``live_interval`` ago
        (less half a flush interval: the flushes' timer is not exact).
        """
        if room <= 0:
            return []
        if due_at is None:
            taken = list(self._dirty.values())[:room]
        else:
            not_after = due_at - self.live_interval + self.interval / 2
            written_at = self._written_at
            taken = []
            for ccid, record in self._dirty.items():
                if written_at.get(ccid, float("-inf")) <= not_after:
                    taken.append(record)
                    if len(taken) == room:
                        break
        for record in taken:
            del self._dirty[record.call_control_id]
        return taken

    def _failed(self, exc: BaseException, dirty: list[CallRecord]) -> None:
        # Live records go back to the dirty set unless touched again meanwhile (the newer
        # reference is the same object anyway) or finished; finals never left.
        for record in dirty:
            ccid = record.call_control_id
            if ccid not in self._finals:
                self._dirty.setdefault(ccid, record)
        self.stats.failures += 1
        if self._failing_since is None:
            self._failing_since = time.time()
            logger.warning(
                "records: writing to the database failed (%s: %s); keeping %d record(s) in memory and retrying",
                type(exc).__name__,
                str(exc).splitlines()[0][:200] if str(exc) else "",
                self.pending,
            )
