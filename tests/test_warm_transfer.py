"""Warm transfer, collect_digits and Telnyx-side actions through the simulator and a real server.

A caller rings the bot through the fake Telnyx API (the TeXML is fetched, signed, from the
server; the stream carries the call), the bot warm-transfers it to a simulated agent over
the fake's Call Control API, and the agent's webhooks come back, signed, to the server's
``/webhooks/telnyx``, which routes them to the caller's call by their ``client_state``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from callpipe.pipeline.frames import (
    EndFrame,
    OutputAudioRawFrame,
    TTSAudioRawFrame,
    TTSSpeakFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
)
from callpipe.pipeline.pipeline import Pipeline
from callpipe.pipeline.task import PipelineParams, PipelineRunner, PipelineTask
from callpipe.records.model import CallRecord
from callpipe.records.sink import MemorySink
from callpipe.runner import RunnerArguments, create_telnyx_transport
from callpipe.server.app import create_app
from callpipe.server.background import BackgroundServer, free_port
from callpipe.server.settings import ServerSettings
from callpipe.services.call_policy import TransferPolicy
from callpipe.services.call_tools import SORRY, CallTools
from callpipe.services.llm import (
    FunctionCallParams,
    LLMContext,
    LLMContextAggregatorPair,
    LLMRunFrame,
    TelephonyTools,
)
from callpipe.services.openai import OpenAILLMService
from callpipe.services.telnyx_call import TelnyxCall
from callpipe.services.warm_transfer import WarmTransferConfig, WarmTransferResult, warm_transfer
from callpipe.sim.bots import CannedReplyProcessor
from callpipe.sim.caller import CallerTurn
from callpipe.sim.fake_api import FakeTelnyxSimulator, FakeTelnyxState, create_fake_telnyx_app
from callpipe.sim.fake_api.agent import FakeAgent
from callpipe.sim.fake_api.session import FakeCallSession
from callpipe.sim.fake_openai import FakeToolCall, create_fake_openai_app
from callpipe.telnyx.api import TelnyxClient
from callpipe.transports.digits import collect_digits
from tests.helpers import Recorder
from tests.sim_support import on_fake_loop, probe_loop

API_KEY = "KEY-warm-transfer"
SECRET = "warm-transfer-secret-0123456789"
TEXML_SECRET = "texml-path-secret-xfer"
AGENT = "+15550200001"
SUMMARY = "Maria Lopez wants a refund for order 1234."


def tone(secs: float, freq: float = 440.0, rate: int = 8000) -> bytes:
    t = np.arange(int(secs * rate)) / rate
    return (np.sin(2 * np.pi * freq * t) * 0.25 * 32767).astype(np.int16).tobytes()


@dataclass
class World:
    """The fake Telnyx API, the server, and what the bot saw."""

    fake: BackgroundServer
    state: FakeTelnyxState
    sim: FakeTelnyxSimulator
    server: BackgroundServer
    sink: MemorySink
    mode: dict[str, Any]
    results: list[Any] = field(default_factory=list)

    async def call(self, turns: list[CallerTurn] | None = None) -> FakeCallSession:
        url = f"{self.server.base_url}/texml/{TEXML_SECRET}"
        call = await on_fake_loop(self.fake, self.sim.place_inbound_call(url, turns=turns or []))
        return self.sim.sessions[call.call_control_id]

    async def record(self, ccid: str, timeout: float = 20.0) -> CallRecord:
        async with asyncio.timeout(timeout):
            while ccid not in self.sink.finished:  # noqa: ASYNC110 - the sink has no waiter
                await asyncio.sleep(0.02)
        return self.sink.finished[ccid]


async def _llm_bot(
    runner_args: RunnerArguments, mode: dict[str, Any], results: list[Any], fake_url: str
) -> None:
    """The LLM decides to warm-transfer (the fake OpenAI's script); CallTools does it."""
    transport = create_telnyx_transport(runner_args, vad=False)
    ccid = runner_args.call_data["call_control_id"]
    context = LLMContext(
        messages=[{"role": "system", "content": "You are a receptionist."}], tools=CallTools.schemas()
    )
    aggregators = LLMContextAggregatorPair(context)
    llm = OpenAILLMService(api_key="sk-xfer", base_url=mode["openai"])
    probe = Recorder(name="probe")
    task = PipelineTask(
        Pipeline([transport.input(), aggregators.user(), llm, probe, transport.output()]),
        params=PipelineParams(audio_in_sample_rate=8000, audio_out_sample_rate=8000),
    )
    config = WarmTransferConfig(
        connection_id="conn-xfer",
        from_number="+15550100000",
        webhook_url=mode["webhook_url"],
        decision_secs=0.3,
    )
    async with TelnyxClient(API_KEY, base_url=fake_url, max_retries=0) as client:
        tools = CallTools(
            call_control_id=ccid, client=client, transfer_policy=TransferPolicy.parse(AGENT), config=config
        )
        tools.register(llm)

        async def watch() -> None:
            while not probe.seen(TTSSpeakFrame):  # noqa: ASYNC110 - a recorder has no waiter
                await asyncio.sleep(0.02)
            results.append((probe.seen(TTSSpeakFrame)[0].text, len(probe.seen(OutputAudioRawFrame)), context))
            await task.queue_frame(EndFrame())

        watcher = asyncio.create_task(watch())
        await task.queue_frame(LLMRunFrame())
        try:
            await PipelineRunner().run(task)
        finally:
            watcher.cancel()


def _bot(world_mode: dict[str, Any], results: list[Any], fake_url: str, webhook_url: str) -> Any:
    async def bot(runner_args: RunnerArguments) -> None:
        if world_mode["kind"] == "llm":
            await _llm_bot(runner_args, dict(world_mode, webhook_url=webhook_url), results, fake_url)
            return
        transport = create_telnyx_transport(runner_args, vad=False)
        greeter = CannedReplyProcessor(tone(0.2), 8000, greeting=tone(0.3), hang_up_digit=None)
        task = PipelineTask(
            Pipeline([transport.input(), greeter, transport.output()]),
            params=PipelineParams(audio_in_sample_rate=8000, audio_out_sample_rate=8000),
        )
        ccid = runner_args.call_data["call_control_id"]

        async def say_and_end(secs: float) -> None:
            await task.queue_frames(
                [
                    TTSStartedFrame(),
                    TTSAudioRawFrame(audio=tone(secs, 660.0), sample_rate=8000),
                    TTSStoppedFrame(),
                ]
            )
            await task.queue_frame(EndFrame())

        async def act() -> None:
            await asyncio.sleep(0.4)  # after the greeting
            if world_mode["kind"] == "cold":
                async with TelnyxClient(API_KEY, base_url=fake_url, max_retries=0) as client:
                    tools = TelephonyTools(
                        call_control_id=ccid, client=client, transfer_policy=TransferPolicy.parse("+1555020*")
                    )
                    args = FunctionCallParams("transfer_call", "call-1", {"to": AGENT}, None, None)  # type: ignore[arg-type]
                    results.append(await tools.transfer_call(args))
                return
            if world_mode["kind"] == "digits":
                result = await collect_digits(transport, max_digits=6, terminator="#", timeout=2.0)
                results.append(result)
                runner_args.record.set(account=result.digits)
                await say_and_end(0.2)
                return
            config = WarmTransferConfig(
                connection_id="conn-xfer",
                from_number="+15550100000",
                webhook_url=webhook_url,
                answer_timeout_secs=world_mode.get("answer_secs", 3.0),
                decision_secs=0.3,
                hold_audio_url="https://media.example.test/hold.mp3",
            )
            async with TelnyxClient(API_KEY, base_url=fake_url, max_retries=0) as client:
                if world_mode.get("record"):  # the bot API
                    call = TelnyxCall.of(runner_args, client)
                    await call.record_start(format="mp3", channels="dual", play_beep=False)
                    await call.suppression_start(direction="inbound")
                outcome: WarmTransferResult = await warm_transfer(
                    ccid,
                    world_mode.get("to", AGENT),
                    SUMMARY,
                    client=client,
                    config=config,
                    policy=TransferPolicy.parse("+1555020*"),
                )
            results.append(outcome)
            if not outcome.bridged:
                await say_and_end(0.5)  # "sorry, nobody could take the call"

        runner = asyncio.create_task(act())
        try:
            await PipelineRunner().run(task)
        finally:
            runner.cancel()

    return bot


@pytest.fixture
def world(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    port = free_port()
    webhook_url = f"http://127.0.0.1:{port}/webhooks/telnyx"
    sim = FakeTelnyxSimulator(webhook_url=webhook_url, callee_silence_secs=30.0, max_call_secs=30.0)
    fake_app = create_fake_telnyx_app(API_KEY, simulator=sim)
    probe_loop(fake_app)
    mode: dict[str, Any] = {"kind": "transfer"}
    results: list[Any] = []
    with BackgroundServer(fake_app) as fake:
        # The bot's serializer hangs calls up through the (fake) API when its pipeline ends,
        # as in production: a transferred caller must survive that.
        monkeypatch.setenv("TELNYX_API_KEY", API_KEY)
        monkeypatch.setenv("TELNYX_API_BASE_URL", fake.base_url + "/v2")
        settings = ServerSettings(  # type: ignore[call-arg]
            _env_file=None,
            public_url=f"http://127.0.0.1:{port}",
            callpipe_secret=SECRET,
            texml_path_secret=TEXML_SECRET,
            telnyx_public_key=sim.webhook_public_key,
            telnyx_api_key=API_KEY,
            telnyx_api_base_url=fake.base_url + "/v2",
            data_dir=str(tmp_path / "data"),
            recording=False,
            **getattr(request, "param", {}),  # more settings, from @parametrize(..., indirect=True)
        )
        app = create_app(_bot(mode, results, fake.base_url + "/v2", webhook_url), settings)
        sink = MemorySink()
        app.state.callpipe.record_sink = sink
        with BackgroundServer(app, port=port) as server:
            yield World(fake, fake_app.state.telnyx, sim, server, sink, mode, results)


async def _wait(condition: Any, timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110 - state lives on other threads' loops
            await asyncio.sleep(0.02)


@pytest.mark.slow
async def test_a_warm_transfer_bridges_the_agent_and_keeps_the_caller_up(world: World) -> None:
    agent = world.sim.agents[AGENT] = FakeAgent(press="1", hang_up_after_bridge_secs=1.5)
    session = await world.call()
    caller = session.call
    record = await world.record(caller.call_control_id)

    result = world.results[0]
    assert result.outcome == "bridged", result
    agent_ccid = result.agent_call_control_id
    assert agent.heard and agent.heard[0].startswith(SUMMARY)  # the agent alone heard the summary
    assert "speak" not in [a["action"] for a in caller.actions]
    assert [a["action"] for a in caller.actions] == [
        "playback_start",
        "playback_stop",
        "bridge",
        "streaming_stop",
    ]
    assert caller.actions[0]["loop"] == "infinity"
    assert caller.bridged_with == agent_ccid
    # The bot left; the caller is still on the line with the agent.
    await _wait(lambda: session.stream_stopped and session.result is not None)
    assert caller.is_alive
    assert session.result is not None and session.result.closed_by == "telnyx"
    assert record.end_reason == "transferred" and record.hangup_by == "bot"
    assert record.transfer is not None
    assert {k: record.transfer[k] for k in ("type", "outcome", "to", "caller_leg", "agent_leg")} == {
        "type": "warm",
        "outcome": "bridged",
        "to": AGENT,
        "caller_leg": caller.call_control_id,
        "agent_leg": agent_ccid,
    }
    legs = [(e.name, e.data.get("call_control_id")) for e in record.events if e.type == "transfer_leg"]
    assert ("call.answered", agent_ccid) in legs and ("call.dtmf.received", agent_ccid) in legs
    steps = [e.name for e in record.events if e.type == "transfer"]
    assert steps == ["agent_dialled", "agent_answered", "bridged", "bridged"]  # the steps, then the outcome

    # Telnyx sent call.bridged for both legs.
    def bridged() -> list[str]:
        return sorted(w.call_control_id for w in world.sim.webhooks if w.event_type == "call.bridged")

    await _wait(lambda: len(bridged()) == 2)
    assert bridged() == sorted([caller.call_control_id, agent_ccid])

    # ... until the agent hangs up: then both legs end.
    await _wait(lambda: not caller.is_alive)
    agent_call = world.state.calls[agent_ccid]
    assert agent_call.hangup_source == "callee" and agent_call.ended_at is not None
    assert caller.ended_at is not None and caller.ended_at >= agent_call.ended_at
    assert caller.ended_at - record.ended_at > 1.0  # up well after the bot had left
    # The bot never hung the transferred caller up.
    assert not world.state.requests_to(f"/v2/calls/{caller.call_control_id}/actions/hangup")


@pytest.mark.slow
async def test_a_declined_transfer_returns_the_caller_to_the_bot(world: World) -> None:
    world.sim.agents[AGENT] = FakeAgent(press="2")
    session = await world.call()
    record = await world.record(session.call.call_control_id)
    result = world.results[0]
    assert result.outcome == "declined" and "pressed 2" in result.reason
    agent_call = world.state.calls[result.agent_call_control_id]
    assert not agent_call.is_alive and agent_call.hangup_source == "caller"  # we hung the agent leg up
    assert [a["action"] for a in session.call.actions] == ["playback_start", "playback_stop"]
    assert session.call.bridged_with is None
    # The bot came back and spoke to the caller (660 Hz "sorry") before ending.
    assert session.result is not None
    assert session.result.bot_audio_secs > 0.3 + 0.5 - 0.1
    assert record.transfer is not None and record.transfer["outcome"] == "declined"
    assert record.end_reason == "bot_ended"


@pytest.mark.slow
async def test_agent_no_answer_a_machine_and_refused_destinations(world: World) -> None:
    world.sim.agents[AGENT] = FakeAgent(answer=False)
    world.mode["answer_secs"] = 1.0
    session = await world.call()
    record = await world.record(session.call.call_control_id)
    assert world.results[0].outcome == "no_answer"
    assert record.transfer is not None and record.transfer["outcome"] == "no_answer"
    agent_call = world.state.calls[world.results[0].agent_call_control_id]
    assert agent_call.hangup_cause == "timeout" and agent_call.answered_at is None

    world.sim.agents[AGENT] = FakeAgent(machine=True)  # a voicemail picks up
    session = await world.call()
    record = await world.record(session.call.call_control_id)
    assert world.results[1].outcome == "machine" and record.transfer is not None
    assert record.transfer["outcome"] == "machine"
    machine_leg = world.state.calls[world.results[1].agent_call_control_id]
    assert machine_leg.params["answering_machine_detection"] == "detect"
    assert not machine_leg.is_alive and machine_leg.hangup_source == "caller"  # we hung it up
    world.results.pop()

    world.mode["to"] = "+19005550100"  # premium rate: not on the allowlist
    dials = len(world.state.requests_to("/v2/calls", "POST"))
    session = await world.call()
    record = await world.record(session.call.call_control_id)
    assert world.results[1].outcome == "refused"
    assert len(world.state.requests_to("/v2/calls", "POST")) == dials  # nothing was dialled
    assert record.transfer is not None and record.transfer["outcome"] == "refused"


@pytest.mark.slow
async def test_collect_digits_and_call_actions_through_a_call(world: World) -> None:
    world.mode["kind"] = "digits"
    session = await world.call([CallerTurn(dtmf="4821#", pause_secs=0.6, wait_for_bot=False)])
    record = await world.record(session.call.call_control_id)
    result = world.results[0]
    assert (result.digits, result.reason) == ("4821", "terminator")
    assert record.custom["account"] == "4821"
    digits = [e for e in record.events if e.type == "digits"]
    assert digits and digits[0].data == {"digits": "4821", "reason": "terminator"}

    # Telnyx-side recording and noise suppression reach the fake with Telnyx's bodies.
    world.mode.update(kind="transfer", record=True)
    world.sim.agents[AGENT] = FakeAgent(press="2")
    session = await world.call()
    await world.record(session.call.call_control_id)
    start = world.state.requests_to(f"/v2/calls/{session.call.call_control_id}/actions/record_start")
    assert start and {k: start[0].json[k] for k in ("format", "channels", "play_beep")} == {
        "format": "mp3",
        "channels": "dual",
        "play_beep": False,
    }
    suppression = world.state.requests_to(
        f"/v2/calls/{session.call.call_control_id}/actions/suppression_start"
    )
    assert suppression and suppression[0].json["direction"] == "inbound"
    record = await world.record(session.call.call_control_id)
    actions = [(e.name, e.data) for e in record.events if e.type == "action"]
    assert actions == [
        ("record_start", {"format": "mp3", "channels": "dual", "play_beep": False}),
        ("suppression_start", {"direction": "inbound"}),
    ]


@pytest.mark.slow
@pytest.mark.parametrize(
    "world",
    [{"telnyx_recording": "wav", "telnyx_recording_channels": "dual", "telnyx_noise_suppression": "both"}],
    indirect=True,
)
async def test_settings_start_recording_and_noise_suppression_on_every_call(world: World) -> None:
    world.mode["kind"] = "digits"
    session = await world.call([CallerTurn(dtmf="#", pause_secs=0.6, wait_for_bot=False)])
    ccid = session.call.call_control_id
    record = await world.record(ccid)
    start = world.state.requests_to(f"/v2/calls/{ccid}/actions/record_start")
    assert len(start) == 1 and (start[0].json["format"], start[0].json["channels"]) == ("wav", "dual")
    suppression = world.state.requests_to(f"/v2/calls/{ccid}/actions/suppression_start")
    assert len(suppression) == 1 and suppression[0].json["direction"] == "both"
    assert [e.name for e in record.events if e.type == "action"] == ["record_start", "suppression_start"]


@pytest.mark.slow
async def test_a_cold_transfer_of_a_texml_call_stays_up_until_the_agent_hangs_up(world: World) -> None:
    """pipecat-ai/docs#986: a trailing <Pause> ended transferred calls. callpipe's TeXML has
    none, the transfer keeps the call up when the bot's pipeline ends, and the caller stays
    with the agent until the agent hangs up."""
    world.mode["kind"] = "cold"
    world.sim.agents[AGENT] = FakeAgent(hang_up_after_bridge_secs=1.5)
    session = await world.call()
    caller = session.call
    record = await world.record(caller.call_control_id)
    assert session.texml is not None and session.texml.verbs_after_stream == ()  # no <Pause> after the stream
    assert world.results[0] == {"status": "transferring", "to": AGENT}
    assert record.end_reason == "transferred"
    assert caller.is_alive and caller.bridged_with is not None  # the bot left, the caller did not
    await _wait(lambda: not caller.is_alive)
    agent_call = world.state.calls[caller.bridged_with]
    assert agent_call.ended_at is not None and caller.ended_at is not None
    assert caller.ended_at >= agent_call.ended_at and caller.ended_at - record.ended_at > 1.0
    assert not world.state.requests_to(f"/v2/calls/{caller.call_control_id}/actions/hangup")


@pytest.mark.slow
async def test_the_llm_tool_holds_the_caller_and_says_when_the_agent_declines(world: World) -> None:
    def script(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> list[Any]:
        if messages[-1]["role"] == "system":
            return [
                "Please hold while I connect you.",
                FakeToolCall("warm_transfer", {"to": AGENT, "summary": SUMMARY}),
            ]
        return []

    world.sim.agents[AGENT] = agent = FakeAgent(press="2", answer_after_secs=1.0)
    with BackgroundServer(create_fake_openai_app("sk-xfer", script=script)) as openai:
        world.mode.update(kind="llm", openai=openai.base_url + "/v1")
        session = await world.call()
        record = await world.record(session.call.call_control_id)
    said, hold_frames, context = world.results[0]
    assert said == SORRY["declined"]
    assert hold_frames >= 1  # the bot's own hold tone played while the agent was dialled
    assert agent.heard and agent.heard[0].startswith(SUMMARY)
    assert "did not go through" in context.messages[-1]["content"]
    assert record.transfer is not None and record.transfer["outcome"] == "declined"
    tools = [c.name for t in record.turns for c in t.tool_calls]
    assert "warm_transfer" in tools
