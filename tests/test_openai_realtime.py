"""OpenAIRealtimeService against the fake Realtime API, over real sockets on 127.0.0.1.

Each test runs three real servers in threads: the fake Realtime API, the bot's app
(``[transport.input(), OpenAIRealtimeService, transport.output()]``) and, where tools need
it, the fake Telnyx API; a :class:`PhoneLine` plays Telnyx's side of the call.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI, WebSocket

from callpipe.runner import RunnerArguments, parse_telephony_websocket
from callpipe.server.background import BackgroundServer
from callpipe.services import assistant
from callpipe.services.llm import FunctionCallParams, FunctionSchema, TelephonyTools
from callpipe.services.openai_realtime import OpenAIRealtimeService
from callpipe.sim.fake_realtime import (
    FakeRealtimeReply,
    FakeRealtimeState,
    create_fake_realtime_app,
    tone_ulaw,
)
from callpipe.sim.realtime_bot import PhoneLine, RealtimeBotCall, create_realtime_bot_app
from callpipe.telnyx.api import TelnyxClient
from callpipe.transports.serializers import TelnyxFrameSerializer
from tests.helpers import wait_until

KEY = "sk-realtime-test-0123456789"
EXAMPLE = str(Path(__file__).resolve().parents[1] / "examples" / "realtime_bot.py")


@contextmanager
def servers(
    state: FakeRealtimeState, make: Callable[[str], OpenAIRealtimeService], **app_args: Any
) -> Iterator[tuple[str, list[RealtimeBotCall], FakeRealtimeState]]:
    """The fake model and the bot; yields the bot's ``/ws`` URL, its calls and the fake's state."""
    with BackgroundServer(create_fake_realtime_app(state)) as fake:
        app, calls = create_realtime_bot_app(lambda: make(fake.base_url + "/v1"), **app_args)
        with BackgroundServer(app) as bot:
            yield bot.ws_url + "/ws", calls, state


def service(base_url: str, **kwargs: Any) -> OpenAIRealtimeService:
    return OpenAIRealtimeService(KEY, base_url=base_url, instructions="Be brief.", **kwargs)


SPEECH = tone_ulaw(0.6, freq=300.0, level=0.5)


async def test_a_call_answered_by_the_model_passes_ulaw_through_byte_for_byte(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    greeting = FakeRealtimeReply("Hello caller", audio=tone_ulaw(0.4, freq=500.0))
    answer = FakeRealtimeReply("Sure thing", audio=tone_ulaw(0.6, freq=600.0))
    state = FakeRealtimeState(
        api_key=KEY, greeting=greeting, replies=[answer], transcripts=["what time is it"]
    )

    # No codec work on the path: every decode/encode of the serializer is counted.
    used: list[str] = []
    for name in ("decode_media", "encode_audio"):
        original = getattr(TelnyxFrameSerializer, name)

        def counting(self: Any, *args: Any, _name: str = name, _original: Any = original) -> Any:
            used.append(_name)
            return _original(self, *args)

        monkeypatch.setattr(TelnyxFrameSerializer, name, counting)

    with servers(state, lambda url: service(url, greeting="Hello caller")) as (url, calls, fake):
        async with PhoneLine(url) as phone:
            await wait_until(lambda: len(phone.bot_audio()) >= len(greeting.audio or b""), timeout=5)
            await wait_until(lambda: bool(phone.marks), timeout=5)
            phone.say(SPEECH)
            expected = (greeting.audio or b"") + (answer.audio or b"")
            await wait_until(lambda: len(phone.bot_audio()) >= len(expected), timeout=8)
            await asyncio.sleep(0.1)
        conn = fake.last
        assert conn.headers["authorization"] == f"Bearer {KEY}"
        assert conn.model == "gpt-realtime"
        session = conn.events[0]["session"]
        assert conn.types()[0] == "session.update"
        assert session["audio"]["input"]["format"] == {"type": "audio/pcmu"}
        assert session["audio"]["output"]["format"] == {"type": "audio/pcmu"}
        assert session["audio"]["input"]["turn_detection"]["type"] == "server_vad"
        # The caller's payloads reached the model unchanged (the fake got a contiguous run of them).
        sent = bytes(phone.sent)
        got = bytes(conn.audio)
        assert len(got) > 8000 and got in sent
        assert SPEECH in got
        # The model's audio reached the phone unchanged.
        assert phone.bot_audio()[: len(expected)] == expected
        assert used == []
        assert calls[0].service.history[0].text == "Hello caller"
        assert any(e.role == "user" and e.text == "what time is it" for e in calls[0].service.history)


async def test_barge_in_clears_at_once_and_truncates_at_what_the_caller_heard() -> None:
    greeting = FakeRealtimeReply("This is a long greeting that goes on", audio=tone_ulaw(3.0, freq=500.0))
    state = FakeRealtimeState(greeting=greeting, replies=["Yes"], transcripts=["stop"])
    with servers(state, lambda url: service(url, greeting="hi")) as (url, calls, fake):
        async with PhoneLine(url) as phone:
            await wait_until(
                lambda: bool(phone.media) and time.monotonic() - phone.media[0][0] > 1.0, timeout=5
            )
            phone.say(SPEECH)
            await wait_until(lambda: bool(phone.clears), timeout=3)
            await wait_until(lambda: bool(fake.last.truncates), timeout=3)
            conn = fake.last
            assert conn.speech_started_at
            assert phone.clears[0] - conn.speech_started_at[0] < 0.1
            truncate = conn.truncates[0]
            greeting_item = calls[0].service.history[0].item_id
            assert truncate["item_id"] == greeting_item and truncate["content_index"] == 0
            heard = phone.heard_at_clear[0]
            assert 900 < heard < 2500
            assert abs(truncate["audio_end_ms"] - heard) <= 40, (truncate, heard)
            # Nothing more of the greeting plays after the clear.
            after_clear = [payload for at, payload in phone.media if at > phone.clears[0]]
            assert not any(greeting.audio and p in greeting.audio for p in after_clear if p != b"\xff" * 160)
        # The history keeps only what was heard of the greeting.
        heard_words = calls[0].service.history[0].text.split()
        assert 0 < len(heard_words) < len(greeting.text.split())


async def test_tools_round_trip_transfer_allowlist_and_end_call_after_the_goodbye(
    fake_telnyx: tuple[str, Any],
) -> None:
    telnyx_url, telnyx = fake_telnyx
    dialer = TelnyxClient("test-key", base_url=telnyx_url, max_retries=0)
    ccid = str(
        (await dialer.dial(to="+15550001111", from_="+15550002222", connection_id="c-1"))["call_control_id"]
    )
    await dialer.aclose()
    goodbye = FakeRealtimeReply("Goodbye now", audio=tone_ulaw(0.8, freq=700.0), tool="end_call")
    state = FakeRealtimeState(
        replies=[
            FakeRealtimeReply("Let me look", tool="lookup_order", arguments={"order": "A17"}),
            FakeRealtimeReply("Transferring", tool="transfer_call", arguments={"to": "+882345678901"}),
            FakeRealtimeReply("Transferring", tool="transfer_call", arguments={"to": "+15557654321"}),
            goodbye,
        ]
    )
    looked_up: list[dict[str, Any]] = []

    async def lookup_order(params: FunctionCallParams) -> Any:
        looked_up.append(params.arguments)
        return {"status": "shipped"}

    def make(url: str) -> OpenAIRealtimeService:
        tools = TelephonyTools(
            call_control_id=ccid,
            client=TelnyxClient("test-key", base_url=telnyx_url, max_retries=0),
            transfer_numbers=["+15557654321"],
        )
        schemas = [
            *TelephonyTools.schemas(),
            FunctionSchema("lookup_order", "Find an order.", {"order": {"type": "string"}}),
        ]
        realtime = service(url, tools=schemas)
        tools.register(realtime)
        realtime.register_function("lookup_order", lookup_order)
        return realtime

    with servers(state, make) as (url, calls, fake):
        async with PhoneLine(url) as phone:
            for turn in range(4):
                await wait_until(lambda: fake.connections and fake.last.session, timeout=5)
                phone.say(SPEECH)
                await wait_until(lambda n=turn + 1: fake.responses >= n, timeout=5)
                if turn < 3:
                    await wait_until(lambda n=turn + 1: len(outputs_of(fake)) >= n, timeout=5)
                    await wait_until(
                        lambda n=turn + 1: fake.last.types().count("response.create") >= n,
                        timeout=5,
                    )
            await asyncio.wait_for(phone.closed.wait(), timeout=8)
        conn = fake.last
        session_tools = {t["name"] for t in conn.session["tools"]}
        assert session_tools == {"end_call", "transfer_call", "send_dtmf", "lookup_order"}
        assert looked_up == [{"order": "A17"}]
        results = [json.loads(item["output"]) for item in outputs_of(fake)]
        assert results[0] == {"status": "shipped"}
        assert "not allowed" in results[1]["error"]
        assert results[2] == {"status": "transferring", "to": "+15557654321"}
        assert results[3] == {"status": "ending"}
        # Only the allowed number reached Telnyx.
        assert [t["to"] for t in telnyx.calls[ccid].transfers] == ["+15557654321"]
        # After end_call the model is not asked again, and the goodbye played out in full first.
        assert conn.types()[-1] != "response.create"
        assert goodbye.audio is not None and goodbye.audio in phone.bot_audio()
        assert calls[0].finished.wait(5)


def outputs_of(fake: FakeRealtimeState) -> list[dict[str, Any]]:
    return [item for item in fake.last.items if item.get("type") == "function_call_output"]


async def test_a_dropped_socket_reconnects_with_the_conversation_restored() -> None:
    answer = FakeRealtimeReply("It is noon", audio=tone_ulaw(1.0, freq=650.0))
    state = FakeRealtimeState(greeting="Hello caller", replies=[answer], transcripts=["what time is it"])
    with servers(state, lambda url: service(url, greeting="Hello caller")) as (url, calls, fake):
        async with PhoneLine(url) as phone:
            await wait_until(lambda: bool(phone.marks), timeout=5)
            state.drop_connection(after_deltas=2)
            phone.say(SPEECH)
            await wait_until(lambda: len(fake.connections) == 2, timeout=5)
            await wait_until(
                lambda: answer.audio is not None and answer.audio in phone.bot_audio(), timeout=8
            )
        first, second = fake.connections
        assert first.closed
        types = second.types()
        assert types[0] == "session.update"
        restored = [(item["role"], item["content"][0]["text"]) for item in second.items]
        assert restored == [("assistant", "Hello caller"), ("user", "what time is it")]
        assert types.index("response.create") > types.index("conversation.item.create")
        assert calls[0].service.connections == 2
        assert not calls[0].finished.is_set()


async def test_service_down_plays_the_fallback_line_and_hangs_up_cleanly() -> None:
    state = FakeRealtimeState()
    state.refuse = True
    fallback = tone_ulaw(0.6, freq=350.0)
    with servers(state, lambda url: service(url, fallback_audio=fallback, reconnect_attempts=2)) as (
        url,
        calls,
        _,
    ):
        async with PhoneLine(url) as phone:
            await asyncio.wait_for(phone.closed.wait(), timeout=8)
            assert phone.bot_audio()[: len(fallback)] == fallback
        assert calls[0].finished.wait(5)


async def test_transcripts_become_turns_with_latency_and_audio_token_usage() -> None:
    answer = FakeRealtimeReply("It is noon", audio=tone_ulaw(0.75, freq=650.0))
    state = FakeRealtimeState(greeting="Hello caller", replies=[answer], transcripts=["what time is it"])
    with servers(state, lambda url: service(url, greeting="Hello caller"), observe=True) as (url, calls, _):
        async with PhoneLine(url) as phone:
            await wait_until(lambda: len(phone.marks) >= 2, timeout=5)  # first chunk heard, then all of it
            await wait_until(lambda: not calls[0].transport.output_processor.bot_speaking, timeout=5)
            phone.say(SPEECH)
            await wait_until(
                lambda: answer.audio is not None and answer.audio in phone.bot_audio(), timeout=8
            )
            observer = calls[0].observer
            assert observer is not None
            await wait_until(
                lambda: len(observer.record.turns) >= 3 and bool(observer.record.turns[2].heard_text),
                timeout=5,
            )
            await wait_until(lambda: observer.record.turns[2].heard_text == "It is noon", timeout=5)
        greeting, caller, reply = observer.record.turns[:3]
        assert (greeting.speaker, greeting.text, greeting.interrupted) == ("bot", "Hello caller", False)
        assert (caller.speaker, caller.text) == ("caller", "what time is it")
        assert (reply.speaker, reply.text, reply.heard_text) == ("bot", "It is noon", "It is noon")
        latency = reply.latency
        assert latency is not None
        assert latency.llm_first_token_ms is not None and latency.first_audio_sent_ms is not None
        assert 0 <= latency.llm_first_token_ms <= latency.first_audio_sent_ms
        assert latency.heard_ms is not None and latency.heard_ms >= latency.first_audio_sent_ms
        usage = observer.record.usage
        provider = "openairealtime:gpt-realtime"
        assert usage.audio_tokens_out[provider] > 0 and usage.audio_tokens_in[provider] > 0
        assert usage.llm_prompt_tokens[provider] >= usage.audio_tokens_in[provider]


def bot_app(bot: Any) -> FastAPI:
    """``/ws`` running a bot entry point as ``callpipe serve`` does (handshake, then ``bot(runner_args)``)."""
    app = FastAPI()

    @app.websocket("/ws")
    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        _, call_data = await parse_telephony_websocket(websocket)
        await bot(RunnerArguments(websocket=websocket, call_data=call_data))

    return app


async def test_the_built_in_assistant_in_realtime_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    goodbye = FakeRealtimeReply("Goodbye", audio=tone_ulaw(0.4, freq=700.0), tool="end_call")
    state = FakeRealtimeState(greeting="Hello", replies=[goodbye])
    app = bot_app(assistant.bot)

    with BackgroundServer(create_fake_realtime_app(state)) as fake:
        monkeypatch.setenv("ASSISTANT_MODE", "realtime")
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        monkeypatch.setenv("OPENAI_BASE_URL", fake.base_url + "/v1")
        monkeypatch.delenv("TELNYX_API_KEY", raising=False)
        with BackgroundServer(app) as bot:
            async with PhoneLine(bot.ws_url + "/ws") as phone:
                await wait_until(lambda: bool(phone.marks), timeout=5)
                phone.say(SPEECH)
                await asyncio.wait_for(phone.closed.wait(), timeout=8)
        conn = state.last
        prompt = assistant.AssistantConfig().system_prompt()
        assert conn.session["instructions"] == prompt
        assert {t["name"] for t in conn.session["tools"]} == {"end_call", "transfer_call", "send_dtmf"}
        assert conn.types()[:2] == ["session.update", "response.create"]
        assert goodbye.audio is not None and goodbye.audio in phone.bot_audio()
    monkeypatch.setenv("ASSISTANT_MODE", "nonsense")
    with pytest.raises(ValueError, match="ASSISTANT_MODE"):
        assistant.register_models()


async def test_the_example_bot_answers_and_runs_its_own_tool(monkeypatch: pytest.MonkeyPatch) -> None:
    from callpipe.server.serve import load_bot

    example = load_bot(EXAMPLE)
    reply = FakeRealtimeReply("Let me check", tool="check_appointment", arguments={"name": "Maria Lopez"})
    state = FakeRealtimeState(greeting="Hello", replies=[reply])
    with BackgroundServer(create_fake_realtime_app(state)) as fake:
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        monkeypatch.setenv("OPENAI_BASE_URL", fake.base_url + "/v1")
        monkeypatch.delenv("TELNYX_API_KEY", raising=False)
        with BackgroundServer(bot_app(example)) as bot:
            async with PhoneLine(bot.ws_url + "/ws") as phone:
                await wait_until(lambda: bool(phone.marks), timeout=5)
                phone.say(SPEECH)
                await wait_until(lambda: bool(outputs_of(state)), timeout=8)
        [output] = outputs_of(state)
        assert json.loads(output["output"]) == {"name": "Maria Lopez", "next": "Tuesday at 10 AM"}
        assert "Bright Smile Dental" in state.last.session["instructions"]


async def test_a_pcma_call_is_converted_once_at_the_edge() -> None:
    from callpipe.audio import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode

    answer = FakeRealtimeReply("Fine", audio=tone_ulaw(0.6, freq=600.0))
    state = FakeRealtimeState(greeting=None, replies=[answer])
    speech_alaw = alaw_encode(ulaw_decode(SPEECH))
    with servers(state, lambda url: service(url)) as (url, _calls, fake):
        async with PhoneLine(url, encoding="PCMA") as phone:
            await wait_until(lambda: bool(fake.connections) and bool(fake.last.session), timeout=5)
            phone.say(speech_alaw)
            expected = alaw_encode(ulaw_decode(answer.audio or b""))
            await wait_until(lambda: len(phone.bot_audio()) >= len(expected), timeout=8)
        # The model heard μ-law (A-law -> PCM -> μ-law, no resampling at 8 kHz) ...
        assert ulaw_encode(alaw_decode(speech_alaw))[1600:3200] in bytes(fake.last.audio)
        # ... and the caller got the model's μ-law as A-law.
        assert phone.bot_audio()[: len(expected)] == expected


async def test_local_turn_detection_commits_on_callpipes_vad_and_cancels_on_barge_in(
    speech_8k: bytes,
) -> None:
    from callpipe.audio import ulaw_encode

    long_reply = FakeRealtimeReply("A long answer", audio=tone_ulaw(3.0, freq=600.0))
    state = FakeRealtimeState(replies=[long_reply], transcripts=["hello"])
    speech = ulaw_encode(speech_8k)
    with servers(state, lambda url: service(url, turn_detection="local"), vad=True) as (url, calls, fake):
        async with PhoneLine(url) as phone:
            await wait_until(lambda: bool(fake.connections) and bool(fake.last.session), timeout=5)
            assert fake.last.session["audio"]["input"]["turn_detection"] is None
            phone.say(speech)
            await wait_until(lambda: "input_audio_buffer.commit" in fake.last.types(), timeout=8)
            await wait_until(lambda: len(phone.bot_audio()) > 4000, timeout=8)
            assert fake.last.types().index("input_audio_buffer.commit") < fake.last.types().index(
                "response.create"
            )
            phone.say(speech)  # talks over the reply: callpipe's VAD interrupts
            await wait_until(lambda: bool(phone.clears), timeout=8)
            await wait_until(lambda: bool(fake.last.truncates), timeout=3)
        assert fake.last.truncates[0]["audio_end_ms"] > 0
        assert calls[0].service.history[0].text == "hello"


def test_fake_realtime_command_listens_on_loopback_only() -> None:
    from callpipe.cli import main

    with pytest.raises(SystemExit, match="loopback only"):
        main(["fake-realtime", "--host", "0.0.0.0", "--port", "1"])


def test_realtime_urls_and_session_shape() -> None:
    from callpipe.services import realtime_protocol as proto

    assert proto.realtime_url("https://api.openai.com/v1", "gpt-realtime") == (
        "wss://api.openai.com/v1/realtime?model=gpt-realtime"
    )
    assert proto.realtime_url("http://127.0.0.1:9/v1/", "m 1") == "ws://127.0.0.1:9/v1/realtime?model=m%201"
    with pytest.raises(ValueError, match="http"):
        proto.realtime_url("ftp://x/v1", "m")
    config = proto.RealtimeConfig(model="m", voice="v", instructions="i", turn_detection="semantic_vad")
    session = proto.session_update(config)["session"]
    assert session["type"] == "realtime"
    assert session["audio"]["input"]["turn_detection"]["type"] == "semantic_vad"
    assert session["audio"]["input"]["transcription"] == {"model": "gpt-4o-mini-transcribe"}
    assert proto.usage_tokens(
        {"input_tokens": 5, "output_tokens": 7, "input_token_details": {"audio_tokens": 3}}
    ) == (
        5,
        7,
        3,
        0,
    )
    assert proto.usage_tokens(None) == (0, 0, 0, 0)
