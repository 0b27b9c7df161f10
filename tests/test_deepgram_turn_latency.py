"""The STT TTFB state machine (speech end to the final covering it), without sockets."""

from __future__ import annotations

import pytest

from callpipe.services.deepgram.turn_latency import SpeechToFinal


def test_a_final_after_the_stop_is_measured_from_the_speech_end() -> None:
    turns = SpeechToFinal()
    assert turns.speech_ended(10.0) is None
    assert turns.final(10.3) == pytest.approx(0.3)
    assert turns.final(11.0) is None  # a second final of the same turn is not a new latency


def test_a_final_before_the_stop_event_is_reported_when_the_stop_arrives() -> None:
    turns = SpeechToFinal()
    assert turns.final(10.2) is None
    assert turns.speech_ended(10.0) == pytest.approx(0.2)


def test_a_final_before_the_speech_ended_is_not_this_turns() -> None:
    turns = SpeechToFinal()
    assert turns.final(9.0) is None
    assert turns.speech_ended(10.0) is None  # waits for the next final
    assert turns.final(10.5) == pytest.approx(0.5)


def test_a_new_turn_forgets_the_last_ones_pending_times() -> None:
    turns = SpeechToFinal()
    assert turns.speech_ended(10.0) is None
    turns.speech_started()
    assert turns.final(12.0) is None
    turns.speech_started()
    assert turns.speech_ended(13.0) is None
