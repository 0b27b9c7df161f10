"""The simulated phone's ear: the bot's audio buffered and played as a phone behind Telnyx does.

Sans-I/O: :class:`PhonePlayback` is fed what the bot sent (decoded audio, marks,
clears) and asked for one 20 ms frame at a time by the caller's clock. It echoes each
mark once the audio before it has played (through ``echo_mark``), and measures what
was heard into the call's :class:`~callpipe.sim.call_result.CallResult`: the greeting
and each turn's first audio, gaps inside a reply, and each reply as a burst
(``bot_audio_started``/``bot_audio_stopped`` events through ``emit``).
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

from callpipe.sim.call_result import CallResult, TurnTiming

__all__ = ["FRAME_SECS", "PhonePlayback"]

FRAME_SECS = 0.02
# A pause in the bot's audio longer than this ends its reply (a shorter one is a gap).
_REPLY_ENDS_AFTER_SECS = 0.5


class PhonePlayback:
    """The bot's audio as the phone plays it, at ``rate`` Hz PCM16, recorded if ``record``."""

    def __init__(
        self,
        *,
        rate: int,
        record: bool,
        echo_mark: Callable[[str], None],
        emit: Callable[..., None],
    ) -> None:
        self.rate = rate
        self.record = record
        self.frame_bytes = 2 * int(rate * FRAME_SECS)
        self._echo_mark = echo_mark
        self._emit = emit
        self.result: CallResult | None = None  # set by :meth:`start`
        self._queue: collections.deque[tuple[str, Any]] = (
            collections.deque()
        )  # ("audio", pcm) | ("mark", name)
        self.queued_bytes = 0
        self.last_audio_received = 0.0
        self.heard_until = 0.0
        self._was_playing = False
        self._gap_started: float | None = None
        self._burst_started: float | None = None  # when the bot's current reply became audible
        self._burst_offset = 0  # where that reply starts in the bot track
        self.track = bytearray()

    def start(self, result: CallResult, now: float) -> None:
        """Measure into ``result`` from ``now`` (quiet time counts from the call's start)."""
        self.result = result
        self.last_audio_received = now

    def quiet_for(self, now: float, spoke_until: float) -> float:
        """How long the line has been quiet: nothing buffered, heard, received or said since."""
        if self.queued_bytes > 0:
            return 0.0
        return now - max(self.heard_until, self.last_audio_received, spoke_until)

    def receive_audio(self, pcm: bytes, now: float) -> None:
        """Buffer decoded bot audio that arrived at ``now``."""
        result = self.result
        assert result is not None
        result.bot_audio_arrivals.append((now, len(pcm) / 2 / self.rate))
        self._queue.append(("audio", pcm))
        self.queued_bytes += len(pcm)
        self.last_audio_received = now
        turn = _current_turn(result)
        if turn is not None and turn.first_bot_audio_received_at is None and now >= turn.ended_at:
            turn.first_bot_audio_received_at = now

    def receive_mark(self, name: str) -> None:
        """Echo the mark once what is buffered before it has played (at once if nothing is).

        A mark still queued (its audio played, not yet popped) is echoed first: marks are
        echoed in the order they were sent, as Telnyx does.
        """
        if not self._queue:
            self._echo_mark(name)
        else:
            self._queue.append(("mark", name))

    def clear(self) -> None:
        """Drop what has not been played yet; its pending marks are echoed at once."""
        marks = [item[1] for item in self._queue if item[0] == "mark"]
        self._queue.clear()
        self.queued_bytes = 0
        for name in marks:
            self._echo_mark(name)

    def play_frame(self, now: float) -> bytes:
        """Play the next 20 ms (silence-padded) and return it; marks reached are echoed."""
        result = self.result
        assert result is not None
        frame_bytes = self.frame_bytes
        queue = self._queue
        out = bytearray()
        while len(out) < frame_bytes and queue:
            kind, item = queue[0]
            if kind == "mark":
                if out:
                    break  # the mark is echoed once the audio before it has played
                queue.popleft()
                self._echo_mark(item)
                continue
            need = frame_bytes - len(out)
            if len(item) <= need:
                out += item
                queue.popleft()
            else:
                out += item[:need]
                queue[0] = ("audio", item[need:])
        self.queued_bytes -= len(out)
        if out:
            # Inline (not a helper call): this runs for every frame of every simulated call.
            if self._gap_started is not None:
                result.gaps.append(now - self._gap_started)
                self._gap_started = None
            elif self._burst_started is None:
                self._burst_started = now
                self._burst_offset = len(self.track)
                turn = _current_turn(result)
                latency = now - turn.ended_at if turn is not None and now >= turn.ended_at else None
                self._emit("bot_audio_started", latency=latency)
            if result.greeting_heard_at is None:
                result.greeting_heard_at = now
            turn = _current_turn(result)
            if turn is not None and turn.first_bot_audio_heard_at is None and now >= turn.ended_at:
                turn.first_bot_audio_heard_at = now
            result.bot_audio_secs += len(out) / 2 / self.rate
            self.heard_until = now + FRAME_SECS
            self._was_playing = True
            if len(out) < frame_bytes:
                out += bytes(frame_bytes - len(out))
        else:
            if self._was_playing and self._gap_started is None:
                self._gap_started = now
            self._was_playing = False
            out = bytearray(frame_bytes)
        # A gap only counts if more audio of the same reply follows soon after.
        if self._gap_started is not None and now - self._gap_started > _REPLY_ENDS_AFTER_SECS:
            self.end_reply(self._gap_started)
            self._gap_started = None
        if self.record:
            self.track += out
        return bytes(out)

    def end_reply(self, stopped_at: float) -> None:
        """The bot's current reply (if any) stopped being heard at ``stopped_at``."""
        if self._burst_started is None:
            return
        self._emit(
            "bot_audio_stopped",
            secs=stopped_at - self._burst_started,
            audio=bytes(self.track[self._burst_offset :]) if self.record else b"",
            sample_rate=self.rate,
        )
        self._burst_started = None


def _current_turn(result: CallResult) -> TurnTiming | None:
    return result.turns[-1] if result.turns else None
