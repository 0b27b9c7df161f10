"""What a simulated call says and what it measured: :class:`CallerTurn`, :class:`TurnTiming`,
:class:`CallResult` (re-exported by :mod:`callpipe.sim.caller`, their usual import path)."""

from __future__ import annotations

import wave
from dataclasses import dataclass, field

import numpy as np

from callpipe.audio import StreamResampler
from callpipe.telnyx import stream as ts

__all__ = ["CallResult", "CallerTurn", "TurnTiming"]


@dataclass(kw_only=True)
class CallerTurn:
    """One thing the caller does: say ``audio`` (PCM16 mono at ``sample_rate``).

    ``wait_for_bot``: wait until the bot has been quiet for ``quiet_secs`` before
    speaking (a polite caller). ``barge_in_after``: instead, start speaking this many
    seconds after the bot's audio starts being heard (an interruption). ``dtmf`` sends
    key presses instead of audio. ``pause_secs`` of silence come first. ``error`` sends
    a Telnyx ``error`` message (as Telnyx does for malformed media or an unsupported
    operation) instead of audio.
    ``require_answer``: if the bot still has not answered the previous turn after the
    nudges, the caller hangs up instead of saying this turn (a call screener).
    """

    audio: bytes = b""
    sample_rate: int = 8000
    text: str = ""
    dtmf: str = ""
    pause_secs: float = 0.0
    wait_for_bot: bool = True
    quiet_secs: float = 0.6
    barge_in_after: float | None = None
    nudge_audio: bytes = b""
    nudge_text: str = "Hello?"
    max_nudges: int = 2
    require_answer: bool = False
    error: ts.Error | None = None


@dataclass(kw_only=True)
class TurnTiming:
    """What happened around one caller turn (times are monotonic seconds)."""

    text: str
    started_at: float
    ended_at: float
    first_bot_audio_received_at: float | None = None
    first_bot_audio_heard_at: float | None = None

    @property
    def response_latency(self) -> float | None:
        """Caller stopped speaking -> first bot audio heard."""
        if self.first_bot_audio_heard_at is None:
            return None
        return self.first_bot_audio_heard_at - self.ended_at


@dataclass(kw_only=True)
class CallResult:
    """The outcome of a simulated call."""

    stream_id: str
    call_control_id: str
    connected_at: float
    greeting_heard_at: float | None = None
    turns: list[TurnTiming] = field(default_factory=list)
    clears: list[float] = field(default_factory=list)
    marks_echoed: list[str] = field(default_factory=list)
    gaps: list[float] = field(default_factory=list)
    bot_audio_secs: float = 0.0  # heard (played), not just received
    closed_by: str = ""
    closed_at: float | None = None  # time.monotonic() when the socket closed
    close_code: int | None = None
    close_reason: str = ""
    caller_track: bytes = b""
    bot_track: bytes = b""
    sample_rate: int = 8000  # of the caller track (the call's codec)
    bot_sample_rate: int = 8000  # of the bot track (the codec the bot sends: bidirectional)
    outbound_frames_sent: int = 0  # ``stream_track="both_tracks"``: frames of the outbound track
    received_messages: int = 0
    bot_audio_arrivals: list[tuple[float, float]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    nudges: list[tuple[int, float]] = field(default_factory=list)  # (turns said so far, when)
    media_reordered: int = 0  # frames sent after their successor (``reorder``)
    media_duplicated: int = 0  # frames sent twice (``duplicate``)

    @property
    def greeting_latency(self) -> float | None:
        """Connected -> first bot audio heard."""
        return None if self.greeting_heard_at is None else self.greeting_heard_at - self.connected_at

    @property
    def stereo_rate(self) -> int:
        """The rate of :meth:`stereo_pcm`: the higher of the two tracks' rates."""
        return max(self.sample_rate, self.bot_sample_rate)

    def stereo_pcm(self) -> bytes:
        """Caller (left) and bot (right) interleaved, PCM16 at :attr:`stereo_rate`."""
        channels = [
            np.frombuffer(_at_rate(pcm, rate, self.stereo_rate), dtype=np.int16)
            for pcm, rate in ((self.caller_track, self.sample_rate), (self.bot_track, self.bot_sample_rate))
        ]
        stereo = np.zeros((max(len(channel) for channel in channels), 2), dtype=np.int16)
        for index, channel in enumerate(channels):
            stereo[: len(channel), index] = channel
        return stereo.tobytes()

    def write_wav(self, path: str) -> None:
        """Write the call as a stereo WAV: caller left, bot right."""
        with wave.open(path, "wb") as wav:
            wav.setnchannels(2)
            wav.setsampwidth(2)
            wav.setframerate(self.stereo_rate)
            wav.writeframes(self.stereo_pcm())


def _at_rate(pcm: bytes, rate: int, target: int) -> bytes:
    if rate == target or not pcm:
        return pcm
    resampler = StreamResampler(rate, target)
    return resampler.process(pcm) + resampler.flush()
