"""The voicemail policy in the speech-to-speech assistant (``ASSISTANT_MODE=realtime``), end to end.

The built-in assistant dials through the fake Telnyx API with AMD; its model is the fake
OpenAI Realtime server. A voicemail box gets the message the model was asked to say,
after the beep, and the bot hangs up; a person is greeted once AMD says human. Until then
the model hears none of the callee's audio, so it cannot answer a machine's greeting.
"""

from __future__ import annotations

from typing import Any

import pytest

from callpipe.server.background import BackgroundServer
from callpipe.services import assistant
from callpipe.sim.fake_api.callees import Callees, voicemail_message
from callpipe.sim.fake_realtime import (
    FakeRealtimeReply,
    FakeRealtimeState,
    create_fake_realtime_app,
    tone_ulaw,
)
from tests.test_voicemail_calls import BOX, PERSON, _clean_env, _pitch_secs, serve

__all__ = ["_clean_env"]  # the env-cleaning fixture applies here too


def _realtime(monkeypatch: pytest.MonkeyPatch, fake: BackgroundServer) -> None:
    monkeypatch.setenv("ASSISTANT_MODE", "realtime")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-fake-rtvm")
    monkeypatch.setenv("OPENAI_BASE_URL", fake.base_url + "/v1")


def _asked(state: FakeRealtimeState) -> list[dict[str, Any]]:
    return [e for conn in state.connections for e in conn.events if e.get("type") == "response.create"]


async def test_a_voicemail_box_gets_the_models_message_after_the_beep_then_the_call_ends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    message_audio = tone_ulaw(1.2, freq=550.0)
    state = FakeRealtimeState(
        greeting=None, replies=[FakeRealtimeReply("Hello, please call back.", audio=message_audio)]
    )
    with BackgroundServer(create_fake_realtime_app(state)) as fake:
        _realtime(monkeypatch, fake)
        with serve(monkeypatch, Callees(by_number={BOX: "voicemail"}), bot=assistant.bot) as served:
            ccid = await served.dial(BOX, "premium")
            session = await served.finished(ccid)
            plan = session.callee
            assert plan is not None and plan.kind == "voicemail"
            message = voicemail_message(plan, session.result)
            assert message is not None
            # Nothing over the greeting (the model heard none of it); the message after the beep.
            assert message.talked_over_greeting_secs == 0.0
            assert message.message_started_at is not None
            delay = message.message_started_at - message.beep_ended_at
            assert 0.0 <= delay < 0.8, delay
            assert _pitch_secs(message.audio, 550) >= 1.0
            assert session.call.hangup_source == "caller"  # the bot hung up, not the box
            record = await served.record(ccid, lambda r: r["end_reason"] != "in_progress")
    conn = state.last
    assert conn.audio == b""  # the box's greeting never reached the model
    [asked] = _asked(state)  # one response: the message, not a greeting
    text = assistant.AssistantConfig().voicemail_text()
    assert text in asked["response"]["instructions"]
    amd = record["amd"]
    assert amd["decision"] == "machine" and amd["mode"] == "premium"
    assert amd["greeting_ended_ms"] <= amd["leave_ms"] <= amd["message_started_ms"]
    assert "greeted_ms" not in amd
    assert record["end_reason"] == "bot_ended"
    assert [e["name"] for e in record["events"] if e["type"] == "amd"] == ["leave_message"]


async def test_a_person_is_greeted_by_the_model_once_amd_says_human(monkeypatch: pytest.MonkeyPatch) -> None:
    state = FakeRealtimeState(greeting=FakeRealtimeReply("Hello", audio=tone_ulaw(0.4, freq=330.0)))
    callees = Callees(default="human", human_detect_secs=0.6, human_hello=True)
    with BackgroundServer(create_fake_realtime_app(state)) as fake:
        _realtime(monkeypatch, fake)
        with serve(monkeypatch, callees, bot=assistant.bot) as served:
            ccid = await served.dial(PERSON, "detect")
            session = await served.finished(ccid)
            plan, result = session.callee, session.result
            assert plan is not None and result is not None and result.greeting_heard_at is not None
            assert [t.text for t in result.turns][:1] == ["Hello?"]  # the person spoke first
            sent_at = plan.amd_sent[0][2]
            assert 0.0 < result.greeting_heard_at - sent_at < 0.5, result.greeting_heard_at - sent_at
            assert _pitch_secs(result.bot_track, 330) >= 0.3
            record = await served.record(ccid, lambda r: r["end_reason"] != "in_progress")
    greeting = _asked(state)[0]
    assert len(state.last.audio) > 8000  # once a person, the line reaches the model
    assert "Greet the caller" in greeting["response"]["instructions"]
    amd = record["amd"]
    assert amd["decision"] == "human" and amd["greeted_ms"] - amd["first_result_ms"] < 50
