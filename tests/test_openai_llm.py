"""OpenAILLMService (official SDK) against the fake OpenAI API over real HTTP on 127.0.0.1.

Each test runs a small pipeline ``[upstream recorder, user aggregator, llm, downstream
recorder]`` in a PipelineTask, asks through ``LLMMessagesAppendFrame`` and checks the frames
and what the fake received. The fake itself (wire format, auth, validation) is checked
with plain httpx at the end.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest

from callpipe.pipeline import Pipeline, PipelineTask
from callpipe.pipeline.frames import (
    EndFrame,
    ErrorFrame,
    Frame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    MetricsFrame,
    StartFrame,
)
from callpipe.pipeline.processor import FrameDirection
from callpipe.server.background import BackgroundServer
from callpipe.services.llm import (
    FunctionCallParams,
    FunctionSchema,
    LLMContext,
    LLMContextAggregatorPair,
    LLMMessagesAppendFrame,
    TelephonyTools,
)
from callpipe.services.openai import OpenAILLMError, OpenAILLMService
from callpipe.sim.fake_openai import (
    FakeOpenAIState,
    FakeToolCall,
    ScriptEvent,
    create_fake_openai_app,
    scripted_replies,
    words,
)
from callpipe.telnyx.api import TelnyxClient
from tests.helpers import Recorder

KEY = "sk-test-0123456789abcdef"
DOWN = FrameDirection.DOWNSTREAM
UP = FrameDirection.UPSTREAM
DEADLINE = 5.0
SYSTEM = {"role": "system", "content": "You are a helpful phone assistant."}
WEATHER = FunctionSchema(
    "get_weather",
    "The weather in a city.",
    {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
    ["city"],
)


# --------------------------------------------------------------------- helpers


async def wait_until(predicate: Callable[[], bool], timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)


@dataclass
class Harness:
    task: PipelineTask
    run: asyncio.Task[None]
    up: Recorder
    down: Recorder
    llm: OpenAILLMService
    context: LLMContext

    async def say(self, text: str) -> None:
        """A user turn that runs the LLM."""
        await self.task.queue_frame(LLMMessagesAppendFrame(messages=[{"role": "user", "content": text}]))

    async def reply_done(self, n: int = 1) -> None:
        """Wait for the n-th LLMFullResponseEndFrame."""
        await wait_until(lambda: len(self.down.seen(LLMFullResponseEndFrame)) >= n)

    def errors(self) -> list[ErrorFrame]:
        return [f for f in self.up.seen(ErrorFrame) if isinstance(f, ErrorFrame)]


@pytest.fixture()
def fake_openai() -> Iterator[tuple[str, FakeOpenAIState]]:
    """The fake OpenAI API on a real uvicorn: ``(base_url + "/v1", state)``."""
    app = create_fake_openai_app(api_key=KEY)
    with BackgroundServer(app) as server:
        yield server.base_url + "/v1", app.state.openai


def make_llm(base_url: str, **kwargs: Any) -> OpenAILLMService:
    kwargs.setdefault("api_key", KEY)
    return OpenAILLMService(base_url=base_url, **kwargs)


@asynccontextmanager
async def running(llm: OpenAILLMService, tools: list[FunctionSchema] | None = None) -> AsyncIterator[Harness]:
    context = LLMContext(messages=[dict(SYSTEM)], tools=tools)
    aggregators = LLMContextAggregatorPair(context)
    up, down = Recorder(name="up"), Recorder(name="down")
    task = PipelineTask(Pipeline([up, aggregators.user(), llm, down]), idle_timeout_secs=None)
    run = asyncio.ensure_future(task.run())
    harness = Harness(task, run, up, down, llm, context)
    try:
        await wait_until(lambda: bool(down.seen(StartFrame)))
        yield harness
    finally:
        if not task.has_finished():
            await task.cancel("test over")
        await asyncio.wait_for(run, DEADLINE)


# ------------------------------------------------------------------- streaming


async def test_streams_text_between_response_start_and_end(fake_openai: tuple[str, FakeOpenAIState]) -> None:
    url, fake = fake_openai
    llm = make_llm(url, model="test-model", temperature=0.3, max_tokens=120)
    async with running(llm, tools=[WEATHER]) as h:
        await h.say("hello there")
        await h.reply_done()

        texts = h.down.texts()
        assert len(texts) >= 3, texts  # streamed in pieces, not one blob
        assert "".join(texts) == "You said: hello there."
        kinds = h.down.kinds()
        start, end = kinds.index(LLMFullResponseStartFrame), kinds.index(LLMFullResponseEndFrame)
        text_positions = [i for i, k in enumerate(kinds) if k is LLMTextFrame]
        assert start < min(text_positions) and max(text_positions) < end
        assert h.errors() == []

        request = fake.last_request
        assert request.stream is True and request.completed and not request.disconnected
        assert request.headers["authorization"] == f"Bearer {KEY}"
        body = request.body
        assert body["model"] == "test-model"
        assert body["stream"] is True
        assert body["temperature"] == 0.3 and body["max_tokens"] == 120
        assert body["messages"] == [SYSTEM, {"role": "user", "content": "hello there"}]
        assert body["tools"] == [WEATHER.to_openai()]

        metrics = [m for m in h.down.seen(MetricsFrame) if isinstance(m, MetricsFrame)]
        assert [d.name for m in metrics for d in m.data] == ["ttfb"]
        assert metrics[0].data[0].model == "test-model"


async def test_no_tools_means_no_tools_field_and_defaults(fake_openai: tuple[str, FakeOpenAIState]) -> None:
    url, fake = fake_openai
    async with running(make_llm(url)) as h:
        await h.say("hi")
        await h.reply_done()
    body = fake.last_request.body
    assert body["model"] == "gpt-4o-mini"
    assert "tools" not in body and "temperature" not in body and "max_tokens" not in body
    # The pipeline's end cleaned the SDK client up.
    assert llm_client_closed(h.llm)


def llm_client_closed(llm: OpenAILLMService) -> bool:
    return llm._client is None


# ------------------------------------------------------------------ tool calls


def weather_responder(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> Sequence[ScriptEvent]:
    if messages[-1]["role"] == "tool":
        forecast = json.loads(messages[-1]["content"])["forecast"]
        return words(f"It is {forecast} in Paris.")
    return [FakeToolCall("get_weather", {"city": "Paris", "unit": "celsius"}, id="call_w1", fragments=5)]


async def test_function_call_runs_handler_and_asks_again(fake_openai: tuple[str, FakeOpenAIState]) -> None:
    url, fake = fake_openai
    fake.responder = weather_responder
    llm = make_llm(url)
    calls: list[FunctionCallParams] = []

    async def get_weather(params: FunctionCallParams) -> Any:
        calls.append(params)
        return {"forecast": "sunny"}

    llm.register_function("get_weather", get_weather)
    async with running(llm, tools=[WEATHER]) as h:
        await h.say("What's the weather in Paris?")
        await h.reply_done()

        assert [(c.function_name, c.tool_call_id, c.arguments) for c in calls] == [
            ("get_weather", "call_w1", {"city": "Paris", "unit": "celsius"})
        ]
        first, second = fake.completions()
        # The arguments really were streamed in fragments: role+id+name, 5 pieces, finish,
        # then the usage chunk (asked for: the call's record keeps the token counts).
        assert first.chunks_sent == 8
        assert first.body["tools"] == [WEATHER.to_openai()]

        tool_request, tool_result = h.context.messages[-2:]
        assert tool_request["role"] == "assistant"
        assert tool_request["tool_calls"] == [
            {
                "id": "call_w1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city":"Paris","unit":"celsius"}'},
            }
        ]
        assert tool_result == {"role": "tool", "tool_call_id": "call_w1", "content": '{"forecast": "sunny"}'}
        # The model was asked again with the whole exchange, and its answer streamed.
        assert second.messages[-2:] == [tool_request, tool_result]
        assert "".join(h.down.texts()) == "It is sunny in Paris."
        assert len(h.down.seen(LLMFullResponseStartFrame)) == 1
        assert h.errors() == []


async def test_parallel_tool_calls_are_assembled_by_index(fake_openai: tuple[str, FakeOpenAIState]) -> None:
    url, fake = fake_openai
    fake.responder = scripted_replies(
        [
            "Checking both. ",
            FakeToolCall("get_weather", {"city": "Paris"}, id="call_a", fragments=4),
            FakeToolCall("get_weather", {"city": "Oslo"}, id="call_b", fragments=3),
        ],
        "Paris is sunny and Oslo is snowy.",
    )
    llm = make_llm(url)
    forecasts = {"Paris": "sunny", "Oslo": "snowy"}

    async def get_weather(params: FunctionCallParams) -> Any:
        return {"forecast": forecasts[params.arguments["city"]]}

    llm.register_function("get_weather", get_weather)
    async with running(llm, tools=[WEATHER]) as h:
        await h.say("Paris and Oslo?")
        await h.reply_done()
        tool_messages = [m for m in h.context.messages if m["role"] == "tool"]
        assert [(m["tool_call_id"], json.loads(m["content"])) for m in tool_messages] == [
            ("call_a", {"forecast": "sunny"}),
            ("call_b", {"forecast": "snowy"}),
        ]
        assert "".join(h.down.texts()) == "Checking both. Paris is sunny and Oslo is snowy."
        assert len(fake.completions()) == 2 and h.errors() == []


async def test_end_call_tool_ends_the_task_gracefully(fake_openai: tuple[str, FakeOpenAIState]) -> None:
    url, fake = fake_openai
    fake.responder = scripted_replies(["Goodbye", "!", FakeToolCall("end_call", {})], [])
    llm = make_llm(url)
    TelephonyTools(call_control_id=None, client=None).register(llm)
    finished: list[Frame | None] = []
    async with running(llm, tools=TelephonyTools.schemas()) as h:
        h.task.add_event_handler("on_pipeline_finished", lambda task, frame: finished.append(frame))
        await h.say("That's all, bye.")
        await asyncio.wait_for(asyncio.shield(h.run), DEADLINE)  # the task ends by itself
        assert h.down.texts() == ["Goodbye", "!"]
        end = h.down.seen(EndFrame)
        assert len(end) == 1 and isinstance(end[0], EndFrame)
        assert end[0].reason == "the assistant ended the call"
        # The goodbye was complete before the end went through.
        kinds = h.down.kinds()
        assert kinds.index(LLMFullResponseEndFrame) < kinds.index(EndFrame)
        assert h.context.messages[-1]["content"] == json.dumps({"status": "ending"})
        assert h.errors() == []
    assert isinstance(finished[0], EndFrame)


async def dial(telnyx_url: str) -> tuple[TelnyxClient, str]:
    client = TelnyxClient("test-key", base_url=telnyx_url, max_retries=0)
    data = await client.dial(to="+15550001111", from_="+15550002222", connection_id="conn-1")
    return client, str(data["call_control_id"])


async def test_transfer_call_reaches_telnyx(
    fake_openai: tuple[str, FakeOpenAIState], fake_telnyx: tuple[str, Any]
) -> None:
    url, fake = fake_openai
    telnyx_url, telnyx = fake_telnyx
    client, ccid = await dial(telnyx_url)
    fake.responder = scripted_replies(
        [FakeToolCall("transfer_call", {"to": "+15557654321"})], "Transferring you now."
    )
    llm = make_llm(url)
    # The bot's own code allows this number (a transfer anywhere else is refused).
    TelephonyTools(call_control_id=ccid, client=client, transfer_numbers=["+15557654321"]).register(llm)
    try:
        async with running(llm, tools=TelephonyTools.schemas()) as h:
            await h.say("Put me through to a person, please.")
            await h.reply_done()
            [request] = telnyx.requests_to("/v2/calls/*/actions/transfer")
            assert request.path == f"/v2/calls/{ccid}/actions/transfer"
            assert request.json["to"] == "+15557654321" and request.json["command_id"]
            assert request.status_code == 200
            assert telnyx.calls[ccid].transfers[0]["to"] == "+15557654321"
            assert json.loads(h.context.messages[-1]["content"]) == {
                "status": "transferring",
                "to": "+15557654321",
            }
            assert "".join(h.down.texts()) == "Transferring you now."
            assert h.errors() == []
    finally:
        await client.aclose()


async def test_send_dtmf_reaches_telnyx(
    fake_openai: tuple[str, FakeOpenAIState], fake_telnyx: tuple[str, Any]
) -> None:
    url, fake = fake_openai
    telnyx_url, telnyx = fake_telnyx
    client, ccid = await dial(telnyx_url)
    fake.responder = scripted_replies([FakeToolCall("send_dtmf", {"digits": "1234#"})], "Done.")
    llm = make_llm(url)
    TelephonyTools(call_control_id=ccid, client=client).register(llm)
    try:
        async with running(llm, tools=TelephonyTools.schemas()) as h:
            await h.say("Press 1234 and pound.")
            await h.reply_done()
            [request] = telnyx.requests_to("/v2/calls/*/actions/send_dtmf")
            assert request.json["digits"] == "1234#" and request.status_code == 200
            assert telnyx.calls[ccid].dtmf[0]["digits"] == "1234#"
            assert json.loads(h.context.messages[-1]["content"]) == {"status": "sent", "digits": "1234#"}
            assert h.errors() == []
    finally:
        await client.aclose()


def _tool_results(h: Harness) -> list[str]:
    return [str(m["content"]) for m in h.context.messages if m["role"] == "tool"]


async def test_transfers_outside_the_allowlist_are_refused_and_the_model_is_told(
    fake_openai: tuple[str, FakeOpenAIState], fake_telnyx: tuple[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, fake = fake_openai
    telnyx_url, telnyx = fake_telnyx
    client, ccid = await dial(telnyx_url)
    monkeypatch.setenv("TRANSFER_ALLOWED_NUMBERS", "+15550100999, +1800*")
    # A caller talked the model into a premium-rate number abroad, then into a toll-free one.
    fake.responder = scripted_replies(
        [FakeToolCall("transfer_call", {"to": "+882345678901"})],
        "I cannot transfer you there.",
        [FakeToolCall("transfer_call", {"to": "+18005550123"})],
        "Transferring you now.",
    )
    llm = make_llm(url)
    TelephonyTools(call_control_id=ccid, client=client).register(llm)
    try:
        async with running(llm, tools=TelephonyTools.schemas()) as h:
            await h.say("Transfer me to +882345678901.")
            await h.reply_done()
            assert telnyx.requests_to("/v2/calls/*/actions/transfer") == []  # nothing was dialled
            refusal = json.loads(_tool_results(h)[0])
            assert "not allowed" in refusal["error"] and "+882345678901" in refusal["error"]
            await h.say("Then the toll-free line, please.")
            await h.reply_done(2)
            [request] = telnyx.requests_to("/v2/calls/*/actions/transfer")
            assert request.json["to"] == "+18005550123"  # the +1800* prefix allows it
            assert h.errors() == []
    finally:
        await client.aclose()


async def test_send_dtmf_refuses_long_or_odd_key_strings(
    fake_openai: tuple[str, FakeOpenAIState], fake_telnyx: tuple[str, Any]
) -> None:
    url, fake = fake_openai
    telnyx_url, telnyx = fake_telnyx
    client, ccid = await dial(telnyx_url)
    fake.responder = scripted_replies(
        [FakeToolCall("send_dtmf", {"digits": "1" * 200})],
        "That is too many keys.",
        [FakeToolCall("send_dtmf", {"digits": "12;rm -rf"})],
        "Those are not keys.",
    )
    llm = make_llm(url)
    TelephonyTools(call_control_id=ccid, client=client).register(llm)
    try:
        async with running(llm, tools=TelephonyTools.schemas()) as h:
            await h.say("Press one two hundred times.")
            await h.reply_done()
            assert "between 1 and 32" in json.loads(_tool_results(h)[0])["error"]
            await h.say("Press twelve semicolon.")
            await h.reply_done(2)
            assert "0-9" in json.loads(_tool_results(h)[1])["error"]
            assert telnyx.requests_to("/v2/calls/*/actions/send_dtmf") == []
            assert h.errors() == []
    finally:
        await client.aclose()


# ---------------------------------------------------------------------- errors


async def test_server_error_is_non_fatal_and_the_next_turn_works(
    fake_openai: tuple[str, FakeOpenAIState],
) -> None:
    url, fake = fake_openai
    fake.fail(500)
    async with running(make_llm(url, max_retries=0)) as h:
        await h.say("first")
        await h.reply_done()
        [error] = h.errors()
        assert not error.fatal
        assert "HTTP 500" in error.error and "server_error" in error.error
        assert h.down.texts() == []
        assert not h.task.has_finished()

        await h.say("second")
        await h.reply_done(2)
        assert "".join(h.down.texts()) == "You said: second."
        assert len(h.errors()) == 1
        assert [r.status_code for r in fake.completions()] == [500, 200]


async def test_rate_limit_is_retried_by_the_sdk(fake_openai: tuple[str, FakeOpenAIState]) -> None:
    url, fake = fake_openai
    fake.fail(429, headers={"retry-after-ms": "20"})
    async with running(make_llm(url)) as h:  # default max_retries=2
        await h.say("hello")
        await h.reply_done()
        assert "".join(h.down.texts()) == "You said: hello."
        assert h.errors() == []
        assert [r.status_code for r in fake.completions()] == [429, 200]


async def test_wrong_key_gives_a_clear_error_without_the_key(
    fake_openai: tuple[str, FakeOpenAIState],
) -> None:
    url, fake = fake_openai
    wrong = "sk-wrong-key-abcdef123456"
    async with running(make_llm(url, api_key=wrong, max_retries=0)) as h:
        await h.say("hello")
        await h.reply_done()
        [error] = h.errors()
        assert "HTTP 401" in error.error and "invalid_api_key" in error.error
        assert "check the API key" in error.error
        assert wrong not in error.error
        assert fake.last_request.status_code == 401


async def test_key_echoed_by_a_server_is_redacted(fake_openai: tuple[str, FakeOpenAIState]) -> None:
    url, fake = fake_openai
    fake.fail(400, body={"error": {"message": f"bad request from {KEY}", "type": "invalid_request_error"}})
    async with running(make_llm(url, max_retries=0)) as h:
        await h.say("hello")
        await h.reply_done()
        [error] = h.errors()
        assert KEY not in error.error and "bad request from ***" in error.error


async def test_slow_first_token_shows_in_ttfb(fake_openai: tuple[str, FakeOpenAIState]) -> None:
    url, fake = fake_openai
    fake.first_token_delay = 0.4
    async with running(make_llm(url)) as h:
        await h.say("hello")
        await h.reply_done()
        [metrics] = [m for m in h.down.seen(MetricsFrame) if isinstance(m, MetricsFrame)]
        assert 0.4 <= metrics.data[0].value < 2.0
        assert "".join(h.down.texts()) == "You said: hello."


async def test_silent_server_times_out(fake_openai: tuple[str, FakeOpenAIState]) -> None:
    url, fake = fake_openai
    fake.first_token_delay = 3.0
    started = time.monotonic()
    async with running(make_llm(url, timeout=0.3, max_retries=0)) as h:
        await h.say("hello")
        await h.reply_done()
        assert time.monotonic() - started < 2.0
        [error] = h.errors()
        assert "did not answer within 0.3 s" in error.error
    # The fake saw the client give up.
    await wait_until(lambda: fake.last_request.disconnected)


async def test_dropped_stream_mid_reply_is_an_error_and_nothing_hangs(
    fake_openai: tuple[str, FakeOpenAIState],
) -> None:
    url, fake = fake_openai
    fake.chunk_delay = 0.01
    fake.drop_connection(after_chunks=3)
    async with running(make_llm(url)) as h:
        await h.say("one two three four five six")
        await h.reply_done()
        assert fake.last_request.dropped
        assert h.down.texts() == ["You", " said:"]  # role chunk + two words made it
        [error] = h.errors()
        assert "broke off the reply" in error.error
        # Not retried: the caller has heard part of it.
        assert len(fake.completions()) == 1

        await h.say("again")
        await h.reply_done(2)
        assert h.down.texts()[-1] == " again."


async def test_error_event_inside_the_stream(fake_openai: tuple[str, FakeOpenAIState]) -> None:
    url, fake = fake_openai
    fake.stream_error(after_chunks=2, message="The model had a problem.")
    async with running(make_llm(url)) as h:
        await h.say("hello")
        await h.reply_done()
        [error] = h.errors()
        assert "mid-reply" in error.error and "The model had a problem." in error.error


async def test_unreachable_server(fake_openai: tuple[str, FakeOpenAIState]) -> None:
    from callpipe.server.background import free_port

    llm = make_llm(f"http://127.0.0.1:{free_port()}/v1", max_retries=0)
    async with running(llm) as h:
        await h.say("hello")
        await h.reply_done()
        [error] = h.errors()
        assert "could not reach the LLM server" in error.error


# ---------------------------------------------------------------- interruption


async def test_interruption_cancels_the_stream(fake_openai: tuple[str, FakeOpenAIState]) -> None:
    url, fake = fake_openai
    fake.chunk_delay = 0.05
    fake.responder = lambda messages, tools: words(" ".join(f"w{i}" for i in range(60)))
    async with running(make_llm(url)) as h:
        await h.say("tell me a long story")
        await wait_until(lambda: len(h.down.texts()) >= 3)
        interrupted_at = time.monotonic()
        await h.task.queue_frame(InterruptionFrame())
        await wait_until(lambda: bool(h.down.seen(InterruptionFrame)))
        await wait_until(lambda: fake.last_request.disconnected)
        assert time.monotonic() - interrupted_at < 1.0
        count = len(h.down.texts())
        await asyncio.sleep(0.3)  # several chunk periods: nothing more arrives
        kinds = h.down.kinds()
        cut = kinds.index(InterruptionFrame)
        assert LLMTextFrame not in kinds[cut:]
        assert len(h.down.texts()) == count < 60
        assert not fake.last_request.completed
        assert h.errors() == []


async def test_interruption_while_a_tool_runs_leaves_a_valid_context(
    fake_openai: tuple[str, FakeOpenAIState],
) -> None:
    url, fake = fake_openai
    fake.responder = weather_responder
    llm = make_llm(url)
    running_tool = asyncio.Event()

    async def slow_weather(params: FunctionCallParams) -> Any:
        running_tool.set()
        await asyncio.sleep(10)  # a slow backend; the caller barges in meanwhile
        return {"forecast": "sunny"}

    llm.register_function("get_weather", slow_weather)
    async with running(llm, tools=[WEATHER]) as h:
        await h.say("What's the weather in Paris?")
        await asyncio.wait_for(running_tool.wait(), DEADLINE)
        await h.task.queue_frame(InterruptionFrame())
        await wait_until(lambda: bool(h.down.seen(InterruptionFrame)))
        # An interrupted reply ends without LLMFullResponseEndFrame (nothing left to speak).
        assert not h.down.seen(LLMFullResponseEndFrame)

        # The next turn must still be a valid conversation for the API.
        fake.responder = scripted_replies("Sure, what else?")
        await h.say("Never mind.")
        await h.reply_done(1)
        assert h.errors() == []
        assert "".join(h.down.texts()) == "Sure, what else?"
        request = fake.last_request
        assert request.status_code == 200
        roles = [m["role"] for m in request.messages]
        assert roles == ["system", "user", "assistant", "tool", "user"]


# ------------------------------------------------------------- the fake itself


async def test_fake_speaks_the_sse_wire_format(fake_openai: tuple[str, FakeOpenAIState]) -> None:
    url, fake = fake_openai
    fake.responder = scripted_replies(
        ["Hi", " there", FakeToolCall("end_call", {"why": "done"}, fragments=2)]
    )
    body = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    headers = {"authorization": f"Bearer {KEY}"}
    async with (
        httpx.AsyncClient() as http,
        http.stream("POST", url + "/chat/completions", json=body, headers=headers) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-request-id"].startswith("req_")
        raw = (await response.aread()).decode()
    events = [e for e in raw.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["model"] == "gpt-4o-mini"
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert deltas[0]["role"] == "assistant"
    assert "".join(d.get("content") or "" for d in deltas) == "Hi there"
    fragments = [tc for d in deltas for tc in d.get("tool_calls", [])]
    assert fragments[0]["id"] and fragments[0]["function"]["name"] == "end_call"
    assert all(f["index"] == 0 for f in fragments)
    assert len(fragments) == 3  # the name, then the arguments in two pieces
    assert "".join(f["function"]["arguments"] for f in fragments) == '{"why":"done"}'
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finishes[-1] == "tool_calls" and set(finishes[:-1]) == {None}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0


async def test_fake_answers_non_stream_requests_through_the_sdk(
    fake_openai: tuple[str, FakeOpenAIState],
) -> None:
    url, fake = fake_openai
    async with openai.AsyncOpenAI(api_key=KEY, base_url=url, max_retries=0) as client:
        completion = await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "ping"}]
        )
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.content == "You said: ping."
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.total_tokens > 0
    assert fake.last_request.stream is False


async def test_fake_checks_auth_and_the_conversation(fake_openai: tuple[str, FakeOpenAIState]) -> None:
    url, _ = fake_openai
    ok = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    async with httpx.AsyncClient() as http:
        missing = await http.post(url + "/chat/completions", json=ok)
        wrong = await http.post(
            url + "/chat/completions", json=ok, headers={"authorization": "Bearer sk-nope-12345"}
        )
        auth = {"authorization": f"Bearer {KEY}"}
        orphan = await http.post(
            url + "/chat/completions",
            json={"model": "m", "messages": [{"role": "tool", "tool_call_id": "x", "content": "1"}]},
            headers=auth,
        )
        unanswered = await http.post(
            url + "/chat/completions",
            json={
                "model": "m",
                "messages": [
                    {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function"}]},
                    {"role": "user", "content": "hi"},
                ],
            },
            headers=auth,
        )
        models = await http.get(url + "/models", headers=auth)
    assert missing.status_code == 401 and missing.json()["error"]["type"] == "invalid_request_error"
    assert wrong.status_code == 401
    error = wrong.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == "invalid_api_key"
    assert "sk-nope-12345" not in error["message"]
    assert orphan.status_code == 400 and "tool" in orphan.json()["error"]["message"]
    assert unanswered.status_code == 400 and "c1" in unanswered.json()["error"]["message"]
    assert models.status_code == 200 and models.json()["object"] == "list"


def test_constructor_validation_and_repr() -> None:
    with pytest.raises(ValueError):
        OpenAILLMService("")
    local = OpenAILLMService("", base_url="http://localhost:11434/v1/", model="llama3.2")
    assert local.base_url == "http://localhost:11434/v1"
    service = OpenAILLMService(KEY)
    assert service.base_url == "https://api.openai.com/v1" and service.model == "gpt-4o-mini"
    assert KEY not in repr(service)
    assert issubclass(OpenAILLMError, Exception)
