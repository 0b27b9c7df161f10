"""The interface between a call's observer and the store that keeps its record."""

from __future__ import annotations

from typing import Protocol

from callpipe.records.model import CallRecord

__all__ = ["NullSink", "RecordSink"]


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
