"""Processor code runs in its own call's task, never in a task or timer shared by all calls.

VAD events come from the loop's shared VAD batcher (a timer callback), played words and
bot speaking frames from the loop's shared output clock, webhook frames from an HTTP
request's task. A processor that uses ``asyncio.timeout``, ``asyncio.wait_for`` or
``asyncio.current_task()`` on those frames, before or after the output transport, must
get the call's own task (its inbox task), and nothing it does may touch other calls.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from callpipe.pipeline.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    Frame,
    InputDTMFFrame,
    TTSTextFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from callpipe.pipeline.processor import FrameDirection, FrameProcessor
from callpipe.server.background import BackgroundServer
from callpipe.sim.bots import CannedBotConfig, create_canned_bot_app
from callpipe.sim.caller import CallerTurn, SimulatedCaller
from tests.conftest import tone
from tests.helpers import wait_until

WORDS = ["one", "two", "three", "four", "five"]


class TaskProbe(FrameProcessor):
    """On the frames it watches: a timeout that must fire, a wait_for, the current task."""

    def __init__(self, kinds: tuple[type[Frame], ...], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.kinds = kinds
        self.seen: list[tuple[str, FrameDirection, asyncio.Task[Any] | None, bool, str]] = []
        self.failures: list[str] = []

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, self.kinds):
            try:
                task = asyncio.current_task()
                fired = False
                try:
                    async with asyncio.timeout(0.002):
                        await asyncio.sleep(0.05)
                except TimeoutError:
                    fired = True
                waited = await asyncio.wait_for(asyncio.sleep(0, result="ok"), 0.5)
                self.seen.append((type(frame).__name__, direction, task, fired, waited))
            except Exception as exc:  # e.g. "Timeout should be used inside a task"
                self.failures.append(f"{type(frame).__name__}: {exc!r}")
        await self.push_frame(frame, direction)


def _probes(
    watched: dict[int, tuple[TaskProbe, TaskProbe]],
) -> tuple[Any, Any]:
    def before(index: int) -> list[FrameProcessor]:
        return [watched[index][0]] if index in watched else []

    def after(index: int) -> list[FrameProcessor]:
        return [watched[index][1]] if index in watched else []

    return before, after


def _new_probes() -> tuple[TaskProbe, TaskProbe]:
    before = TaskProbe(
        (UserStartedSpeakingFrame, UserStoppedSpeakingFrame, BotStartedSpeakingFrame, InputDTMFFrame),
        name="probe-before",
    )
    after = TaskProbe((TTSTextFrame, BotStartedSpeakingFrame, BotStoppedSpeakingFrame), name="probe-after")
    return before, after


async def test_processors_before_and_after_the_output_run_in_the_calls_inbox_task(speech_8k: bytes) -> None:
    probes = _new_probes()
    before, after = _probes({0: probes})
    config = CannedBotConfig(
        reply=tone(0.6, freq=500),
        greeting=tone(0.4),
        reply_words=WORDS,
        before_output=before,
        after_output=after,
    )
    app, calls = create_canned_bot_app(config)
    with BackgroundServer(app) as server:
        caller = SimulatedCaller(server.ws_url + "/ws", record=False)
        run = asyncio.ensure_future(caller.run([CallerTurn(audio=speech_8k)], hang_up_after_secs=0.6))
        await wait_until(lambda: bool(calls) and calls[0].transport.inbox.task is not None)
        call = calls[0]
        inbox_task = call.transport.inbox.task
        assert inbox_task is not None
        # A webhook's frame, pushed from a task of the server's loop that is not the call's.
        future = asyncio.run_coroutine_threadsafe(
            call.transport.push_call_event(InputDTMFFrame(button="5")), inbox_task.get_loop()
        )
        await asyncio.wrap_future(future)
        result = await asyncio.wait_for(run, 30)
        await call.wait_finished()
    assert result.errors == [] and len(result.turns) == 1
    for probe in probes:
        assert probe.failures == []
        assert probe.seen, probe.name
        for name, _, task, fired, waited in probe.seen:
            assert task is inbox_task, (probe.name, name, task)
            assert fired and waited == "ok", (probe.name, name)
    kinds = {(probe.name, name, direction) for probe in probes for name, direction, *_ in probe.seen}
    down, up = FrameDirection.DOWNSTREAM, FrameDirection.UPSTREAM
    for expected in [
        ("probe-before", "UserStartedSpeakingFrame", down),  # VAD events (the batcher's timer)
        ("probe-before", "UserStoppedSpeakingFrame", down),
        ("probe-before", "BotStartedSpeakingFrame", up),  # from the output clock, upstream
        ("probe-before", "InputDTMFFrame", down),  # the webhook's frame
        ("probe-after", "TTSTextFrame", down),  # words released as they played (the clock)
        ("probe-after", "BotStartedSpeakingFrame", down),
        ("probe-after", "BotStoppedSpeakingFrame", down),
    ]:
        assert expected in kinds, expected
    # Every word of the reply was released to the processor after the output, in order.
    assert [n for n, *_ in probes[1].seen if n == "TTSTextFrame"] == ["TTSTextFrame"] * len(WORDS)
    assert call.heard == WORDS


@pytest.mark.slow
async def test_a_processor_using_timeouts_never_touches_the_twenty_other_calls(speech_8k: bytes) -> None:
    probes = _new_probes()
    before, after = _probes({0: probes})
    config = CannedBotConfig(
        reply=tone(1.0, freq=500),
        greeting=tone(0.6),
        reply_words=WORDS,
        before_output=before,
        after_output=after,
    )
    app, calls = create_canned_bot_app(config)
    with BackgroundServer(app) as server:
        url = server.ws_url + "/ws"
        first = SimulatedCaller(url, record=False)
        first_run = asyncio.ensure_future(first.run([CallerTurn(audio=speech_8k)], hang_up_after_secs=0.5))
        await wait_until(lambda: bool(calls))  # the probed call is call 0
        others = [SimulatedCaller(url, record=False) for _ in range(20)]
        results = await asyncio.wait_for(
            asyncio.gather(*(c.run([CallerTurn(audio=speech_8k)], hang_up_after_secs=0.5) for c in others)),
            60,
        )
        first_result = await asyncio.wait_for(first_run, 30)
    assert probes[0].failures == [] and probes[1].failures == []
    assert all(fired for probe in probes for *_, fired, _ in probe.seen)
    assert first_result.bot_audio_secs >= 1.55
    # The other calls' audio kept flowing: every greeting and every answer, in full.
    for result in results:
        assert result.errors == []
        assert len(result.turns) == 1 and result.turns[0].response_latency is not None
        assert result.bot_audio_secs >= 1.55  # (a pause in the speech may earn a second reply)
