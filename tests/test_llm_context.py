"""The LLM context and its aggregators, without any network.

The user aggregator turns a finished caller turn into a user message and asks the LLM;
the assistant aggregator, placed after the output, records only what the caller heard.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

from callpipe.pipeline import Pipeline
from callpipe.pipeline.frames import (
    BotInterruptionFrame,
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    ControlFrame,
    DataFrame,
    EndFrame,
    Frame,
    InputDTMFFrame,
    InterimTranscriptionFrame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    StartFrame,
    TranscriptionFrame,
    TTSStoppedFrame,
    TTSTextFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from callpipe.pipeline.processor import FrameDirection, FrameProcessor
from callpipe.services.llm import (
    FunctionSchema,
    LLMAssistantAggregator,
    LLMChunk,
    LLMContext,
    LLMContextAggregatorPair,
    LLMContextFrame,
    LLMMessagesAppendFrame,
    LLMRunFrame,
    LLMService,
    LLMUserAggregator,
    TelephonyTools,
)
from tests.helpers import Recorder

DEADLINE = 3.0
SYSTEM = {"role": "system", "content": "Be brief."}


# --------------------------------------------------------------------- helpers


class EchoLLM(LLMService):
    """Answers the last user message: "echo: <text>" in two pieces."""

    def __init__(self) -> None:
        super().__init__(model="echo")
        self.runs: list[list[dict[str, Any]]] = []

    async def run_llm(self, context: LLMContext) -> AsyncIterator[LLMChunk]:
        self.runs.append([dict(m) for m in context.messages])
        last = next((m for m in reversed(context.messages) if m["role"] == "user"), None)
        yield "echo: "
        yield str(last["content"]) if last else "(nothing)"


class PlaybackOutput(FrameProcessor):
    """A stand-in output transport: holds the reply until its "audio" plays.

    LLM words wait in order with the in-order frames behind them (as a real output holds
    data and control frames behind queued audio); ``play(n)`` releases the next ``n``
    words as :class:`TTSTextFrame` (as the output does once their audio has been sent),
    plus the frames queued right behind them. An interruption drops everything pending.
    """

    def __init__(self) -> None:
        super().__init__(name="output")
        self.pending: deque[Frame] = deque()

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, InterruptionFrame):
            self.pending.clear()
        elif direction is FrameDirection.DOWNSTREAM and (
            isinstance(frame, LLMTextFrame) or (self.pending and isinstance(frame, DataFrame | ControlFrame))
        ):
            self.pending.append(frame)
            return
        await self.push_frame(frame, direction)

    def words_pending(self) -> int:
        return sum(isinstance(f, LLMTextFrame) for f in self.pending)

    async def play(self, n: int) -> None:
        while self.pending and (n > 0 or not isinstance(self.pending[0], LLMTextFrame)):
            frame = self.pending.popleft()
            if isinstance(frame, LLMTextFrame):
                n -= 1
                frame = TTSTextFrame(frame.text)
            await self.push_frame(frame)


async def wait_until(predicate: Callable[[], bool], timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.002)


def user_aggregator(timeout: float = 5.0) -> tuple[LLMContext, LLMUserAggregator, Recorder, Pipeline]:
    context = LLMContext(messages=[dict(SYSTEM)])
    aggregator = LLMUserAggregator(context, transcript_timeout_secs=timeout)
    recorder = Recorder()
    return context, aggregator, recorder, Pipeline([aggregator, recorder])


def started() -> UserStartedSpeakingFrame:
    return UserStartedSpeakingFrame()


def stopped() -> UserStoppedSpeakingFrame:
    return UserStoppedSpeakingFrame(speech_ended_at=time.monotonic())


# --------------------------------------------------------------- user aggregator


async def test_commits_when_the_transcript_comes_before_the_stop() -> None:
    context, _aggregator, recorder, pipeline = user_aggregator()
    await pipeline.queue_frame(started())
    await pipeline.queue_frame(TranscriptionFrame("I'd like"))
    await pipeline.queue_frame(InterimTranscriptionFrame("to book an"))
    await pipeline.queue_frame(TranscriptionFrame("to book an appointment"))
    assert recorder.seen(LLMContextFrame) == []  # still speaking
    await pipeline.queue_frame(stopped())

    assert context.messages[1:] == [{"role": "user", "content": "I'd like to book an appointment"}]
    [frame] = recorder.seen(LLMContextFrame)
    assert isinstance(frame, LLMContextFrame) and frame.context is context
    kinds = recorder.kinds()
    assert kinds == [UserStartedSpeakingFrame, UserStoppedSpeakingFrame, LLMContextFrame]
    # Transcripts are consumed by the aggregator.
    assert recorder.seen(TranscriptionFrame) == recorder.seen(InterimTranscriptionFrame) == []
    await pipeline.cleanup()


async def test_commits_when_the_stop_comes_before_the_transcript() -> None:
    context, _aggregator, recorder, pipeline = user_aggregator(timeout=5.0)
    await pipeline.queue_frame(started())
    await pipeline.queue_frame(stopped())
    assert recorder.seen(LLMContextFrame) == [] and len(context.messages) == 1
    began = time.monotonic()
    await pipeline.queue_frame(TranscriptionFrame("  what time do you open?  "))
    # At once, not after the 5 s timeout.
    assert time.monotonic() - began < 0.5
    assert context.messages[-1] == {"role": "user", "content": "what time do you open?"}
    assert len(recorder.seen(LLMContextFrame)) == 1
    # The turn is over: the timer is gone and nothing is committed twice.
    await asyncio.sleep(0.05)
    assert len(recorder.seen(LLMContextFrame)) == 1
    await pipeline.cleanup()


async def test_a_turn_resumed_before_the_transcript_is_one_turn() -> None:
    context, _aggregator, recorder, pipeline = user_aggregator(timeout=0.05)
    await pipeline.queue_frame(started())
    await pipeline.queue_frame(stopped())
    await pipeline.queue_frame(started())  # a pause, then more words: the timer is off
    await asyncio.sleep(0.1)
    assert recorder.seen(LLMContextFrame) == []
    await pipeline.queue_frame(TranscriptionFrame("first part"))
    await pipeline.queue_frame(TranscriptionFrame("second part"))
    await pipeline.queue_frame(stopped())
    assert context.messages[-1] == {"role": "user", "content": "first part second part"}
    assert len(recorder.seen(LLMContextFrame)) == 1
    await pipeline.cleanup()


async def test_no_transcript_after_the_stop_drops_the_turn_after_the_timeout() -> None:
    context, _aggregator, recorder, pipeline = user_aggregator(timeout=0.05)
    await pipeline.queue_frame(started())
    await pipeline.queue_frame(stopped())
    await asyncio.sleep(0.15)
    assert recorder.seen(LLMContextFrame) == [] and context.messages == [SYSTEM]
    # The aggregator is not stuck: the next turn works.
    await pipeline.queue_frame(started())
    await pipeline.queue_frame(TranscriptionFrame("hello?"))
    await pipeline.queue_frame(stopped())
    assert context.messages[-1] == {"role": "user", "content": "hello?"}
    assert len(recorder.seen(LLMContextFrame)) == 1
    await pipeline.cleanup()


async def test_timeout_commits_the_partial_transcript_when_no_final_comes() -> None:
    context, _aggregator, recorder, pipeline = user_aggregator(timeout=0.05)
    await pipeline.queue_frame(started())
    await pipeline.queue_frame(InterimTranscriptionFrame("can you call me"))
    await pipeline.queue_frame(InterimTranscriptionFrame("can you call me back"))
    await pipeline.queue_frame(stopped())
    try:
        await wait_until(lambda: bool(recorder.seen(LLMContextFrame)), timeout=0.5)
        assert context.messages[-1] == {"role": "user", "content": "can you call me back"}
    finally:
        await pipeline.cleanup()


async def test_empty_turns_are_dropped() -> None:
    context, _aggregator, recorder, pipeline = user_aggregator(timeout=0.05)
    await pipeline.queue_frame(started())
    await pipeline.queue_frame(TranscriptionFrame("   "))
    await pipeline.queue_frame(stopped())
    await pipeline.queue_frame(TranscriptionFrame(""))
    await asyncio.sleep(0.15)
    assert recorder.seen(LLMContextFrame) == []
    assert context.messages == [SYSTEM]
    await pipeline.cleanup()


async def test_dtmf_becomes_a_user_message_and_runs_the_llm() -> None:
    context = LLMContext(messages=[dict(SYSTEM)])
    aggregators = LLMContextAggregatorPair(context)
    llm, recorder = EchoLLM(), Recorder()
    pipeline = Pipeline([aggregators.user(), llm, recorder])
    await pipeline.queue_frame(InputDTMFFrame(button="5"))
    await wait_until(lambda: bool(recorder.seen(LLMFullResponseEndFrame)))

    assert context.messages[-1] == {"role": "user", "content": "(The caller pressed the 5 key.)"}
    assert "".join(recorder.texts()) == "echo: (The caller pressed the 5 key.)"
    # The key press itself still travels on (e.g. for an IVR menu processor).
    assert [f.button for f in recorder.seen(InputDTMFFrame) if isinstance(f, InputDTMFFrame)] == ["5"]
    assert len(llm.runs) == 1
    await pipeline.cleanup()


async def test_an_llm_on_hold_keeps_the_words_but_does_not_answer() -> None:
    context = LLMContext(messages=[dict(SYSTEM)])
    aggregators = LLMContextAggregatorPair(context)
    llm, recorder = EchoLLM(), Recorder()
    pipeline = Pipeline([aggregators.user(), llm, recorder])
    llm.on_hold = True  # a warm transfer holds the caller
    await pipeline.queue_frame(InputDTMFFrame(button="5"))
    await wait_until(lambda: bool(recorder.seen(InputDTMFFrame)))
    await asyncio.sleep(0.05)
    assert context.messages[-1] == {"role": "user", "content": "(The caller pressed the 5 key.)"}
    assert llm.runs == [] and not recorder.seen(LLMFullResponseEndFrame)
    llm.on_hold = False  # back with the caller: the next turn is answered
    await pipeline.queue_frame(InputDTMFFrame(button="6"))
    await wait_until(lambda: bool(recorder.seen(LLMFullResponseEndFrame)))
    assert len(llm.runs) == 1
    await pipeline.cleanup()


async def test_messages_append_and_run_frames() -> None:
    context = LLMContext(messages=[dict(SYSTEM)])
    aggregators = LLMContextAggregatorPair(context)
    llm, recorder = EchoLLM(), Recorder()
    pipeline = Pipeline([aggregators.user(), llm, recorder])

    # Appending without running: the context grows, the LLM stays quiet.
    note = {"role": "system", "content": "The caller is Ann."}
    await pipeline.queue_frame(LLMMessagesAppendFrame(messages=[note], run_llm=False))
    await asyncio.sleep(0.02)
    assert context.messages == [SYSTEM, note] and llm.runs == []

    # LLMRunFrame: run on the context as it is (e.g. a greeting when the call connects).
    await pipeline.queue_frame(LLMRunFrame())
    await wait_until(lambda: len(recorder.seen(LLMFullResponseEndFrame)) == 1)
    assert llm.runs == [[SYSTEM, note]]
    assert "".join(recorder.texts()) == "echo: (nothing)"

    # Appending with run_llm (the default) asks for a reply.
    greeting = {"role": "user", "content": "Hi!"}
    await pipeline.queue_frame(LLMMessagesAppendFrame(messages=[greeting]))
    await wait_until(lambda: len(recorder.seen(LLMFullResponseEndFrame)) == 2)
    assert llm.runs[-1] == [SYSTEM, note, greeting]
    assert recorder.texts()[-2:] == ["echo: ", "Hi!"]
    # The aggregator's own frames are consumed, not passed on.
    assert recorder.seen(LLMMessagesAppendFrame) == recorder.seen(LLMRunFrame) == []
    await pipeline.cleanup()


async def test_context_listeners_see_every_message() -> None:
    context = LLMContext()
    heard: list[dict[str, Any]] = []
    context.on_message(heard.append)

    def broken(message: dict[str, Any]) -> None:
        raise RuntimeError("listener bug")

    context.on_message(broken)  # a failing listener does not stop the others
    context.add_message({"role": "user", "content": "a"})
    context.add_message({"role": "assistant", "content": "b"})
    assert (
        heard
        == context.get_messages()
        == [
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "b"},
        ]
    )


# ---------------------------------------------------------- assistant aggregator


def assistant_after_output() -> tuple[LLMContext, EchoLLM, PlaybackOutput, Recorder, Pipeline]:
    context = LLMContext(messages=[dict(SYSTEM)])
    aggregators = LLMContextAggregatorPair(context)
    llm, output, recorder = EchoLLM(), PlaybackOutput(), Recorder()
    pipeline = Pipeline([llm, output, aggregators.assistant(), recorder])
    return context, llm, output, recorder, pipeline


async def test_barge_in_keeps_only_the_words_the_caller_heard() -> None:
    context = LLMContext(messages=[dict(SYSTEM)])
    output, recorder = PlaybackOutput(), Recorder()
    pipeline = Pipeline([output, LLMAssistantAggregator(context), recorder])

    await pipeline.queue_frame(LLMFullResponseStartFrame())
    for i in range(1, 7):
        await pipeline.queue_frame(LLMTextFrame(f"w{i}"))
    await output.play(3)  # the audio of w1..w3 went out
    await pipeline.queue_frame(InterruptionFrame())  # the caller barged in

    assert context.messages[1:] == [{"role": "assistant", "content": "w1 w2 w3"}]
    # The end of the (cancelled) reply adds nothing more.
    await pipeline.queue_frame(LLMFullResponseEndFrame())
    await pipeline.queue_frame(TTSStoppedFrame())
    assert context.messages[1:] == [{"role": "assistant", "content": "w1 w2 w3"}]
    assert [t for t in recorder.texts()] == ["w1", "w2", "w3"]


async def test_reply_is_committed_at_the_response_end() -> None:
    context, _llm, output, recorder, pipeline = assistant_after_output()
    await pipeline.queue_frame(LLMContextFrame(context=context))
    # The LLM has finished writing; the caller has not heard it yet.
    await wait_until(
        lambda: output.words_pending() == 2 and isinstance(output.pending[-1], LLMFullResponseEndFrame)
    )
    await output.play(1)
    assert context.messages == [SYSTEM]  # half of it heard, the reply is not over
    await output.play(1)  # the rest, and the end of the reply behind it
    assert recorder.seen(LLMFullResponseEndFrame)
    assert context.messages[1:] == [{"role": "assistant", "content": "echo: (nothing)"}]
    await pipeline.cleanup()


async def test_reply_is_committed_on_tts_stopped_and_on_end() -> None:
    context = LLMContext()
    aggregator = LLMAssistantAggregator(context)
    await aggregator.queue_frame(TTSTextFrame("Hello"))
    await aggregator.queue_frame(TTSTextFrame(" there. "))
    await aggregator.queue_frame(TTSStoppedFrame())
    await aggregator.queue_frame(TTSStoppedFrame())  # nothing new heard: no empty message
    await aggregator.queue_frame(TTSTextFrame("Bye."))
    await aggregator.queue_frame(EndFrame())
    assert context.messages == [
        {"role": "assistant", "content": "Hello there."},
        {"role": "assistant", "content": "Bye."},
    ]


async def test_aggregator_pair_shares_one_context() -> None:
    context = LLMContext(messages=[dict(SYSTEM)])
    pair = LLMContextAggregatorPair(context, transcript_timeout_secs=0.7)
    assert pair.user() is pair.user() and pair.assistant() is pair.assistant()
    assert pair.user().context is pair.assistant().context is pair.context is context
    assert pair.user().transcript_timeout_secs == 0.7


# -------------------------------------------------------------------- schemas


def test_function_schema_to_openai() -> None:
    schema = FunctionSchema(
        "book",
        "Book an appointment.",
        {"day": {"type": "string"}, "time": {"type": "string", "description": "e.g. 3 PM"}},
        ["day"],
    )
    assert schema.to_openai() == {
        "type": "function",
        "function": {
            "name": "book",
            "description": "Book an appointment.",
            "parameters": {
                "type": "object",
                "properties": {
                    "day": {"type": "string"},
                    "time": {"type": "string", "description": "e.g. 3 PM"},
                },
                "required": ["day"],
            },
        },
    }
    bare = FunctionSchema("end_call", "Hang up.").to_openai()
    assert bare["function"]["parameters"] == {"type": "object", "properties": {}, "required": []}


def test_telephony_tool_schemas() -> None:
    schemas = {s.name: s.to_openai()["function"] for s in TelephonyTools.schemas()}
    assert set(schemas) == {"end_call", "transfer_call", "send_dtmf"}
    assert schemas["end_call"]["parameters"]["required"] == []
    assert schemas["transfer_call"]["parameters"]["required"] == ["to"]
    assert schemas["send_dtmf"]["parameters"]["required"] == ["digits"]


async def test_min_words_interrupts_the_bot_only_after_enough_words() -> None:
    context = LLMContext(messages=[{"role": "system", "content": "s"}])
    head, tail = Recorder(), Recorder()
    aggregator = LLMUserAggregator(context)
    pipeline = Pipeline([head, aggregator, tail])
    await pipeline.queue_frame(StartFrame(interruption_min_words=3))
    # The bot is speaking (the output sends BotStartedSpeakingFrame upstream too).
    await tail.push_frame(BotStartedSpeakingFrame(), FrameDirection.UPSTREAM)
    await pipeline.queue_frame(InterimTranscriptionFrame("uh huh"))
    assert head.seen(BotInterruptionFrame) == []  # two words: a backchannel, not a barge-in
    await pipeline.queue_frame(InterimTranscriptionFrame("wait a second please"))
    await pipeline.queue_frame(TranscriptionFrame("wait a second please"))
    assert len(head.seen(BotInterruptionFrame)) == 1  # asked once per bot turn
    # Once the bot has stopped, words never interrupt anything.
    await tail.push_frame(BotStoppedSpeakingFrame(), FrameDirection.UPSTREAM)
    await pipeline.queue_frame(InterimTranscriptionFrame("one two three four"))
    assert len(head.seen(BotInterruptionFrame)) == 1
    await pipeline.cleanup()


async def test_after_the_end_frame_the_callers_last_words_get_no_reply() -> None:
    # The bot said goodbye and asked to hang up (end_call): the EndFrame is on its way to
    # the output, which plays the goodbye first. Words the caller adds meanwhile are kept
    # in the context (and the record) but start no new LLM round over the goodbye.
    context, _aggregator, recorder, pipeline = user_aggregator()
    await pipeline.queue_frame(EndFrame())
    await pipeline.queue_frame(started())
    await pipeline.queue_frame(TranscriptionFrame("that's all, goodbye"))
    await pipeline.queue_frame(stopped())
    assert context.messages[-1] == {"role": "user", "content": "that's all, goodbye"}
    assert recorder.seen(LLMContextFrame) == []
    await pipeline.cleanup()
