"""Bounded everything: the output buffer, the TTS queue and the LLM context shed work
visibly (a log line, a counter) instead of growing without end."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest

from callpipe.pipeline import PipelineParams
from callpipe.pipeline.frames import (
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    TTSAudioRawFrame,
)
from callpipe.services.context_window import trim_messages
from callpipe.services.llm import LLMContext
from callpipe.services.tts import MAX_PENDING_CHARS, TTSService
from tests.conftest import tone
from tests.helpers import ServiceHarness, wait_until
from tests.test_barge_in import _running


async def test_a_bot_pushing_ten_minutes_of_audio_keeps_two_minutes_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ws, transport, task, run, _ = await _running(slow_secs=0.0)
    output = transport.output()
    try:
        second = tone(1.0)
        with caplog.at_level(logging.WARNING, logger="callpipe.transports"):
            for _ in range(600):  # ten minutes, as fast as the bot can push it
                await output.queue_frame(TTSAudioRawFrame(audio=second, sample_rate=8000))
        assert len(output._buffer) <= 120 * 8000  # the default max_output_buffer_secs
        assert output.shed_bytes >= (600 - 121) * 8000
        warnings = [r for r in caplog.records if "bot audio queued" in r.getMessage()]
        assert len(warnings) == 1
        # The call plays on what it kept.
        await wait_until(lambda: ws.events().count("media") >= 5)
    finally:
        await task.cancel("test over")
        await asyncio.wait_for(run, 5)


class SlowTTS(TTSService):
    """20 ms of silence per sentence, slowly: text arrives much faster than it is spoken."""

    def __init__(self) -> None:
        super().__init__(sample_rate=8000)
        self.spoken: list[str] = []

    async def run_tts(self, text: str) -> AsyncIterator[bytes]:
        self.spoken.append(text)
        await asyncio.sleep(0.05)
        yield bytes(320)


async def test_a_runaway_reply_is_shed_beyond_the_tts_queue_bound(caplog: pytest.LogCaptureFixture) -> None:
    tts = SlowTTS()
    harness = await ServiceHarness(tts, PipelineParams(audio_out_sample_rate=8000)).start()
    try:
        sentence = "This sentence is a little over fifty characters long. "
        with caplog.at_level(logging.WARNING, logger="callpipe.services"):
            await harness.task.queue_frame(LLMFullResponseStartFrame())
            await harness.task.queue_frames([LLMTextFrame(sentence) for _ in range(1000)])  # 55 k characters
            await harness.task.queue_frame(LLMFullResponseEndFrame())
            await wait_until(lambda: tts._pending_chars > MAX_PENDING_CHARS - 200)
            assert tts._pending_chars <= MAX_PENDING_CHARS
            # The reply still ends (its end marker is never shed) once what was kept is spoken.
            await wait_until(lambda: bool(harness.down.seen(LLMFullResponseEndFrame)), timeout=15)
        # (Some sentences are spoken while the rest arrive, which makes room for a few more.)
        assert tts.shed_chars > 40_000
        assert len([r for r in caplog.records if "wait to be spoken" in r.getMessage()]) == 1
        assert len(tts.spoken) < 120
    finally:
        await harness.cancel()


async def test_text_without_a_sentence_end_is_spoken_in_pieces() -> None:
    tts = SlowTTS()
    harness = await ServiceHarness(tts, PipelineParams(audio_out_sample_rate=8000)).start()
    try:
        await harness.task.queue_frames([LLMTextFrame("word ") for _ in range(300)])  # 1500 chars, no "."
        await wait_until(lambda: len(tts.spoken) >= 2)
        assert all(len(piece) <= 400 for piece in tts.spoken)
        assert len(tts._text) <= 400
    finally:
        await harness.cancel()


# ------------------------------------------------------------------------ LLM context


def test_an_hour_long_call_keeps_the_system_prompt_and_the_latest_turns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    context = LLMContext([{"role": "system", "content": "You are a receptionist."}])
    with caplog.at_level(logging.WARNING, logger="callpipe.services"):
        for i in range(1000):
            context.add_message({"role": "user", "content": f"question {i}"})
            context.add_message({"role": "assistant", "content": f"answer {i}"})
    assert len(context.messages) <= 200
    assert context.messages[0] == {"role": "system", "content": "You are a receptionist."}
    assert context.messages[-1] == {"role": "assistant", "content": "answer 999"}
    assert context.trimmed == 2001 - len(context.messages)
    assert len([r for r in caplog.records if "dropping the oldest turns" in r.getMessage()]) == 1


def test_the_character_bound_holds_and_tool_calls_keep_their_results() -> None:
    messages = [
        {"role": "system", "content": "S"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "t1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "t1", "content": "x" * 50},
        {"role": "user", "content": "u" * 50},
        {"role": "assistant", "content": "a" * 50},
    ]
    removed = trim_messages(messages, max_messages=None, max_chars=120)
    # The tool call went with its result, never one without the other.
    assert removed == 2
    assert [m["role"] for m in messages] == ["system", "user", "assistant"]
    assert not any(m["role"] == "tool" for m in messages)
    # The newest message is kept even if it alone is over the bound.
    big = [{"role": "system", "content": "S"}, {"role": "user", "content": "u" * 500}]
    assert trim_messages(big, max_messages=1, max_chars=10) == 0 and len(big) == 2


def test_limits_can_be_turned_off() -> None:
    context = LLMContext(max_messages=None, max_chars=None)
    for i in range(500):
        context.add_message({"role": "user", "content": str(i)})
    assert len(context.messages) == 500 and context.trimmed == 0
