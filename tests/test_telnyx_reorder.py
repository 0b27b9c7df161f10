"""The inbound media reorder window: pure logic, no sockets."""

from __future__ import annotations

import random

import pytest

from callpipe.telnyx import protocol
from callpipe.telnyx.reorder import Gap, ReorderBuffer, order_key


def _run(buffer: ReorderBuffer[bytes], frames: list[tuple[int, bytes]]) -> list[bytes | Gap]:
    out: list[bytes | Gap] = []
    for key, item in frames:
        if buffer.push(key, item):
            out.append(item)
        else:
            out.extend(buffer.ready())
    out.extend(buffer.flush())
    return out


def _audio(out: list[bytes | Gap], silence: bytes = b"\x00") -> bytes:
    return b"".join(silence * x.frames if isinstance(x, Gap) else x for x in out)


FRAMES = [(k, bytes([k % 256]) * 4) for k in range(1, 201)]


def test_in_order_passes_straight_through() -> None:
    buffer: ReorderBuffer[bytes] = ReorderBuffer()
    assert all(buffer.push(k, item) for k, item in FRAMES)
    assert buffer.held == 0 and buffer.ready() == [] and buffer.flush() == []
    assert buffer.counters.reordered == 0 and buffer.counters.gaps == 0


def test_swapped_neighbours_come_back_in_order() -> None:
    buffer: ReorderBuffer[str] = ReorderBuffer(window=3)
    assert buffer.push(1, "a")
    assert not buffer.push(3, "c")
    assert buffer.ready() == []
    assert buffer.held == 1
    assert not buffer.push(2, "b")
    assert buffer.ready() == ["b", "c"]
    assert buffer.push(4, "d")
    assert buffer.counters.reordered == 2


@pytest.mark.parametrize("seed", range(5))
def test_shuffled_and_duplicated_frames_give_the_same_audio(seed: int) -> None:
    rng = random.Random(seed)
    frames = list(FRAMES)
    # Shuffle within the window: each frame moves at most two places.
    for i in range(0, len(frames) - 2, 3):
        block = frames[i : i + 3]
        rng.shuffle(block)
        frames[i : i + 3] = block
    shuffled: list[tuple[int, bytes]] = []
    for frame in frames:
        shuffled.append(frame)
        if rng.random() < 0.2:
            shuffled.append(frame)
    dups = len(shuffled) - len(frames)
    buffer: ReorderBuffer[bytes] = ReorderBuffer(window=3, first_key=1)
    out = _run(buffer, shuffled)
    assert _audio(out) == b"".join(item for _, item in FRAMES)
    assert buffer.counters.duplicates == dups
    assert buffer.counters.gaps == 0 and buffer.counters.late == 0
    assert buffer.counters.reordered > 0


def test_a_lost_frame_becomes_a_gap_after_the_window() -> None:
    buffer: ReorderBuffer[str] = ReorderBuffer(window=3)
    assert buffer.push(1, "a")
    assert not buffer.push(3, "c")
    assert not buffer.push(4, "d")
    assert buffer.ready() == []  # 60 ms not over yet: 2 may still come
    assert not buffer.push(5, "e")
    assert buffer.ready() == [Gap(1), "c", "d", "e"]
    assert buffer.counters.gaps == 1 and buffer.counters.missing == 1
    # Frame 2 finally arrives: too late, dropped and counted as late (not as a duplicate).
    assert not buffer.push(2, "b")
    assert buffer.ready() == []
    assert buffer.counters.late == 1 and buffer.counters.duplicates == 0
    assert buffer.push(6, "f")


def test_a_run_of_lost_frames_is_one_gap() -> None:
    buffer: ReorderBuffer[str] = ReorderBuffer(window=3)
    buffer.push(10, "a")
    buffer.push(20, "b")
    assert buffer.ready() == [Gap(9), "b"]
    assert buffer.counters.missing == 9


def test_duplicate_of_a_held_frame() -> None:
    buffer: ReorderBuffer[str] = ReorderBuffer(window=3)
    buffer.push(1, "a")
    buffer.push(3, "c")
    assert not buffer.push(3, "c")
    assert buffer.counters.duplicates == 1
    buffer.push(2, "b")
    assert buffer.ready() == ["b", "c"]


def test_flush_reports_the_gaps_before_what_is_held() -> None:
    buffer: ReorderBuffer[str] = ReorderBuffer(window=5)
    buffer.push(1, "a")
    buffer.push(3, "c")
    assert buffer.flush() == [Gap(1), "c"]
    assert buffer.held == 0


def test_a_large_jump_restarts_the_order() -> None:
    buffer: ReorderBuffer[str] = ReorderBuffer(window=3, max_jump=100)
    buffer.push(1, "a")
    buffer.push(3, "c")
    assert not buffer.push(5000, "z")
    assert buffer.ready() == ["c", "z"]
    assert buffer.counters.resyncs == 1
    assert buffer.push(5001, "y")
    assert not buffer.push(1, "again")  # a counter reset far below: a restart too
    assert buffer.ready() == ["again"]
    assert buffer.counters.resyncs == 2


def test_window_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least one"):
        ReorderBuffer(window=0)


def test_order_key_prefers_chunk_then_timestamp() -> None:
    text = protocol.build_inbound_media(b"x", stream_id="s", sequence_number=9, chunk=4, timestamp=60)
    event = protocol.parse_event(text)
    assert isinstance(event, protocol.MediaEvent) and order_key(event) == 4
    no_chunk = protocol.parse_event('{"event":"media","media":{"payload":"eA==","timestamp":"60"}}')
    assert isinstance(no_chunk, protocol.MediaEvent) and order_key(no_chunk) == 3
    bare = protocol.parse_event('{"event":"media","media":{"payload":"eA=="}}')
    assert isinstance(bare, protocol.MediaEvent) and order_key(bare) is None


def test_first_key_holds_an_early_second_frame() -> None:
    buffer: ReorderBuffer[str] = ReorderBuffer(window=3, first_key=1)
    assert not buffer.push(2, "b")
    assert buffer.ready() == []
    assert not buffer.push(1, "a")
    assert buffer.ready() == ["a", "b"]
    assert buffer.push(3, "c")
