"""End to end over real sockets: a bot written like Pipecat's Telnyx guide, under uvicorn,
talking to a simulated caller that speaks Telnyx's media-stream protocol."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from callpipe.server.background import BackgroundServer
from callpipe.sim.bots import CannedBotConfig, create_canned_bot_app
from callpipe.sim.caller import CallerTurn, SimulatedCaller
from callpipe.telnyx.api import TelnyxClient
from tests.conftest import tone

REPLY_WORDS = [f"w{i}" for i in range(10)]


async def _wait_for(condition: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def test_conversation_greeting_replies_dtmf_and_hang_up(
    speech_8k: bytes, fake_telnyx: tuple[str, Any]
) -> None:
    api_base, telnyx_state = fake_telnyx
    async with TelnyxClient("test-key", base_url=api_base) as client:
        dialled = await client.dial(to="+15550002222", from_="+15550001111", connection_id="conn-1")
    call_control_id = dialled["call_control_id"]

    config = CannedBotConfig(
        reply=tone(1.0, freq=500),
        greeting=tone(0.8, freq=300),
        api_key="test-key",
        api_base_url=api_base,
    )
    app, calls = create_canned_bot_app(config)
    with BackgroundServer(app) as server:
        caller = SimulatedCaller(server.ws_url + "/ws", call_control_id=call_control_id)
        result = await caller.run(
            [
                CallerTurn(audio=speech_8k, text="first"),
                CallerTurn(audio=speech_8k, text="second"),
                CallerTurn(dtmf="7"),
                CallerTurn(dtmf="#", quiet_secs=0.3),  # the bot hangs up on '#'
            ]
        )
        await calls[0].wait_finished(5)

    bot = calls[0]
    assert bot.call_data["call_control_id"] == call_control_id
    assert bot.call_data["from"] == "+15550001111" and bot.call_data["to"] == "+15550002222"
    # Greeting heard promptly, each turn answered once, DTMF received in order.
    assert result.greeting_latency is not None and result.greeting_latency < 0.3
    assert bot.responder.turns == 2
    assert bot.responder.dtmf == ["7", "#"]
    assert len(result.turns) == 2
    for turn in result.turns:
        assert turn.response_latency is not None
        # VAD stop window (0.2 s) + framework + the caller's 20 ms playout: well under 0.5 s.
        assert turn.response_latency < 0.5, turn
    assert result.bot_audio_secs == pytest.approx(0.8 + 2 * 1.0, abs=0.1)
    assert result.gaps == []
    assert result.clears == []
    # The bot ended the call: socket closed by the bot, and the hang-up reached the API.
    assert result.closed_by == "bot"
    assert result.close_code == 1000
    hangups = telnyx_state.requests_to(f"/v2/calls/{call_control_id}/actions/hangup", "POST")  # type: ignore[attr-defined]
    assert len(hangups) == 1
    assert hangups[0].headers["authorization"] == "Bearer test-key"
    assert not telnyx_state.calls[call_control_id].is_alive  # type: ignore[attr-defined]


async def test_stop_from_telnyx_ends_the_pipeline(speech_8k: bytes) -> None:
    app, calls = create_canned_bot_app(CannedBotConfig(reply=tone(0.5), greeting=tone(0.3)))
    with BackgroundServer(app) as server:
        caller = SimulatedCaller(server.ws_url + "/ws")
        result = await caller.run([CallerTurn(audio=speech_8k)], hang_up_after_secs=0.3)
        # The caller hung up (sent stop); the bot's pipeline must end on its own.
        await calls[0].wait_finished(3)
    assert result.closed_by == "caller"
    assert calls[0].responder.turns == 1


async def test_barge_in_sends_clear_fast_and_keeps_only_heard_words(speech_8k: bytes) -> None:
    config = CannedBotConfig(reply=tone(5.0, freq=500), reply_words=REPLY_WORDS, greeting=None)
    app, calls = create_canned_bot_app(config)
    with BackgroundServer(app) as server:
        caller = SimulatedCaller(server.ws_url + "/ws")
        result = await caller.run(
            [
                CallerTurn(audio=speech_8k, text="question"),
                # Interrupt 1.2 s into the 5 s answer.
                CallerTurn(audio=speech_8k, text="interruption", barge_in_after=1.2),
            ],
            hang_up_after_secs=0.5,
        )
        await calls[0].wait_finished(3)

    bot = calls[0]
    output = bot.transport.output()
    assert bot.responder.interruptions >= 1
    assert len(result.clears) >= 1
    assert output.clears_sent >= 1
    # clear left the server as the VAD detected the caller's speech: before the
    # InterruptionFrame even reached the first processor.
    assert output.last_clear_at is not None
    # (The caller's first turn interrupted nothing; the barge-in is the last interruption.)
    reached_responder = min(t for t in bot.responder.interrupted_at if t >= output.last_clear_at)
    assert 0 <= reached_responder - output.last_clear_at < 0.1
    # The caller stopped hearing the first answer soon after it started talking:
    # VAD start (0.2 s) + clear latency + at most the output lead (80 ms) of buffered audio.
    interruption = result.turns[1]
    first_clear = result.clears[0]
    assert first_clear - interruption.started_at < 0.6
    # Only the words whose audio played before the barge-in reached the aggregator:
    # 1.2 s + ~0.3 s of a 5 s reply with a word every 0.5 s -> about 3-4 of 10 words,
    # followed by the complete second answer.
    first_answer = bot.heard[: bot.heard.index("w0", 1)] if bot.heard.count("w0") > 1 else bot.heard
    assert 2 <= len(first_answer) <= 5, bot.heard
    assert first_answer == REPLY_WORDS[: len(first_answer)]


async def test_dtmf_and_unknown_events_do_not_end_the_call(speech_8k: bytes) -> None:
    app, calls = create_canned_bot_app(CannedBotConfig(reply=tone(0.4), greeting=None))
    with BackgroundServer(app) as server:
        caller = SimulatedCaller(server.ws_url + "/ws")
        result = await caller.run(
            [CallerTurn(dtmf="123"), CallerTurn(audio=speech_8k)], hang_up_after_secs=0.4
        )
        await calls[0].wait_finished(3)
    assert calls[0].responder.dtmf == ["1", "2", "3"]
    assert calls[0].responder.turns == 1
    assert result.closed_by == "caller"


@pytest.mark.parametrize(
    ("encoding", "rate"),
    [("PCMU", 8000), ("PCMA", 8000), ("L16", 8000), ("L16", 16000), ("G722", 16000)],
)
async def test_every_codec_end_to_end(encoding: str, rate: int, speech_8k: bytes) -> None:
    config = CannedBotConfig(reply=tone(0.6, freq=500), greeting=tone(0.4), inbound_encoding=encoding)
    app, calls = create_canned_bot_app(config)
    with BackgroundServer(app) as server:
        caller = SimulatedCaller(server.ws_url + "/ws", encoding=encoding, sample_rate=rate)
        result = await caller.run([CallerTurn(audio=speech_8k)], hang_up_after_secs=0.5)
        await calls[0].wait_finished(3)
    assert calls[0].call_data["outbound_encoding"] == encoding
    assert calls[0].responder.turns == 1  # the VAD heard the caller through this codec
    assert result.greeting_latency is not None
    assert result.bot_audio_secs == pytest.approx(1.0, abs=0.1)  # greeting + reply, decoded by the caller
    assert result.gaps == [] and not result.errors
    # The bot's audio survived the codec: its energy is that of the tone, not noise or silence.
    import numpy as np

    bot = np.frombuffer(result.bot_track, dtype=np.int16).astype(np.float64)
    loud = bot[np.abs(bot) > 1000]
    assert len(loud) > 0.3 * rate


async def test_with_min_words_speech_alone_does_not_interrupt_the_bot(speech_8k: bytes) -> None:
    # No STT in this bot, so no words ever arrive: with interruption_min_words the VAD's
    # start must not cut the bot off (a cough or "uh-huh" while it talks is not a barge-in).
    config = CannedBotConfig(reply=tone(3.0, freq=500), greeting=None, interruption_min_words=2)
    app, calls = create_canned_bot_app(config)
    with BackgroundServer(app) as server:
        caller = SimulatedCaller(server.ws_url + "/ws")
        result = await caller.run(
            [CallerTurn(audio=speech_8k), CallerTurn(audio=speech_8k, barge_in_after=0.8)],
            hang_up_after_secs=0.5,
        )
        await calls[0].wait_finished(3)
    assert result.clears == []
    # Only the first turn (the bot silent) produced an interruption, which cuts nothing.
    assert calls[0].responder.interruptions == 1
    assert result.bot_audio_secs >= 6.0 - 0.1  # both 3 s replies were heard in full
