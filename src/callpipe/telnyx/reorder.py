"""Put inbound media back in order: a small bounded reorder window, sans-I/O.

Telnyx does not promise that media messages arrive in order. :class:`ReorderBuffer`
takes each frame with its order key (``media.chunk``; else ``media.timestamp`` in frame
units; see :func:`order_key`) and gives frames back in key order. A frame that arrives
early waits until the frames before it came, but never longer than ``window`` frames
(3 x 20 ms = 60 ms by default): then the missing frames are reported as a :class:`Gap`
(so silence can be filled for the VAD and STT) and the held frames go on. Duplicates and
frames that come after their slot was given up are dropped. Everything is counted.

The in-order case costs no allocation: :meth:`ReorderBuffer.push` answers ``True`` ("pass
this frame on now") and keeps nothing; only when it answers ``False`` is there anything
to collect with :meth:`ReorderBuffer.ready`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

from callpipe.telnyx import protocol

__all__ = ["Gap", "ReorderBuffer", "ReorderCounters", "order_key"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Gap:
    """``frames`` frames never came (or came too late): fill them with silence."""

    frames: int


@dataclass(slots=True)
class ReorderCounters:
    """What the buffer did, for logs and metrics."""

    reordered: int = 0  # frames held back until the frames before them came
    duplicates: int = 0  # dropped: a frame already passed on or held
    late: int = 0  # dropped: came after its slot was reported as a gap
    missing: int = 0  # frames reported in gaps
    gaps: int = 0  # gap reports
    resyncs: int = 0  # jumps too large to be jitter: the order restarts at the new key


def order_key(event: protocol.MediaEvent, frame_ms: int = 20) -> int | None:
    """The order of a media frame: its ``chunk``, else its ``timestamp`` in frames, else none."""
    if event.chunk is not None:
        return event.chunk
    if event.timestamp is not None:
        return event.timestamp // frame_ms
    return None


class ReorderBuffer(Generic[T]):
    """Frames in, frames back in key order within ``window`` frames; see the module docstring."""

    def __init__(self, window: int = 3, *, first_key: int | None = None, max_jump: int = 250) -> None:
        if window < 1:
            raise ValueError("window must be at least one frame")
        self.window = window
        self.max_jump = max_jump  # a jump of more frames than this (5 s) is a restart, not jitter
        self.counters = ReorderCounters()
        # The key expected next; unknown until the first frame unless given (chunks start at 1).
        self._next: int | None = first_key
        self._held: dict[int, T] = {}
        self._given_up: set[int] = set()  # keys reported in gaps, to tell late frames from duplicates
        self._out: list[T | Gap] = []

    @property
    def held(self) -> int:
        """How many frames are waiting."""
        return len(self._held)

    def push(self, key: int, item: T) -> bool:
        """Offer frame ``item`` with order key ``key``.

        ``True``: it is the next frame and nothing waits; pass it on now (nothing was kept).
        ``False``: it was held or dropped; :meth:`ready` then lists what is due, if anything.
        """
        expected = self._next
        if expected is None or (key == expected and not self._held):
            self._next = key + 1
            return True
        if abs(key - expected) > self.max_jump:
            self._resync(key, item)
            return False
        if key < expected:
            if key in self._given_up:
                self._given_up.discard(key)
                self.counters.late += 1
            else:
                self.counters.duplicates += 1
            return False
        if key in self._held:
            self.counters.duplicates += 1
            return False
        self._held[key] = item
        self._release()
        return False

    def ready(self) -> list[T | Gap]:
        """The frames (and gaps) due since the last call, in order; empties the list."""
        out, self._out = self._out, []
        return out

    def flush(self) -> list[T | Gap]:
        """End of stream: everything held, in order, gaps included."""
        while self._held:
            self._advance()
        return self.ready()

    def _release(self) -> None:
        assert self._next is not None
        while self._held and (self._next in self._held or max(self._held) - self._next >= self.window):
            self._advance()

    def _advance(self) -> None:
        """Pass on the next frame, or report the run of missing frames before the next held one."""
        assert self._next is not None
        if self._next in self._held:
            self._out.append(self._held.pop(self._next))
            self.counters.reordered += 1
            self._next += 1
            return
        first = min(self._held)
        missing = first - self._next
        self._given_up.update(range(self._next, first))
        if len(self._given_up) > 4 * self.max_jump:  # bounded: forget the oldest
            floor = self._next - self.max_jump
            self._given_up = {k for k in self._given_up if k >= floor}
        self._out.append(Gap(missing))
        self.counters.gaps += 1
        self.counters.missing += missing
        self._next = first

    def _resync(self, key: int, item: T) -> None:
        self.counters.resyncs += 1
        for k in sorted(self._held):  # what waited goes on as it is: the old order is over
            self._out.append(self._held.pop(k))
        self._given_up.clear()
        self._out.append(item)
        self._next = key + 1
