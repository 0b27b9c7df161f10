"""Time from the end of the caller's speech to the final transcript covering it (STT TTFB).

Pure logic, no I/O: :class:`~callpipe.services.deepgram.DeepgramSTTService` feeds it the
VAD's turn events and Deepgram's finals, and reports each latency it returns.

Deepgram's endpointing often finalises before the VAD reports the stop (its stop window
is usually longer), so a final that came after the speech ended but before the stop
event is reported when the stop arrives; otherwise the next final is waited for.
"""

from __future__ import annotations

__all__ = ["SpeechToFinal"]


class SpeechToFinal:
    """One turn's speech-end-to-final latency, matched whichever of the two comes first."""

    __slots__ = ("_speech_ended_at", "_turn_final_at")

    def __init__(self) -> None:
        self._speech_ended_at: float | None = None  # speech ended; its final is awaited
        self._turn_final_at: float | None = None  # a final arrived during this turn

    def speech_started(self) -> None:
        """A new turn: forget the last one's pending times."""
        self._speech_ended_at = None
        self._turn_final_at = None

    def speech_ended(self, ended_at: float) -> float | None:
        """The VAD's stop: the latency if this turn's final already came, else ``None`` (waiting)."""
        final_at = self._turn_final_at
        self._turn_final_at = None
        if final_at is not None and final_at >= ended_at:
            return final_at - ended_at
        self._speech_ended_at = ended_at
        return None

    def final(self, now: float) -> float | None:
        """A final transcript at ``now``: the latency if the speech's end was waiting for it."""
        if self._speech_ended_at is not None:
            ended_at, self._speech_ended_at = self._speech_ended_at, None
            return now - ended_at
        self._turn_final_at = now
        return None
