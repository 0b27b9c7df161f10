"""Outbound calls with answering-machine detection, end to end through the simulator.

The callpipe server dials through the fake Telnyx API (``DIAL_MODE=call_control``, AMD
asked for); the fake's simulated callee is a voicemail box, a person, a call screener, a
busy line or one that rings out (``Callees``), and it sends Telnyx's signed AMD webhooks
to the server's ``/webhooks/telnyx`` (the dial's ``webhook_url``). The bot is a small one
with :class:`VoicemailPolicy`: tones for its greeting and message, so what the far end
heard can be told apart by pitch and measured against the beep.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import pytest

from callpipe.pipeline.pipeline import Pipeline
from callpipe.pipeline.task import PipelineParams, PipelineRunner, PipelineTask
from callpipe.runner import RunnerArguments, create_telnyx_transport
from callpipe.server.app import create_app
from callpipe.server.background import BackgroundServer, free_port
from callpipe.server.settings import ServerSettings
from callpipe.sim.fake_api import FakeTelnyxSimulator, create_fake_telnyx_app
from callpipe.sim.fake_api.callees import SCREENING_QUESTION, Callees, piper_voice, voicemail_message
from callpipe.sim.fake_api.session import FakeCallSession
from callpipe.telephony import VoicemailPolicy
from callpipe.telnyx.webhooks import SIGNATURE_HEADER, TIMESTAMP_HEADER, generate_webhook_keypair
from tests.conftest import tone

SECRET = "cp-secret-voicemail-1"
API_KEY = "cp-api-key-voicemail-1"
TELNYX_KEY = "KEY-telnyx-voicemail-1"
OUR_NUMBER = "+15550002222"
BOX = "+15551230001"
PERSON = "+15551230002"
SCREENER = "+15551230003"
BUSY = "+15551230004"
RINGS_OUT = "+15551230005"

GREETING = tone(0.4, freq=330)
MESSAGE = tone(1.2, freq=550)
LINE = tone(1.0, freq=440)


async def wait_for(condition: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll ``condition`` (state lives on the servers' threads and loops)."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout}s")
        await asyncio.sleep(0.01)
    return value


@dataclass
class Served:
    """The callpipe server, the fake Telnyx API and its simulator."""

    server: BackgroundServer
    sim: FakeTelnyxSimulator
    policies: list[VoicemailPolicy] = field(default_factory=list)

    async def dial(self, number: str, amd: str | bool) -> str:
        async with httpx.AsyncClient(base_url=self.server.base_url, timeout=10) as http:
            response = await http.post(
                "/start",
                json={"phone_number": number, "amd": amd},
                headers={"Authorization": f"Bearer {API_KEY}"},
            )
        assert response.status_code == 200, response.text
        ccid: str = response.json()["call_control_id"]
        return ccid

    async def finished(self, ccid: str, timeout: float = 20.0) -> FakeCallSession:
        session = self.sim.sessions[ccid]
        await session.wait_finished(timeout)
        return session

    async def record(self, ccid: str, until: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """The call's record from the API, once ``until`` holds for it (the writer flushes every 0.5 s)."""
        async with httpx.AsyncClient(base_url=self.server.base_url, timeout=10) as http:
            deadline = time.monotonic() + 10
            while True:
                response = await http.get(
                    f"/api/calls/{ccid}", headers={"Authorization": f"Bearer {API_KEY}"}
                )
                if response.status_code == 200 and until(data := response.json()):
                    return data
                if time.monotonic() > deadline:
                    raise AssertionError(f"record of {ccid}: {response.status_code} {response.text[:500]}")
                await asyncio.sleep(0.1)


def _bot(
    policies: list[VoicemailPolicy], *, stt: bool = False, silent: bool = False
) -> Callable[[RunnerArguments], Any]:
    """A bot with the policy: tones for greeting, message and screening line; Whisper if ``stt``.

    ``silent``: a bot that says nothing at all (to a screener: it never answers).
    """

    async def bot(runner_args: RunnerArguments) -> None:
        transport = create_telnyx_transport(runner_args, vad=stt)
        speech = {} if silent else {"greeting": GREETING, "message": MESSAGE, "screening_line": LINE}
        policy = VoicemailPolicy.for_call(runner_args, **speech)
        policies.append(policy)
        stages: list[Any] = [transport.input(), policy, transport.output()]
        if stt:
            from callpipe.services.whisper import WhisperSTTService

            stages.insert(1, WhisperSTTService())
        task = PipelineTask(
            Pipeline(stages), params=PipelineParams(audio_in_sample_rate=8000, audio_out_sample_rate=8000)
        )
        await PipelineRunner().run(task)

    return bot


@contextmanager
def serve(
    monkeypatch: pytest.MonkeyPatch,
    callees: Callees,
    *,
    stt: bool = False,
    silent: bool = False,
    bot: Callable[[RunnerArguments], Any] | None = None,
) -> Iterator[Served]:
    """The fake Telnyx API with ``callees`` and the callpipe server with the policy bot."""
    signing_key, public_key = generate_webhook_keypair()
    sim = FakeTelnyxSimulator(
        callee_silence_secs=1.0, max_call_secs=25.0, webhook_private_key=signing_key, callees=callees
    )
    fake_app = create_fake_telnyx_app(TELNYX_KEY, simulator=sim)
    policies: list[VoicemailPolicy] = []
    port = free_port()
    with BackgroundServer(fake_app) as fake:
        monkeypatch.setenv("TELNYX_API_KEY", TELNYX_KEY)
        monkeypatch.setenv("TELNYX_API_BASE_URL", fake.base_url + "/v2")
        settings = ServerSettings(
            _env_file=None,  # type: ignore[call-arg]
            public_url=f"http://127.0.0.1:{port}",
            telnyx_public_key=public_key,
            callpipe_secret=SECRET,
            callpipe_api_key=API_KEY,
            telnyx_api_key=TELNYX_KEY,
            telnyx_api_base_url=fake.base_url + "/v2",
            telnyx_phone_number=OUR_NUMBER,
            dial_mode="call_control",
            telnyx_connection_id="conn-amd",
            max_call_secs=30.0,
        )
        with BackgroundServer(
            create_app(bot or _bot(policies, stt=stt, silent=silent), settings), port=port
        ) as server:
            yield Served(server, sim, policies)
            fake.stop()  # simulated callees hang up before the bot server goes
    assert sim.active_calls == 0


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ServerSettings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)


def _pitch_secs(pcm: bytes, freq: float, rate: int = 8000) -> float:
    """Seconds of ``pcm`` (20 ms frames) whose dominant frequency is ``freq`` (±30 Hz)."""
    samples = np.frombuffer(pcm, dtype=np.int16).astype(np.float32)
    n = 160
    frames = samples[: len(samples) // n * n].reshape(-1, n)
    spectrum = np.abs(np.fft.rfft(frames * np.hanning(n), axis=1))
    peak = np.argmax(spectrum, axis=1) * rate / n
    loud = np.sqrt(np.mean(frames**2, axis=1)) > 300
    return float(np.count_nonzero(loud & (np.abs(peak - freq) <= 30))) * 0.02


async def test_a_voicemail_box_gets_the_message_after_the_beep_then_the_bot_hangs_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with serve(monkeypatch, Callees(by_number={BOX: "voicemail"})) as served:
        ccid = await served.dial(BOX, "premium")
        session = await served.finished(ccid)
        plan = session.callee
        assert plan is not None and plan.kind == "voicemail"
        sent = [(event, result) for event, result, _ in plan.amd_sent]
        assert sent == [
            ("call.machine.premium.detection.ended", "machine"),
            ("call.machine.premium.greeting.ended", "beep_detected"),
        ]
        # The dial asked for AMD with our authenticated webhook URL; the webhooks were taken.
        dialled = session.call.params
        assert dialled["answering_machine_detection"] == "premium"
        assert dialled["webhook_url"] == f"{served.server.base_url}/webhooks/telnyx"
        amd_hooks = [w for w in served.sim.webhooks_for(ccid) if w.event_type.startswith("call.machine.")]
        assert [w.status_code for w in amd_hooks] == [200, 200]
        envelope = json.loads(amd_hooks[0].body)["data"]
        assert envelope["record_type"] == "event" and envelope["id"] and envelope["occurred_at"]
        payload = envelope["payload"]
        assert payload["result"] == "machine" and payload["call_control_id"] == ccid
        assert {"call_leg_id", "call_session_id", "connection_id", "client_state", "from", "to"} <= set(
            payload
        )
        assert payload["to"] == BOX and payload["from"] == OUR_NUMBER
        assert SIGNATURE_HEADER in amd_hooks[0].headers and TIMESTAMP_HEADER in amd_hooks[0].headers

        message = voicemail_message(plan, session.result)
        assert message is not None
        # Nothing was said over the greeting; the message came after the beep, whole.
        assert message.talked_over_greeting_secs == 0.0
        assert message.message_started_at is not None
        delay = message.message_started_at - message.beep_ended_at
        assert 0.0 <= delay < 0.8, delay
        assert _pitch_secs(message.audio, 550) >= 1.0
        # Then the bot hung up (through the API), not the box.
        assert session.call.hangup_source == "caller"
        hangups = [
            r
            for r in served.sim._state.requests_to(f"/v2/calls/{ccid}/actions/hangup")
            if r.status_code == 200
        ]  # type: ignore[union-attr]
        assert len(hangups) == 1

        record = await served.record(ccid, lambda r: r["end_reason"] != "in_progress")
    amd = record["amd"]
    assert amd["decision"] == "machine" and amd["mode"] == "premium"
    assert [r["result"] for r in amd["results"]] == ["machine", "beep_detected"]
    assert amd["first_result_ms"] <= amd["greeting_ended_ms"] <= amd["leave_ms"] <= amd["message_started_ms"]
    assert "greeted_ms" not in amd  # the greeting was never spoken
    assert record["end_reason"] == "bot_ended"
    kinds = [(e["type"], e["name"]) for e in record["events"]]
    assert ("webhook", "call.machine.premium.greeting.ended") in kinds
    [left] = [e for e in record["events"] if (e["type"], e["name"]) == ("amd", "leave_message")]
    assert left["data"]["reason"] == "greeting ended: beep_detected", left


async def test_a_person_is_greeted_as_soon_as_amd_says_human(monkeypatch: pytest.MonkeyPatch) -> None:
    with serve(monkeypatch, Callees(default="human", human_detect_secs=0.6, human_hello=True)) as served:
        ccid = await served.dial(PERSON, "detect")
        session = await served.finished(ccid)
        plan = session.callee
        assert plan is not None and [(e, r) for e, r, _ in plan.amd_sent] == [
            ("call.machine.detection.ended", "human")
        ]
        result = session.result
        assert result is not None and result.greeting_heard_at is not None
        assert [t.text for t in result.turns] == ["Hello?"]  # the person answered first
        # Held until the result, then at once: result sent -> greeting heard in well under 0.5 s.
        sent_at = plan.amd_sent[0][2]
        assert 0.0 < result.greeting_heard_at - sent_at < 0.5, result.greeting_heard_at - sent_at
        assert _pitch_secs(result.bot_track, 330) >= 0.3 and _pitch_secs(result.bot_track, 550) == 0.0
        record = await served.record(ccid, lambda r: r["end_reason"] != "in_progress")
    amd = record["amd"]
    assert amd["decision"] == "human" and amd["greeted_ms"] - amd["first_result_ms"] < 50


async def test_a_busy_line_and_one_that_rings_out_leave_records(monkeypatch: pytest.MonkeyPatch) -> None:
    callees = Callees(by_number={BUSY: "busy", RINGS_OUT: "no-answer"}, no_answer_after_secs=0.8)
    with serve(monkeypatch, callees) as served:
        busy, rings_out = await served.dial(BUSY, "detect"), await served.dial(RINGS_OUT, "detect")
        for ccid, cause in ((busy, "user_busy"), (rings_out, "timeout")):
            session = await served.finished(ccid)
            assert session.stream_url is None and session.call.hangup_cause == cause
            [hangup] = [w for w in served.sim.webhooks_for(ccid) if w.event_type == "call.hangup"]
            assert hangup.status_code == 200
        assert served.policies == []  # no stream, no bot
        busy_record = await served.record(busy, lambda r: r["end_reason"] != "in_progress")
        out_record = await served.record(rings_out, lambda r: r["end_reason"] != "in_progress")
    assert busy_record["end_reason"] == "busy" and busy_record["to"] == BUSY
    assert out_record["end_reason"] == "no_answer" and out_record["direction"] == "outbound"
    assert [e["name"] for e in busy_record["events"]] == ["call.hangup"]


async def test_a_call_screener_nobody_answers_asks_again_then_hangs_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    callees = Callees(by_number={SCREENER: "screening"}, screening_quiet_secs=0.6)
    with serve(monkeypatch, callees, silent=True) as served:
        ccid = await served.dial(SCREENER, "detect")
        session = await served.finished(ccid)
        plan, result = session.callee, session.result
        assert plan is not None and result is not None
        assert [t.text for t in result.turns] == [SCREENING_QUESTION]  # the person never came on
        assert len(result.nudges) == 1 and "connected" not in plan.times
        assert result.bot_audio_secs == 0.0
        assert result.closed_by == "caller"  # the screener (the simulated phone) hung up
        assert [(e, r) for e, r, _ in plan.amd_sent] == [("call.machine.detection.ended", "not_sure")]


@pytest.mark.slow
async def test_a_call_screener_is_answered_with_the_line_and_puts_the_person_through(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    voice = piper_voice()
    if voice is None:
        pytest.skip("needs the embedded Piper voice (callpipe[local]) for the screener's words")
    callees = Callees(by_number={SCREENER: "screening"}, voice=voice)
    with serve(monkeypatch, callees, stt=True) as served:
        ccid = await served.dial(SCREENER, "detect")
        session = await served.finished(ccid, timeout=40)
        plan, result = session.callee, session.result
        assert plan is not None and result is not None
        # The screener heard the bot's line after its question, then connected the person.
        question = next(t for t in result.turns if t.text == SCREENING_QUESTION)
        assert "connected" in plan.times, [t.text for t in result.turns]
        heard = result.bot_track[int((question.ended_at - result.connected_at) * 8000) * 2 :]
        assert _pitch_secs(heard, 440) >= 0.8
        record = await served.record(ccid, lambda r: r["end_reason"] != "in_progress")
    amd = record["amd"]
    assert amd["decision"] == "screened_human" and amd["screening_answers"] >= 1, amd
    assert amd["screening_ms"] <= amd["connected_ms"]
    names = [e["name"] for e in record["events"] if e["type"] == "amd"]
    assert "answer_screening" in names and names[-1] == "greet", names
    # The screener's words are the record's caller turns (transcribed; the bot's turn-taking never saw them).
    said = " ".join(t["text"] for t in record["turns"] if t["speaker"] == "caller").lower()
    assert "calling" in said, record["turns"]


@pytest.fixture
def offline_voice(monkeypatch: pytest.MonkeyPatch) -> Any:
    """The embedded voice, with no provider keys set: the built-in assistant runs offline."""
    voice = piper_voice()
    if voice is None:
        pytest.skip("needs the embedded models (callpipe[local])")
    for name in (
        "OPENAI_API_KEY",
        "OPENAI_BASE_URL",
        "DEEPGRAM_API_KEY",
        "CARTESIA_API_KEY",
        "ASSISTANT_MODE",
    ):
        monkeypatch.delenv(name, raising=False)
    return voice


@pytest.mark.slow
async def test_the_built_in_assistant_leaves_its_message_on_a_voicemail_box(
    monkeypatch: pytest.MonkeyPatch, offline_voice: Any
) -> None:
    voice = offline_voice
    from callpipe.services.assistant import AssistantConfig, bot

    expected = AssistantConfig().voicemail_text()
    with serve(monkeypatch, Callees(by_number={BOX: "voicemail"}, voice=voice), bot=bot) as served:
        ccid = await served.dial(BOX, "detect_beep")
        session = await served.finished(ccid, timeout=40)
        message = voicemail_message(session.callee, session.result)
        assert message is not None and message.message_started_at is not None
        # Silent through the box's greeting (it never answered it), speaking after the beep.
        assert message.talked_over_greeting_secs == 0.0
        assert 0.0 <= message.message_started_at - message.beep_ended_at < 1.5
        assert message.message_secs >= 3.0  # the whole message, spoken by the voice
        assert session.call.hangup_source == "caller"  # the bot hung up after it
        record = await served.record(ccid, lambda r: r["end_reason"] != "in_progress")
    assert record["amd"]["decision"] == "machine" and record["end_reason"] == "bot_ended"
    [bot_turn] = [t for t in record["turns"] if t["speaker"] == "bot"]
    assert bot_turn["text"] == expected


@pytest.mark.slow
async def test_the_built_in_assistant_greets_a_person_once_amd_says_human(
    monkeypatch: pytest.MonkeyPatch, offline_voice: Any
) -> None:
    voice = offline_voice
    from callpipe.services.assistant import bot

    callees = Callees(default="human", human_hello=True, human_detect_secs=0.8, voice=voice)
    with serve(monkeypatch, callees, bot=bot) as served:
        ccid = await served.dial(PERSON, "premium")
        session = await served.finished(ccid, timeout=40)
        plan, result = session.callee, session.result
        assert plan is not None and result is not None and result.greeting_heard_at is not None
        [(event, verdict, sent_at)] = plan.amd_sent
        assert (event, verdict) == ("call.machine.premium.detection.ended", "human_residence")
        # The LLM's greeting (held until the result, not started by the person's "Hello?").
        assert 0.0 < result.greeting_heard_at - sent_at < 2.0
        record = await served.record(ccid, lambda r: r["end_reason"] != "in_progress")
    assert record["amd"]["decision"] == "human"
    bot_turns = [t for t in record["turns"] if t["speaker"] == "bot"]
    assert len(bot_turns) == 1 and bot_turns[0]["text"], record["turns"]  # one greeting, no reply to "Hello?"
