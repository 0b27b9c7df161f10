"""The voicemail policy's state machine and the simulated callees' AMD shapes, without sockets."""

from __future__ import annotations

import pytest

from callpipe.pipeline.frames import (
    AnsweringMachineDetectionFrame,
    EndFrame,
    EndTaskFrame,
    Frame,
    StartFrame,
    TranscriptionFrame,
    TTSPrefetchFrame,
    TTSSpeakFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from callpipe.pipeline.processor import FrameDirection, FrameProcessor
from callpipe.sim.fake_api.callees import Callees, amd_events
from callpipe.telephony import VoicemailPolicy
from callpipe.telephony.amd import Act, AmdConfig, AmdPolicy, AmdState, is_screening_question


def policy(mode: str | None = "detect_beep", **options: object) -> AmdPolicy:
    return AmdPolicy(AmdConfig(mode=mode, **options), started_at=100.0)  # type: ignore[arg-type]


def kinds(acts: list[Act]) -> list[str]:
    return [a.kind for a in acts]


def test_without_amd_the_greeting_goes_at_once() -> None:
    p = policy(None)
    assert kinds(p.start(100.0)) == ["greet"]
    assert p.state is AmdState.HUMAN and p.decision == "no_amd" and p.deadline is None
    # Transcripts reach the bot's turn-taking.
    assert p.on_transcript("I'd like to book a cleaning", 101.0) == ([], True)


@pytest.mark.parametrize("result", ["human", "human_residence", "human_business", "not_sure", "silence"])
def test_a_person_or_an_unsure_result_is_greeted_at_once(result: str) -> None:
    p = policy("premium")
    assert p.start(100.0) == [] and p.deadline == pytest.approx(104.0)
    assert p.on_transcript("Hello?", 100.5) == ([], False)  # held until decided
    assert kinds(p.on_result("call.machine.premium.detection.ended", result, 101.2)) == ["greet"]
    assert p.state is AmdState.HUMAN and p.deadline is None
    summary = p.summary()
    assert summary["first_result_ms"] == 1200 and summary["greeted_ms"] == 1200
    # A late machine verdict changes nothing once the person was greeted.
    assert p.on_result("call.machine.detection.ended", "machine", 102.0) == []
    assert p.state is AmdState.HUMAN


def test_a_hello_spoken_before_the_decision_is_answered_by_the_greeting_alone() -> None:
    p = policy("premium")
    p.start(100.0)
    p.on_caller_started(100.2)  # "Hello?" on pick-up ...
    assert kinds(p.on_result("call.machine.premium.detection.ended", "human_residence", 100.8)) == ["greet"]
    # ... transcribed after the result: the greeting answers it, no reply of its own.
    assert p.on_transcript("Hello?", 101.1, spoken_at=100.2) == ([], False)
    # What the person says after the decision reaches the conversation.
    assert p.on_transcript("I need to move my appointment", 103.0, spoken_at=102.0) == ([], True)


def test_no_result_in_time_greets_as_a_person() -> None:
    p = policy("detect")
    p.start(100.0)
    assert p.on_tick(103.9) == []
    assert kinds(p.on_tick(104.0)) == ["greet"] and p.decision == "timeout"


def test_a_machine_gets_the_message_at_the_beep_then_the_call_ends() -> None:
    p = policy("detect_beep")
    p.start(100.0)
    assert p.on_result("call.machine.detection.ended", "machine", 101.5) == []
    assert p.state is AmdState.MACHINE and p.decision == "machine"
    # Without voice activity known, only the beep event or the timeout ends the wait.
    assert p.deadline == pytest.approx(121.5)
    assert p.on_transcript("Hi, you've reached Alex", 102.0) == ([], False)
    acts = p.on_result("call.machine.greeting.ended", "beep_detected", 103.0)
    assert acts == [Act("leave_message", "greeting ended: beep_detected")]
    assert p.state is AmdState.LEAVING
    p.on_message_started(103.1)
    s = p.summary()
    assert (s["decided_ms"], s["greeting_ended_ms"], s["leave_ms"], s["message_started_ms"]) == (
        1500,
        3000,
        3000,
        3100,
    )
    assert [r["result"] for r in s["results"]] == ["machine", "beep_detected"]


def test_a_box_without_a_beep_is_left_the_message_after_its_silence_or_the_timeout() -> None:
    p = policy("detect")  # "detect" never sends a greeting-end event
    p.start(100.0)
    p.on_result("call.machine.detection.ended", "machine", 101.0)
    p.on_caller_started(101.1)
    assert p.deadline == pytest.approx(121.0)  # talking: bounded by the greeting timeout
    p.on_caller_stopped(102.5)
    assert p.deadline == pytest.approx(103.5)  # one second of quiet ends the greeting
    p.on_caller_started(103.0)  # ...unless it goes on
    p.on_caller_stopped(104.0)
    assert p.on_tick(104.9) == []
    assert p.on_tick(105.0) == [Act("leave_message", "silence")]
    # A box that never stops talking still gets the message at the greeting timeout.
    q = policy("premium", greeting_timeout_secs=10.0)
    q.start(100.0)
    q.on_result("call.machine.premium.detection.ended", "machine", 101.0)
    q.on_caller_started(101.2)
    assert q.on_tick(111.0) == [Act("leave_message", "greeting timeout")]


def test_a_greeting_end_before_any_detection_still_means_a_machine() -> None:
    p = policy("greeting_end")
    p.start(100.0)
    assert kinds(p.on_result("call.machine.greeting.ended", "ended", 102.0)) == ["leave_message"]
    assert p.decision == "machine"


def test_without_a_message_a_machine_is_hung_up_on_and_a_fax_at_once() -> None:
    p = policy("detect_beep", has_message=False)
    p.start(100.0)
    p.on_result("call.machine.detection.ended", "machine", 101.0)
    assert kinds(p.on_result("call.machine.greeting.ended", "beep_detected", 102.0)) == ["hang_up"]
    assert p.state is AmdState.DONE
    fax = policy("premium")
    fax.start(100.0)
    assert kinds(fax.on_result("call.machine.premium.detection.ended", "fax_detected", 101.0)) == ["hang_up"]
    assert fax.decision == "fax"


def test_a_screener_is_answered_with_the_line_then_the_person_is_greeted() -> None:
    p = policy("detect")
    p.start(100.0)
    acts, passes = p.on_transcript("Hi, who is calling and why?", 101.0)
    assert kinds(acts) == ["answer_screening"] and not passes
    assert p.state is AmdState.SCREENING and p.deadline is None
    # The AMD result that follows does not greet the screener.
    assert p.on_result("call.machine.detection.ended", "not_sure", 101.5) == []
    acts, passes = p.on_transcript("Please say your name and why you are calling.", 103.0)
    assert kinds(acts) == ["answer_screening"] and p.screening_answers == 2
    assert p.on_transcript("Say your name again", 104.0) == ([], False)  # at most twice
    acts, passes = p.on_transcript("Hello? This is Alex.", 106.0)
    assert kinds(acts) == ["greet"] and not passes
    assert p.state is AmdState.HUMAN and p.decision == "screened_human"
    assert p.summary()["connected_ms"] == 6000


def test_a_screener_after_the_greeting_is_still_answered() -> None:
    p = policy("detect")
    p.start(100.0)
    p.on_result("call.machine.detection.ended", "human", 100.8)
    assert p.on_transcript("Who's calling, please?", 101.5) == ([], True)  # a person may ask that
    acts, passes = p.on_transcript("Please say your name and the reason for your call.", 102.0)
    assert kinds(acts) == ["answer_screening"] and not passes
    assert kinds(p.on_transcript("Hi, this is Alex", 104.0)[0]) == ["greet"] and p.greeted == 2


def test_a_screener_taken_for_a_machine_is_answered_not_left_a_message() -> None:
    p = policy("detect")
    p.start(100.0)
    p.on_result("call.machine.detection.ended", "machine", 102.0)
    acts, _ = p.on_transcript("Who is calling and why?", 102.5)
    assert kinds(acts) == ["answer_screening"] and p.state is AmdState.SCREENING and p.deadline is None
    assert p.on_tick(130.0) == []


def test_screening_questions() -> None:
    for text in (
        "Hi, who is calling and why?",
        "The person you're calling is using a screening service.",
        "Please state your name and the reason for your call.",
        "Who’s calling?",
        "What is this regarding?",
    ):
        assert is_screening_question(text), text
    for text in ("Hello?", "Yes, this is Alex speaking", "I'm calling about the bill"):
        assert not is_screening_question(text), text


def test_fake_amd_webhook_shapes_per_mode() -> None:
    assert amd_events("detect", "voicemail") == ([("call.machine.detection.ended", "machine")], [])
    assert amd_events("detect", "human") == ([("call.machine.detection.ended", "human")], [])
    assert amd_events("detect_beep", "voicemail") == (
        [("call.machine.detection.ended", "machine")],
        [("call.machine.greeting.ended", "beep_detected")],
    )
    assert amd_events("detect_beep", "voicemail", beep_heard=False)[1] == []
    assert amd_events("greeting_end", "voicemail", beep_heard=False)[1] == [
        ("call.machine.greeting.ended", "ended")
    ]
    assert amd_events("premium", "voicemail") == (
        [("call.machine.premium.detection.ended", "machine")],
        [("call.machine.premium.greeting.ended", "beep_detected")],
    )
    assert amd_events("premium", "human") == (
        [("call.machine.premium.detection.ended", "human_residence")],
        [],
    )
    assert amd_events("premium", "screening")[0] == [("call.machine.premium.detection.ended", "not_sure")]
    assert amd_events("disabled", "voicemail") == ([], [])


def test_callees_parse_numbers_and_refuse_unknown_kinds() -> None:
    callees = Callees.parse(["+15551230001=voicemail", "+15551230002=busy"], default="screening")
    assert callees.kind_for("+15551230001") == "voicemail" and callees.kind_for("+15550000000") == "screening"
    with pytest.raises(ValueError, match="NUMBER=KIND"):
        Callees.parse(["+15551230001"])
    with pytest.raises(ValueError, match="not one of"):
        Callees.parse(["+15551230001=robot"])


def test_fake_telnyx_cli_refuses_a_malformed_callee(capsys: pytest.CaptureFixture[str]) -> None:
    from callpipe.cli import main

    with pytest.raises(SystemExit, match="NUMBER=KIND"):
        main(["fake-telnyx", "--port", "0", "--callee", "+15551230001"])
    with pytest.raises(SystemExit):
        main(["fake-telnyx", "--port", "0", "--default-callee", "robot"])
    assert "invalid choice" in capsys.readouterr().err


class _Collect(FrameProcessor):
    """Keeps what reaches it, in either direction."""

    def __init__(self) -> None:
        super().__init__()
        self.frames: list[Frame] = []

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        self.frames.append(frame)


def _policy_between(amd: str | None, **kwargs: object) -> tuple[VoicemailPolicy, _Collect, _Collect]:
    up, policy, down = _Collect(), VoicemailPolicy(amd=amd, **kwargs), _Collect()  # type: ignore[arg-type]
    up.link(policy)
    policy.link(down)
    return policy, up, down


async def test_the_processor_holds_everything_from_a_machine_and_leaves_the_message() -> None:
    policy, up, down = _policy_between("detect_beep", greeting="Hello!", message="Please call back.")
    await policy.queue_frame(StartFrame())
    for frame in (
        UserStartedSpeakingFrame(),
        TranscriptionFrame(text="Hi, you've reached Alex, leave a message"),
        TTSSpeakFrame("Sorry, could you say that again?"),  # e.g. Whisper overloaded
        UserStoppedSpeakingFrame(),
    ):
        await policy.queue_frame(frame)
    assert [type(f) for f in down.frames] == [StartFrame]
    await policy.queue_frame(
        AnsweringMachineDetectionFrame(result="machine", event_type="call.machine.detection.ended")
    )
    assert isinstance(down.frames[1], TTSPrefetchFrame) and down.frames[1].text == "Please call back."
    end = AnsweringMachineDetectionFrame(result="beep_detected", event_type="call.machine.greeting.ended")
    await policy.queue_frame(end)
    spoken = [f.text for f in down.frames if isinstance(f, TTSSpeakFrame)]
    assert spoken == ["Please call back."]  # not the greeting, not the STT's line
    assert [type(f) for f in up.frames] == [EndTaskFrame]
    assert policy.state is AmdState.LEAVING
    await policy.queue_frame(EndFrame())


async def test_the_processor_greets_a_person_once_and_then_passes_everything() -> None:
    policy, _, down = _policy_between("detect", greeting="Hello!", message="Bye.")
    await policy.queue_frame(StartFrame())
    await policy.queue_frame(
        AnsweringMachineDetectionFrame(result="human", event_type="call.machine.detection.ended")
    )
    await policy.queue_frame(TranscriptionFrame(text="Hi, who's this?"))  # a person asking, not a screener
    # Greeted once; the person's "who's this?" reaches the conversation (not the screening line).
    assert [f.text for f in down.frames if isinstance(f, TTSSpeakFrame)] == ["Hello!"]
    assert [f.text for f in down.frames if isinstance(f, TranscriptionFrame)] == ["Hi, who's this?"]
    assert policy.state is AmdState.HUMAN
    await policy.queue_frame(EndFrame())


async def test_the_processor_drops_a_hello_from_before_the_decision_transcribed_after_it() -> None:
    policy, _, down = _policy_between("premium", greeting="Hello!", message="Bye.")
    await policy.queue_frame(StartFrame())
    await policy.queue_frame(UserStartedSpeakingFrame())  # the person's "Hello?" on pick-up
    await policy.queue_frame(
        AnsweringMachineDetectionFrame(
            result="human_residence", event_type="call.machine.premium.detection.ended"
        )
    )
    await policy.queue_frame(UserStoppedSpeakingFrame())
    await policy.queue_frame(TranscriptionFrame(text="Hello?"))  # the STT's final, after the result
    await policy.queue_frame(UserStartedSpeakingFrame())
    await policy.queue_frame(TranscriptionFrame(text="I need to move my appointment"))
    assert [f.text for f in down.frames if isinstance(f, TTSSpeakFrame)] == ["Hello!"]
    assert [f.text for f in down.frames if isinstance(f, TranscriptionFrame)] == [
        "I need to move my appointment"
    ]
    await policy.queue_frame(EndFrame())


async def test_without_amd_the_processor_greets_at_start_and_passes_through() -> None:
    policy, _, down = _policy_between(None, greeting="Hello!", message="Bye.")
    await policy.queue_frame(StartFrame())
    await policy.queue_frame(TranscriptionFrame(text="I'd like an appointment"))
    assert [type(f) for f in down.frames] == [StartFrame, TTSSpeakFrame, TranscriptionFrame]
    assert policy._timer is None  # no timer task without AMD
