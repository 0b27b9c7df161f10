"""The output clock: one timer per event loop that paces bot audio for every call.

Telnyx plays what we send as soon as it arrives, so audio must leave in real time: a
call that is sent 3 s of speech at once cannot be interrupted (our ``clear`` races a
full buffer) and we cannot tell what the caller heard. Each call's output keeps a
timeline (when the audio sent so far will have played); every tick tops each timeline
up to ``lead`` seconds ahead of now, in whole 20 ms chunks.

A per-call timer task would wake hundreds of times per tick with many calls. Instead one
clock task per loop walks only the calls that have audio in flight; idle calls cost
nothing. Sends go through :func:`~callpipe.eager.run_eager`, so one call's slow socket
never delays the others.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from typing import ClassVar, Protocol

logger = logging.getLogger("callpipe.transports")

DEFAULT_TICK_SECS = 0.02


class PacedStream(Protocol):
    """What the clock drives: one call's outgoing audio."""

    def on_tick(self, now: float) -> bool:
        """Send what is due at ``now`` (the tick's scheduled time); False once nothing is left in flight."""
        ...


class OutputClock:
    """Ticks every ``tick`` seconds while any stream is active. One per event loop."""

    _by_loop: ClassVar[weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, OutputClock]] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self, tick: float = DEFAULT_TICK_SECS) -> None:
        self.tick = tick
        self._streams: dict[PacedStream, None] = {}  # insertion-ordered set
        self._task: asyncio.Task[None] | None = None
        self.late_ticks = 0
        self.ticks = 0

    @classmethod
    def for_running_loop(cls) -> OutputClock:
        """The clock of the running event loop (created on first use)."""
        loop = asyncio.get_running_loop()
        clock = cls._by_loop.get(loop)
        if clock is None:
            clock = cls._by_loop[loop] = cls()
        return clock

    @property
    def active_streams(self) -> int:
        """How many streams currently have audio in flight."""
        return len(self._streams)

    def activate(self, stream: PacedStream) -> None:
        """Drive ``stream`` from the next tick on (idempotent)."""
        self._streams[stream] = None
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._run())

    def deactivate(self, stream: PacedStream) -> None:
        """Stop driving ``stream``."""
        self._streams.pop(stream, None)

    async def _run(self) -> None:
        tick = self.tick
        next_tick = time.monotonic() + tick
        while self._streams:
            delay = next_tick - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            now = time.monotonic()
            self.ticks += 1
            if now - next_tick > tick:
                # The loop was blocked for more than a tick; timelines catch up on their
                # own (they are absolute), the count is for diagnostics.
                self.late_ticks += 1
                at = now
            else:
                # Streams decide on the tick's own time, not on when the loop got round to
                # it: a few milliseconds of wake-up jitter would otherwise make a stream
                # send nothing on one tick and two chunks on the next (a 40 ms hole).
                at = next_tick
            for stream in list(self._streams):
                try:
                    active = stream.on_tick(at)
                except Exception:
                    logger.exception("output stream failed; dropping it from the clock")
                    active = False
                if not active:
                    self._streams.pop(stream, None)
            next_tick += tick
            if next_tick < now:
                next_tick = now + tick
        self._task = None
