"""Per-call input guards: malformed messages and floods (pure logic, no I/O).

The input transport asks these on every message; each answer costs a few float
operations. :class:`InputGuard` counts malformed messages; :class:`FloodGuard` keeps a
caller from taking the event loop: a token bucket on the *duration* of the media
received against the wall clock (Telnyx streams audio in real time, so a stream that
runs ahead of it is broken or hostile) and one on the message count (tiny payloads,
unknown events, marks). Media beyond the allowance is dropped before it is decoded or
reaches the VAD; a flood that goes on is a reason to close the call.
"""

from __future__ import annotations

import collections
import enum
import logging
import re

from callpipe import metrics
from callpipe.records import observer as records

logger = logging.getLogger("callpipe.transports")
_DETAIL_NUMBERS = re.compile(r"\d+")


class InputGuard:
    """Counts malformed input of one call and decides when enough is enough.

    Each distinct reason is logged once per call; the totals are logged at the end.
    """

    def __init__(self, max_per_sec: int) -> None:
        self.max_per_sec = max_per_sec
        self.total = 0
        # Sliding window: the call closes on more than max_per_sec bad messages within any 1 s.
        self._recent: collections.deque[float] = collections.deque(maxlen=max_per_sec + 1)
        self._logged: set[str] = set()
        self.observer: records.CallObserver | None = None

    def record(self, reason: str, now: float, *, counts: bool = True) -> bool:
        """Count one bad message; True if the call should now be closed.

        ``counts=False`` (an unknown event) is logged and totalled but never closes a call.
        """
        self.total += 1
        metrics.REGISTRY.error("malformed_message")
        # Byte offsets and lengths are details of one message, not a new kind of fault.
        kind = _DETAIL_NUMBERS.sub("N", reason.split(" - at ")[0])[:80]
        if kind not in self._logged:
            self._logged.add(kind)
            logger.warning("dropped a malformed message (%s); the call carries on", reason)
            if self.observer is not None:
                self.observer.error("malformed_message", reason)
        if not counts:
            return False
        self._recent.append(now)
        return len(self._recent) > self.max_per_sec and now - self._recent[0] < 1.0


class Verdict(enum.IntEnum):
    """What to do with one message."""

    ACCEPT = 0
    DROP = 1
    CLOSE = 2


# Real time plus a little: a sender whose clock runs slightly fast is not a flood.
_REFILL_RATE = 1.02
# Dropped audio "forgets" at this rate (seconds per second): a stream running less than
# this much over real time only loses the excess; a flood goes over the limit at once.
_EXCESS_LEAK = 0.5


class FloodGuard:
    """Token buckets on one call's media duration and message count.

    ``burst_secs``: how much audio may arrive ahead of real time (a network hiccup makes
    Telnyx deliver its backlog at once); beyond it, media is dropped. ``close_after_secs``:
    once this much audio has been dropped (forgetting at ``_EXCESS_LEAK``), the call is
    closed. ``max_messages_per_sec``/``message_burst``: all messages (Telnyx sends 50 a
    second); going over the burst closes the call.
    """

    __slots__ = (
        "_credit",
        "_excess",
        "_last",
        "_messages",
        "burst_secs",
        "close_after_secs",
        "dropped",
        "dropped_secs",
        "max_messages_per_sec",
        "message_burst",
        "reason",
    )

    def __init__(
        self,
        *,
        burst_secs: float = 3.0,
        close_after_secs: float = 2.0,
        max_messages_per_sec: float = 200.0,
        message_burst: float = 400.0,
    ) -> None:
        self.burst_secs = burst_secs
        self.close_after_secs = close_after_secs
        self.max_messages_per_sec = max_messages_per_sec
        self.message_burst = message_burst
        self._credit = burst_secs
        self._messages = message_burst
        self._excess = 0.0
        self._last: float | None = None
        self.dropped = 0
        self.dropped_secs = 0.0
        self.reason = ""

    def message(self, now: float) -> Verdict:
        """One message of any kind arrived at ``now``: refill the buckets and count it."""
        # (Plain comparisons rather than min/max calls: this runs for every message.)
        last = self._last
        self._last = now
        if last is not None:
            elapsed = now - last
            credit = self._credit + elapsed * _REFILL_RATE
            self._credit = credit if credit < self.burst_secs else self.burst_secs
            messages = self._messages + elapsed * self.max_messages_per_sec
            self._messages = messages if messages < self.message_burst else self.message_burst
            if self._excess:
                excess = self._excess - elapsed * _EXCESS_LEAK
                self._excess = excess if excess > 0.0 else 0.0
        self._messages -= 1.0
        if self._messages < 0.0:
            self.reason = f"messages arriving faster than {self.max_messages_per_sec:g} per second"
            return Verdict.CLOSE
        return Verdict.ACCEPT

    def media(self, secs: float) -> Verdict:
        """``secs`` of audio arrived (after :meth:`message`): accept, drop or close."""
        if self._credit >= secs - 1e-9:  # (float sums of 20 ms steps)
            self._credit -= secs
            return Verdict.ACCEPT
        if self.dropped == 0:
            logger.warning(
                "media is arriving faster than real time (over %.1fs ahead); dropping the excess",
                self.burst_secs,
            )
        self.dropped += 1
        self.dropped_secs += secs
        metrics.REGISTRY.error("media_flood_dropped")
        self._excess += secs
        if self._excess > self.close_after_secs + 1e-9:
            self.reason = (
                f"media arriving faster than real time ({self.dropped_secs:.1f}s of audio "
                f"beyond a {self.burst_secs:g}s allowance)"
            )
            return Verdict.CLOSE
        return Verdict.DROP
