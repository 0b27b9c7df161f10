"""`PhonePlayback` without sockets: marks echoed in order and on time, clears, gaps, replies."""

from __future__ import annotations

from typing import Any

import pytest

from callpipe.sim.call_result import CallResult, TurnTiming
from callpipe.sim.playback import FRAME_SECS, PhonePlayback

RATE = 8000
FRAME = 2 * int(RATE * FRAME_SECS)  # bytes of one 20 ms frame


class _Phone:
    """A playback with its echoed marks and emitted events collected, on a clock of frames."""

    def __init__(self, *, record: bool = False) -> None:
        self.marks: list[str] = []
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.playback = PhonePlayback(
            rate=RATE,
            record=record,
            echo_mark=self.marks.append,
            emit=lambda name, **fields: self.events.append((name, fields)),
        )
        self.result = CallResult(stream_id="s", call_control_id="c", connected_at=0.0)
        self.playback.start(self.result, 0.0)
        self.now = 0.0

    def play(self, frames: int = 1) -> list[bytes]:
        """Play ``frames`` frames, advancing the clock by 20 ms each."""
        out = []
        for _ in range(frames):
            out.append(self.playback.play_frame(self.now))
            self.now += FRAME_SECS
        return out

    def audio(self, frames: float, value: int = 1000) -> None:
        """The bot sends ``frames`` frames of a constant sample ``value``."""
        sample = value.to_bytes(2, "little", signed=True)
        self.playback.receive_audio(sample * int(frames * FRAME // 2), self.now)


def test_a_mark_with_nothing_buffered_is_echoed_at_once() -> None:
    phone = _Phone()
    phone.playback.receive_mark("m1")
    assert phone.marks == ["m1"]


def test_a_mark_is_echoed_only_after_the_audio_before_it_has_played() -> None:
    phone = _Phone()
    phone.audio(1.5)
    phone.playback.receive_mark("m1")
    phone.play()
    assert phone.marks == []  # half a frame still to play
    phone.play()
    assert phone.marks == []  # played during this frame: not heard until it ends
    phone.play()
    assert phone.marks == ["m1"]


def test_marks_are_echoed_in_the_order_they_were_sent() -> None:
    # The first mark's audio has played exactly to a frame's end, so that mark is still
    # queued when the next arrives with nothing buffered: it must not overtake.
    phone = _Phone()
    phone.audio(1)
    phone.playback.receive_mark("m1")
    phone.play()
    phone.playback.receive_mark("m2")
    phone.play()
    assert phone.marks == ["m1", "m2"]


def test_clear_drops_unplayed_audio_and_echoes_its_marks_in_order() -> None:
    phone = _Phone()
    phone.audio(3)
    phone.playback.receive_mark("m1")
    phone.audio(3)
    phone.playback.receive_mark("m2")
    phone.play()
    phone.playback.clear()
    assert phone.marks == ["m1", "m2"]
    assert phone.playback.queued_bytes == 0
    assert phone.play()[0] == bytes(FRAME)  # silence from here on


def test_frames_are_padded_with_silence_and_recorded() -> None:
    phone = _Phone(record=True)
    phone.audio(0.5)
    frame = phone.play()[0]
    assert len(frame) == FRAME
    assert frame[: FRAME // 2] == (1000).to_bytes(2, "little", signed=True) * (FRAME // 4)
    assert frame[FRAME // 2 :] == bytes(FRAME // 2)
    phone.play()
    assert bytes(phone.playback.track) == frame + bytes(FRAME)
    assert phone.result.bot_audio_secs == pytest.approx(FRAME_SECS / 2)


def test_a_short_pause_is_a_gap_and_a_long_one_ends_the_reply() -> None:
    phone = _Phone(record=True)
    phone.audio(2)
    phone.play(2)
    phone.play(5)  # 100 ms with nothing to play
    phone.audio(1)
    phone.play()
    assert phone.result.gaps == [pytest.approx(0.1)]
    assert [name for name, _ in phone.events] == ["bot_audio_started"]
    phone.play(30)  # 600 ms of quiet: the reply is over
    assert [name for name, _ in phone.events] == ["bot_audio_started", "bot_audio_stopped"]
    stopped = phone.events[1][1]
    assert stopped["secs"] == pytest.approx(8 * FRAME_SECS)
    assert stopped["sample_rate"] == RATE
    assert len(stopped["audio"]) >= 8 * FRAME  # the reply's audio, from its first frame
    assert phone.result.gaps == [pytest.approx(0.1)]  # the end of a reply is not a gap


def test_greeting_and_turn_latency_are_measured_where_the_audio_is_heard() -> None:
    phone = _Phone()
    phone.play(3)
    phone.audio(1)
    phone.play()
    assert phone.result.greeting_heard_at == pytest.approx(0.06)
    assert phone.result.greeting_latency == pytest.approx(0.06)
    phone.play(30)
    turn = TurnTiming(text="hi", started_at=phone.now, ended_at=phone.now + 0.5)
    phone.result.turns.append(turn)
    phone.play(25)  # the caller speaks; the bot answers 0.2 s after they stop
    phone.now = turn.ended_at + 0.2
    phone.audio(1)
    phone.play()
    assert turn.first_bot_audio_received_at == pytest.approx(turn.ended_at + 0.2)
    assert turn.response_latency == pytest.approx(0.2)
    latency = phone.events[-1][1]["latency"]
    assert phone.events[-1][0] == "bot_audio_started" and latency == pytest.approx(0.2)


def test_quiet_for_counts_from_the_last_thing_heard_received_or_said() -> None:
    phone = _Phone()
    phone.audio(2)
    assert phone.playback.quiet_for(1.0, spoke_until=0.0) == 0.0  # audio is buffered
    phone.play(2)
    assert phone.playback.quiet_for(1.0, spoke_until=0.0) == pytest.approx(1.0 - 0.04)
    assert phone.playback.quiet_for(1.0, spoke_until=0.9) == pytest.approx(0.1)
