"""The interface between a call's observer and the store that keeps its record."""

from __future__ import annotations

from typing import Protocol

from callpipe.records.model import CallRecord

__all__ = ["MemorySink", "NullSink", "RecordSink"]


class RecordSink(Protocol):
    """Where call records go. Every method returns at once and never raises.

    The observer owns the :class:`CallRecord` and mutates it in its call's task; it calls
    :meth:`touch` after a change. The sink keeps only a reference and writes the latest
    state later, in a batch, off the audio path: many touches of one call between two
    flushes become one write, so a slow database costs memory per *call*, not per change.
    :meth:`finish` hands over the final state; the sink writes it even if it must retry.
    """

    def touch(self, record: CallRecord) -> None:
        """``record`` changed; write its state at the next flush."""

    def finish(self, record: CallRecord) -> None:
        """``record`` is final (``ended_at`` and ``end_reason`` set); write it and let it go."""


class NullSink:
    """A sink that keeps nothing (records off, or code run outside ``callpipe serve``)."""

    def touch(self, record: CallRecord) -> None:
        """Keep nothing."""

    def finish(self, record: CallRecord) -> None:
        """Keep nothing."""


class MemorySink:
    """A sink that keeps records in memory (tests, embedding): ``live`` and ``finished``.

    ``touches`` counts every touch, to show how often a store would have been asked.
    """

    def __init__(self) -> None:
        self.live: dict[str, CallRecord] = {}
        self.finished: dict[str, CallRecord] = {}
        self.touches = 0

    def touch(self, record: CallRecord) -> None:
        """Keep a reference to the live record."""
        self.touches += 1
        self.live[record.call_control_id] = record

    def finish(self, record: CallRecord) -> None:
        """Move the record to ``finished``."""
        self.live.pop(record.call_control_id, None)
        self.finished[record.call_control_id] = record
