"""The pipeline engine: frames, processors, pipelines, PipelineTask and PipelineRunner.

Frames flow by direct calls: ``push_frame`` awaits the next processor, so a frame has
crossed the whole pipeline when ``push_frame`` returns, all in the pusher's task.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import time
from collections.abc import Callable
from typing import Any

import pytest

import callpipe.frames as cf
import callpipe.pipeline.frames as pf
import callpipe.services.llm as llm
from callpipe.frames import (
    BotStartedSpeakingFrame,
    CancelFrame,
    CancelTaskFrame,
    ControlFrame,
    DataFrame,
    EndFrame,
    EndTaskFrame,
    ErrorFrame,
    Frame,
    InputAudioRawFrame,
    InterruptionFrame,
    OutputAudioRawFrame,
    StartFrame,
    StartInterruptionFrame,
    SystemFrame,
    TextFrame,
    TTSAudioRawFrame,
    UserStartedSpeakingFrame,
)
from callpipe.pipeline import Pipeline, PipelineParams, PipelineRunner, PipelineTask
from callpipe.processors import FrameDirection, FrameProcessor

DOWN = FrameDirection.DOWNSTREAM
UP = FrameDirection.UPSTREAM

# Generous bound for anything that should end "at once"; tests normally take milliseconds.
DEADLINE = 3.0


# --------------------------------------------------------------------- helpers


class Recorder(FrameProcessor):
    """Records every frame (with direction and the task it ran in), then passes it on."""

    def __init__(self, log: list[tuple[str, Frame, FrameDirection]] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.log = log if log is not None else []
        self.frames: list[tuple[Frame, FrameDirection]] = []
        self.tasks: list[asyncio.Task[Any] | None] = []
        self.setups = 0
        self.cleanups = 0

    async def setup(self) -> None:
        self.setups += 1
        await super().setup()

    async def cleanup(self) -> None:
        self.cleanups += 1
        await super().cleanup()

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        self.frames.append((frame, direction))
        self.tasks.append(asyncio.current_task())
        self.log.append((self.name, frame, direction))
        await self.push_frame(frame, direction)

    def seen(self, kind: type[Frame] = Frame, direction: FrameDirection | None = None) -> list[Frame]:
        return [f for f, d in self.frames if isinstance(f, kind) and (direction is None or d is direction)]

    def texts(self) -> list[str]:
        return [f.text for f in self.seen(TextFrame)]


class Hook(FrameProcessor):
    """Passes frames on; ``on(frame, direction)`` may act first and return True to stop the frame."""

    def __init__(self, on: Callable[[Hook, Frame, FrameDirection], Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._on = on

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        result = self._on(self, frame, direction)
        if inspect.isawaitable(result):
            result = await result
        if not result:
            await self.push_frame(frame, direction)


async def wait_until(predicate: Callable[[], bool], timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)


async def finish(run: asyncio.Task[Any], timeout: float = DEADLINE) -> None:
    await asyncio.wait_for(asyncio.shield(run), timeout)


def audio(n: int = 0, rate: int = 16000) -> InputAudioRawFrame:
    return InputAudioRawFrame(audio=n.to_bytes(2, "little") * 160, sample_rate=rate)


# ------------------------------------------------------------------ linking & flow


async def test_pipeline_flows_downstream_and_upstream_in_order() -> None:
    log: list[tuple[str, Frame, FrameDirection]] = []
    a, b, c = (Recorder(log, name=n) for n in "abc")
    head, tail = Recorder(name="head"), Recorder(name="tail")
    pipeline = Pipeline([a, b, c])
    head.link(pipeline)
    pipeline.link(tail)
    assert (a.previous, a.next, b.next, c.next) == (a.previous, b, c, c.next)

    down = TextFrame("down")
    await pipeline.queue_frame(down)
    assert [(n, f) for n, f, _ in log] == [("a", down), ("b", down), ("c", down)]
    assert tail.frames == [(down, DOWN)]
    assert head.frames == []

    log.clear()
    up = TextFrame("up")
    await c.push_frame(up, UP)
    assert [n for n, _, _ in log] == ["b", "a"]
    assert all(d is UP for _, _, d in log)
    assert head.frames == [(up, UP)]
    assert tail.frames == [(down, DOWN)]

    # A frame entering the pipeline upstream starts at its last processor.
    log.clear()
    up2 = TextFrame("up2")
    await pipeline.queue_frame(up2, UP)
    assert [n for n, _, _ in log] == ["c", "b", "a"]
    assert head.frames[-1] == (up2, UP)


async def test_nested_pipelines_flow_both_ways_and_flatten() -> None:
    log: list[tuple[str, Frame, FrameDirection]] = []
    a, b, c, d, e = (Recorder(log, name=n) for n in "abcde")
    inner = Pipeline([b, Pipeline([c]), d], name="inner")
    outer = Pipeline([a, inner, e], name="outer")
    head, tail = Recorder(name="head"), Recorder(name="tail")
    head.link(outer)
    outer.link(tail)

    frame = TextFrame("x")
    await outer.queue_frame(frame)
    assert [n for n, _, _ in log] == ["a", "b", "c", "d", "e"]
    assert tail.frames == [(frame, DOWN)]

    log.clear()
    await e.push_frame(TextFrame("y"), UP)
    assert [n for n, _, _ in log] == ["d", "c", "b", "a"]
    assert head.texts() == ["y"]

    log.clear()
    await b.push_frame(TextFrame("z"), UP)  # leaves the inner pipeline's head into a
    assert [n for n, _, _ in log] == ["a"]
    assert head.texts() == ["y", "z"]

    within = outer.processors_within()
    assert within[0] is outer
    assert [p for p in within if isinstance(p, Recorder)] == [a, b, c, d, e]
    assert inner in within and len(within) == 8  # outer, a, inner, b, Pipeline([c]), c, d, e
    assert len({id(p) for p in within}) == len(within)
    assert outer.processors == [a, inner, e]
    assert a.processors_within() == [a]


def test_empty_pipeline_is_rejected() -> None:
    with pytest.raises(ValueError):
        Pipeline([])


# ------------------------------------------------------------------- direct calls


async def test_push_frame_returns_after_every_processor_ran_in_the_pushers_task() -> None:
    stages = [Recorder(name=f"p{i}") for i in range(4)]
    pipeline = Pipeline(stages)
    tail = Recorder(name="tail")
    pipeline.link(tail)
    me = asyncio.current_task()
    loop = asyncio.get_running_loop()

    for i in range(300):
        ticked: list[bool] = []
        loop.call_soon(ticked.append, True)
        frame = audio(i)
        await pipeline.queue_frame(frame)
        # Delivered everywhere before the await returned, without yielding to the loop.
        assert not ticked, "the event loop ran during a direct-call push"
        assert tail.frames[-1][0] is frame
        assert len(tail.frames) == i + 1

    for stage in [*stages, tail]:
        assert all(task is me for task in stage.tasks)
        assert [f.audio for f in stage.seen(InputAudioRawFrame)] == [audio(i).audio for i in range(300)]


# -------------------------------------------------------------- custom processors


class Upper(FrameProcessor):
    """A Pipecat-style processor: upper-cases text, drops "drop", passes anything else."""

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, TextFrame):
            if frame.text == "drop":
                return
            await self.push_frame(TextFrame(frame.text.upper()), direction)
        else:
            await self.push_frame(frame, direction)


class Silent(FrameProcessor):
    """Pushes nothing: the base ``process_frame`` stops every frame."""


async def test_pipecat_style_custom_processor() -> None:
    tail = Recorder(name="tail")
    pipeline = Pipeline([Upper(), Recorder()])
    pipeline.link(tail)
    for text in ["hello", "drop", "world"]:
        await pipeline.queue_frame(TextFrame(text))
    await pipeline.queue_frame(BotStartedSpeakingFrame())
    assert tail.texts() == ["HELLO", "WORLD"]
    assert len(tail.seen(BotStartedSpeakingFrame)) == 1


async def test_processor_that_does_not_push_stops_the_frame() -> None:
    before, after = Recorder(name="before"), Recorder(name="after")
    pipeline = Pipeline([before, Silent(), after])
    await pipeline.queue_frame(TextFrame("x"))
    await after.queue_frame(TextFrame("y"), UP)
    assert before.texts() == ["x"]
    assert after.texts() == ["y"]


async def test_start_frame_sets_processor_settings() -> None:
    p = Recorder()
    assert not p.started
    await p.queue_frame(StartFrame(allow_interruptions=False, enable_metrics=False))
    assert p.started and not p.interruptions_allowed and not p.metrics_enabled


# ------------------------------------------------------------- error containment


class Faulty(FrameProcessor):
    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, TextFrame) and frame.text == "bad":
            raise RuntimeError("kaboom 42")
        await self.push_frame(frame, direction)


async def test_exception_in_process_frame_is_contained_and_reported_upstream(
    caplog: pytest.LogCaptureFixture,
) -> None:
    head, before, after = Recorder(name="head"), Recorder(name="before"), Recorder(name="after")
    faulty = Faulty(name="faulty")
    pipeline = Pipeline([before, faulty, after])
    head.link(pipeline)

    with caplog.at_level(logging.ERROR, logger="callpipe.pipeline"):
        await pipeline.queue_frame(TextFrame("bad"))  # must not raise
    assert "kaboom 42" in caplog.text

    errors = head.seen(ErrorFrame, UP)
    assert len(errors) == 1
    error = errors[0]
    assert isinstance(error, ErrorFrame)
    assert error.fatal is False
    assert error.processor == "faulty"
    assert "kaboom 42" in error.error
    assert before.seen(ErrorFrame, UP) == [error]
    assert after.frames == []

    for text in ["ok1", "ok2"]:
        await pipeline.queue_frame(TextFrame(text))
    assert after.texts() == ["ok1", "ok2"]
    assert len(head.seen(ErrorFrame)) == 1


async def test_error_while_handling_an_error_frame_does_not_loop() -> None:
    class Hates(FrameProcessor):
        async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
            await super().process_frame(frame, direction)
            raise RuntimeError("always")

    head = Recorder()
    hates = Hates()
    head.link(hates)
    await hates.queue_frame(ErrorFrame(error="x"), UP)
    assert head.frames == []
    await hates.queue_frame(TextFrame("y"))
    assert len(head.seen(ErrorFrame)) == 1


# ------------------------------------------------------------------ PipelineTask


async def test_run_sends_start_frame_with_params_first_then_queued_frames_in_order() -> None:
    a, b = Recorder(name="a"), Recorder(name="b")
    inner = Recorder(name="inner")
    params = PipelineParams(
        audio_in_sample_rate=8000,
        audio_out_sample_rate=16000,
        allow_interruptions=False,
        enable_metrics=False,
        interruption_min_secs=0.7,
    )
    task = PipelineTask(Pipeline([a, Pipeline([inner]), b]), params=params, idle_timeout_secs=None)
    # Queued before run(): still delivered after the StartFrame.
    await task.queue_frame(TextFrame("t0"))
    await task.queue_frames([TextFrame(f"t{i}") for i in range(1, 50)])
    await task.stop_when_done()
    await asyncio.wait_for(task.run(), DEADLINE)

    for p in (a, inner, b):
        first = p.frames[0][0]
        assert isinstance(first, StartFrame)
        assert first.audio_in_sample_rate == 8000
        assert first.audio_out_sample_rate == 16000
        assert first.allow_interruptions is False
        assert first.enable_metrics is False
        assert first.interruption_min_secs == pytest.approx(0.7)
        assert len(p.seen(StartFrame)) == 1
        assert p.started and not p.interruptions_allowed
        assert p.texts() == [f"t{i}" for i in range(50)]
        assert isinstance(p.frames[-1][0], EndFrame)
    assert task.has_finished()


async def test_frames_queued_while_running_arrive_in_order_in_one_task() -> None:
    started = asyncio.Event()
    tail = Recorder(name="tail")
    task = PipelineTask(Pipeline([Recorder(), tail]), idle_timeout_secs=None)

    @task.event_handler("on_pipeline_started")
    def _started(task: PipelineTask) -> None:
        started.set()

    run = asyncio.create_task(task.run())
    await asyncio.wait_for(started.wait(), DEADLINE)
    for i in range(100):
        await task.queue_frame(audio(i))
    await task.stop_when_done()
    await finish(run)
    assert [f.audio for f in tail.seen(InputAudioRawFrame)] == [audio(i).audio for i in range(100)]
    # All frames were pumped by the task's run(): one task, no per-processor tasks.
    assert {id(t) for t in tail.tasks} == {id(run)}


async def test_end_frame_pushed_by_a_processor_finishes_run() -> None:
    def on(p: FrameProcessor, frame: Frame, direction: FrameDirection) -> Any:
        if isinstance(frame, TextFrame) and frame.text == "end":
            return p.push_frame(EndFrame(reason="done"))
        return None

    finished: list[Frame | None] = []
    task = PipelineTask(Pipeline([Hook(on)]), idle_timeout_secs=None)
    task.add_event_handler("on_pipeline_finished", lambda t, f: finished.append(f))
    await task.queue_frame(TextFrame("end"))
    await asyncio.wait_for(task.run(), DEADLINE)
    assert len(finished) == 1 and isinstance(finished[0], EndFrame) and finished[0].reason == "done"


async def test_end_task_frame_upstream_ends_gracefully_after_frames_queued_before() -> None:
    def on(p: FrameProcessor, frame: Frame, direction: FrameDirection) -> Any:
        if isinstance(frame, TextFrame) and frame.text == "bye":
            return p.push_frame(EndTaskFrame(reason="goodbye"), UP)
        return None

    tail = Recorder(name="tail")
    task = PipelineTask(Pipeline([Recorder(), Hook(on), tail]), idle_timeout_secs=None)
    finished: list[Frame | None] = []
    task.add_event_handler("on_pipeline_finished", lambda t, f: finished.append(f))
    await task.queue_frames([TextFrame("a"), TextFrame("bye"), TextFrame("b"), TextFrame("c")])
    await asyncio.wait_for(task.run(), DEADLINE)

    kinds = [f for f, _ in tail.frames if not isinstance(f, StartFrame)]
    assert [getattr(f, "text", None) for f in kinds[:-1]] == ["a", "bye", "b", "c"]
    assert isinstance(kinds[-1], EndFrame) and kinds[-1].reason == "goodbye"
    assert tail.seen(CancelFrame) == []
    assert len(finished) == 1 and isinstance(finished[0], EndFrame)


async def test_cancel_task_frame_upstream_cancels() -> None:
    def on(p: FrameProcessor, frame: Frame, direction: FrameDirection) -> Any:
        if isinstance(frame, TextFrame) and frame.text == "hangup":
            return p.push_frame(CancelTaskFrame(reason="caller left"), UP)
        return None

    first, tail = Recorder(name="first"), Recorder(name="tail")
    task = PipelineTask(Pipeline([first, Hook(on), tail]), idle_timeout_secs=None)
    finished: list[Frame | None] = []
    task.add_event_handler("on_pipeline_finished", lambda t, f: finished.append(f))
    await task.queue_frame(TextFrame("hangup"))  # no EndFrame: only the cancel ends the run
    await asyncio.wait_for(task.run(), DEADLINE)
    for p in (first, tail):
        cancels = p.seen(CancelFrame)
        assert len(cancels) == 1 and cancels[0].reason == "caller left"
    assert tail.seen(EndFrame) == []
    assert len(finished) == 1 and isinstance(finished[0], CancelFrame)


async def test_cancel_overtakes_queued_frames_and_releases_a_blocked_processor() -> None:
    entered = asyncio.Event()
    release = asyncio.Event()

    class Blocker(FrameProcessor):
        async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
            await super().process_frame(frame, direction)
            if isinstance(frame, CancelFrame):
                release.set()
            if isinstance(frame, TextFrame) and frame.text == "block":
                entered.set()
                await release.wait()  # only a CancelFrame delivered directly can end this
                return
            await self.push_frame(frame, direction)

    tail = Recorder(name="tail")
    task = PipelineTask(Pipeline([Blocker(), tail]), idle_timeout_secs=None)
    await task.queue_frames([TextFrame("block"), TextFrame("a"), TextFrame("b"), EndFrame()])
    run = asyncio.create_task(task.run())
    await asyncio.wait_for(entered.wait(), DEADLINE)
    await task.queue_frame(TextFrame("c"))
    await asyncio.wait_for(task.cancel("stop now"), DEADLINE)
    await finish(run)
    assert [f.reason for f in tail.seen(CancelFrame)] == ["stop now"]
    assert tail.texts() == []
    assert tail.seen(EndFrame) == []
    assert task.has_finished()


async def test_cancel_releases_a_processor_blocked_on_the_end_frame() -> None:
    """Like an output transport draining its audio on EndFrame: the cancel must get through."""
    release = asyncio.Event()
    in_end = asyncio.Event()

    class Drainer(FrameProcessor):
        async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
            await super().process_frame(frame, direction)
            if isinstance(frame, EndFrame):
                in_end.set()
                await release.wait()
            elif isinstance(frame, CancelFrame):
                release.set()
            await self.push_frame(frame, direction)

    finished: list[Frame | None] = []
    task = PipelineTask(Pipeline([Recorder(), Drainer()]), idle_timeout_secs=None)
    task.add_event_handler("on_pipeline_finished", lambda t, f: finished.append(f))
    run = asyncio.create_task(task.run())
    await task.stop_when_done()
    await asyncio.wait_for(in_end.wait(), DEADLINE)
    assert not run.done()
    await asyncio.wait_for(task.cancel(), DEADLINE)
    await finish(run)
    assert len(finished) == 1 and isinstance(finished[0], CancelFrame)


async def test_fatal_error_upstream_cancels_the_task() -> None:
    def on(p: FrameProcessor, frame: Frame, direction: FrameDirection) -> Any:
        if isinstance(frame, TextFrame) and frame.text == "die":
            return p.push_error("disk on fire", fatal=True)
        return None

    tail = Recorder()
    task = PipelineTask(Pipeline([Recorder(), Hook(on), tail]), idle_timeout_secs=None)
    await task.queue_frame(TextFrame("die"))
    await asyncio.wait_for(task.run(), DEADLINE)
    cancels = tail.seen(CancelFrame)
    assert len(cancels) == 1 and "disk on fire" in cancels[0].reason


async def test_non_fatal_error_upstream_is_logged_and_the_task_keeps_running(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tail = Recorder()
    task = PipelineTask(Pipeline([Faulty(name="faulty"), tail]), idle_timeout_secs=None)
    await task.queue_frames([TextFrame("bad"), TextFrame("good")])
    await task.stop_when_done()
    with caplog.at_level(logging.WARNING, logger="callpipe.pipeline"):
        await asyncio.wait_for(task.run(), DEADLINE)
    assert tail.texts() == ["good"]
    assert tail.seen(CancelFrame) == []
    assert any("faulty" in r.getMessage() and "kaboom 42" in r.getMessage() for r in caplog.records)


async def test_task_cancel_via_queue_frame_cancel_frame() -> None:
    tail = Recorder()
    task = PipelineTask(Pipeline([tail]), idle_timeout_secs=None)
    await task.queue_frames([TextFrame("a"), CancelFrame(reason="queued cancel")])
    await asyncio.wait_for(task.run(), DEADLINE)
    assert tail.texts() == ["a"]
    assert [f.reason for f in tail.seen(CancelFrame)] == ["queued cancel"]


async def test_pipeline_started_and_finished_handlers() -> None:
    calls: list[tuple[str, Any]] = []
    task = PipelineTask(Pipeline([Recorder()]), idle_timeout_secs=None)

    @task.event_handler("on_pipeline_started")
    async def started(t: PipelineTask) -> None:
        calls.append(("started-async", t))

    @task.event_handler("on_pipeline_started")
    def started_sync(t: PipelineTask) -> None:
        calls.append(("started-sync", t))

    @task.event_handler("on_pipeline_finished")
    async def finished(t: PipelineTask, frame: Frame | None) -> None:
        await asyncio.sleep(0.01)  # run() waits for async handlers
        calls.append(("finished", frame))

    await task.stop_when_done()
    await asyncio.wait_for(task.run(), DEADLINE)
    assert ("started-async", task) in calls and ("started-sync", task) in calls
    assert calls[-1][0] == "finished" and isinstance(calls[-1][1], EndFrame)
    assert len(calls) == 3


async def test_idle_timeout_cancels_an_idle_task() -> None:
    fired: list[float] = []
    tail = Recorder()
    task = PipelineTask(Pipeline([tail]), idle_timeout_secs=0.2)

    @task.event_handler("on_idle_timeout")
    async def idle(t: PipelineTask) -> None:
        fired.append(time.monotonic())

    t0 = time.monotonic()
    # Non-activity frames do not keep the call alive.
    await task.queue_frames([TextFrame("x"), audio()])
    await asyncio.wait_for(task.run(), DEADLINE)
    assert len(fired) == 1
    assert fired[0] - t0 >= 0.15
    cancels = tail.seen(CancelFrame)
    assert len(cancels) == 1 and "idle" in cancels[0].reason


@pytest.mark.parametrize("direction", [DOWN, UP])
async def test_activity_frames_prevent_the_idle_timeout(direction: FrameDirection) -> None:
    fired: list[bool] = []
    pusher = Recorder(name="pusher")
    task = PipelineTask(Pipeline([Recorder(), pusher, Recorder()]), idle_timeout_secs=0.2)
    task.add_event_handler("on_idle_timeout", lambda t: fired.append(True))
    run = asyncio.create_task(task.run())
    await wait_until(lambda: pusher.started)
    frame_type = BotStartedSpeakingFrame if direction is DOWN else UserStartedSpeakingFrame
    end = time.monotonic() + 0.5
    while time.monotonic() < end:
        await pusher.push_frame(frame_type(), direction)
        await asyncio.sleep(0.03)
    assert not fired
    assert not run.done()
    await task.stop_when_done()
    await finish(run)
    assert not fired


async def test_idle_timeout_without_cancel_keeps_running() -> None:
    fired: list[bool] = []
    tail = Recorder()
    task = PipelineTask(Pipeline([tail]), idle_timeout_secs=0.1, cancel_on_idle_timeout=False)
    task.add_event_handler("on_idle_timeout", lambda t: fired.append(True))
    run = asyncio.create_task(task.run())
    await wait_until(lambda: bool(fired))
    await asyncio.sleep(0.2)
    assert not run.done()
    await task.queue_frame(TextFrame("still here"))
    await task.stop_when_done()
    await finish(run)
    assert tail.texts() == ["still here"]
    assert tail.seen(CancelFrame) == []


async def test_idle_timeout_without_cancel_fires_again_after_another_idle_period() -> None:
    fired: list[bool] = []
    task = PipelineTask(Pipeline([Recorder()]), idle_timeout_secs=0.1, cancel_on_idle_timeout=False)
    task.add_event_handler("on_idle_timeout", lambda t: fired.append(True))
    run = asyncio.create_task(task.run())
    try:
        await wait_until(lambda: len(fired) >= 2, timeout=0.6)
    finally:
        await task.cancel()
        await finish(run)


async def test_idle_timeout_counts_from_run_not_from_construction() -> None:
    fired: list[float] = []
    task = PipelineTask(Pipeline([Recorder()]), idle_timeout_secs=0.2)
    task.add_event_handler("on_idle_timeout", lambda t: fired.append(time.monotonic()))
    await asyncio.sleep(0.3)  # e.g. the task is built while the call is being answered
    t0 = time.monotonic()
    await asyncio.wait_for(task.run(), DEADLINE)
    assert fired and fired[0] - t0 >= 0.15


async def test_cancel_on_a_finished_task_is_a_no_op() -> None:
    tail = Recorder()
    task = PipelineTask(Pipeline([tail]), idle_timeout_secs=None)
    await task.stop_when_done()
    await asyncio.wait_for(task.run(), DEADLINE)
    await task.cancel()
    assert tail.seen(CancelFrame) == []


async def test_cancelling_the_runner_task_cancels_the_pipeline() -> None:
    tail = Recorder()
    task = PipelineTask(Pipeline([tail]), idle_timeout_secs=None)
    run = asyncio.create_task(task.run())
    await wait_until(lambda: tail.started)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(run, DEADLINE)
    assert len(tail.seen(CancelFrame)) == 1
    assert tail.cleanups == 1
    assert task.has_finished()


# ---------------------------------------------------------------------- cleanup


async def test_processor_tasks_are_cancelled_and_awaited_when_run_ends() -> None:
    states: list[str] = []

    class Worker(Recorder):
        async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
            if isinstance(frame, StartFrame):
                self.worker = self.create_task(self._work(), name="work")
            await super().process_frame(frame, direction)

        async def _work(self) -> None:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                await asyncio.sleep(0)  # cleanup that itself awaits: run() must wait for it
                states.append("cancelled")
                raise

    worker = Worker(name="worker")
    inner = Recorder(name="inner")
    nested = Pipeline([inner])
    outer = Pipeline([worker, nested])
    task = PipelineTask(outer, idle_timeout_secs=None)
    await task.stop_when_done()

    async def run_and_look() -> tuple[list[str], bool]:
        await task.run()
        return list(states), worker.worker.done()  # right as run() returns

    assert await asyncio.wait_for(run_and_look(), DEADLINE) == (["cancelled"], True)
    assert worker.worker.cancelled()
    assert "worker" in worker.worker.get_name() and "work" in worker.worker.get_name()
    assert states == ["cancelled"]
    for p in (worker, inner):
        assert (p.setups, p.cleanups) == (1, 1)


async def test_setup_and_cleanup_once_per_processor_even_when_cancelled() -> None:
    counts: dict[str, list[int]] = {}

    class Counting(FrameProcessor):
        async def setup(self) -> None:
            counts.setdefault(self.name, [0, 0])[0] += 1

        async def cleanup(self) -> None:
            counts.setdefault(self.name, [0, 0])[1] += 1
            await super().cleanup()

    procs = [Counting(name=f"c{i}") for i in range(3)]
    inner = Pipeline([procs[1]], name="inner")

    class CountingPipeline(Pipeline):
        async def setup(self) -> None:
            counts.setdefault(self.name, [0, 0])[0] += 1

        async def cleanup(self) -> None:
            counts.setdefault(self.name, [0, 0])[1] += 1

    outer = CountingPipeline([procs[0], inner, procs[2]], name="outer")
    task = PipelineTask(outer, idle_timeout_secs=None)
    run = asyncio.create_task(task.run())
    await asyncio.sleep(0.02)
    await task.cancel()
    await finish(run)
    assert counts == {"c0": [1, 1], "c1": [1, 1], "c2": [1, 1], "outer": [1, 1]}


async def test_cancel_frame_cancels_processor_tasks() -> None:
    p = Recorder()
    t = p.create_task(asyncio.sleep(3600))
    await p.queue_frame(CancelFrame())
    await asyncio.sleep(0)
    assert t.cancelled()


async def test_running_a_task_twice_raises() -> None:
    task = PipelineTask(Pipeline([Recorder()]), idle_timeout_secs=None)
    run = asyncio.create_task(task.run())
    await asyncio.sleep(0.01)
    with pytest.raises(RuntimeError):
        await asyncio.wait_for(task.run(), DEADLINE)
    await task.stop_when_done()
    await finish(run)
    with pytest.raises(RuntimeError):
        await asyncio.wait_for(task.run(), DEADLINE)


# --------------------------------------------------------------- event handlers


class Emitter(FrameProcessor):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.register_event_handler("on_thing")


async def test_event_handlers_sync_and_async_receive_the_object_and_args() -> None:
    emitter = Emitter()
    calls: list[tuple[str, Any, tuple[Any, ...]]] = []
    assert not emitter.has_event_handlers("on_thing")

    @emitter.event_handler("on_thing")
    def sync_handler(obj: Emitter, *args: Any) -> None:
        calls.append(("sync", obj, args))

    @emitter.event_handler("on_thing")
    async def async_handler(obj: Emitter, *args: Any) -> None:
        await asyncio.sleep(0)
        calls.append(("async", obj, args))

    # The decorator returns the function unchanged.
    assert inspect.iscoroutinefunction(async_handler) and callable(sync_handler)
    assert emitter.has_event_handlers("on_thing")
    await emitter._call_event_handler("on_thing", 1, "two")
    assert calls == [("sync", emitter, (1, "two"))]  # the async one runs in a task of its own
    await emitter.wait_for_event_handlers()
    assert calls == [("sync", emitter, (1, "two")), ("async", emitter, (1, "two"))]


async def test_unknown_event_name_is_a_value_error() -> None:
    emitter = Emitter()
    with pytest.raises(ValueError, match="on_thinq"):
        emitter.event_handler("on_thinq")(lambda obj: None)
    task = PipelineTask(Pipeline([Recorder()]))
    with pytest.raises(ValueError):
        task.add_event_handler("on_pipeline_stared", lambda t: None)


async def test_handler_exceptions_are_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    emitter = Emitter()
    ran: list[str] = []

    @emitter.event_handler("on_thing")
    def bad_sync(obj: Emitter) -> None:
        raise RuntimeError("sync handler broke")

    @emitter.event_handler("on_thing")
    async def bad_async(obj: Emitter) -> None:
        raise RuntimeError("async handler broke")

    @emitter.event_handler("on_thing")
    def good(obj: Emitter) -> None:
        ran.append("good")

    with caplog.at_level(logging.ERROR, logger="callpipe.pipeline"):
        await emitter._call_event_handler("on_thing")
        await emitter.wait_for_event_handlers()
    assert ran == ["good"]
    assert "sync handler broke" in caplog.text
    assert "async handler broke" in caplog.text

    # Same through a task's events: run() completes normally.
    task = PipelineTask(Pipeline([Recorder()]), idle_timeout_secs=None)
    task.add_event_handler("on_pipeline_started", bad_sync)
    task.add_event_handler("on_pipeline_finished", bad_async)
    await task.stop_when_done()
    await asyncio.wait_for(task.run(), DEADLINE)


# ----------------------------------------------------------------------- frames


def test_text_frame_positional_and_audio_frames_keyword_only() -> None:
    assert TextFrame("hi").text == "hi"
    assert TextFrame(text="hi").text == "hi"
    with pytest.raises(TypeError):
        InputAudioRawFrame(b"\0\0", 16000)  # type: ignore[misc]
    with pytest.raises(TypeError):
        TTSAudioRawFrame(b"\0\0", 16000)  # type: ignore[misc]

    mono = InputAudioRawFrame(audio=b"\0\0" * 320, sample_rate=16000)
    assert mono.num_channels == 1 and mono.num_frames == 320
    assert mono.duration == pytest.approx(0.02)
    stereo = OutputAudioRawFrame(audio=b"\0\0" * 480, sample_rate=24000, num_channels=2)
    assert stereo.num_frames == 240 and stereo.duration == pytest.approx(0.01)
    tts = TTSAudioRawFrame(audio=b"\0\0" * 80, sample_rate=8000)
    assert tts.num_frames == 80 and tts.duration == pytest.approx(0.01)


def test_frame_ids_are_unique_and_names_include_them() -> None:
    frames = [TextFrame("x") for _ in range(200)] + [audio() for _ in range(200)] + [EndFrame()]
    ids = [f.id for f in frames]
    assert len(set(ids)) == len(ids)
    assert frames[0].name == f"TextFrame#{frames[0].id}"
    with pytest.raises(TypeError):
        TextFrame("x", id=5)  # type: ignore[call-arg]
    # Frames are slotted (cheap per 20 ms frame of audio).
    with pytest.raises(AttributeError):
        audio().extra = 1  # type: ignore[attr-defined]


def test_frame_categories() -> None:
    system = [
        InputAudioRawFrame(audio=b"", sample_rate=8000),
        InterruptionFrame(),
        StartFrame(),
        CancelFrame(),
        EndTaskFrame(),
        CancelTaskFrame(),
        ErrorFrame(error="e"),
        BotStartedSpeakingFrame(),
        UserStartedSpeakingFrame(),
    ]
    for f in system:
        assert isinstance(f, SystemFrame), f
        assert not isinstance(f, DataFrame | ControlFrame), f
    for f in [TTSAudioRawFrame(audio=b"", sample_rate=8000), TextFrame("t")]:
        assert isinstance(f, DataFrame) and not isinstance(f, SystemFrame | ControlFrame)
    assert isinstance(EndFrame(), ControlFrame) and not isinstance(EndFrame(), SystemFrame | DataFrame)
    assert isinstance(TTSAudioRawFrame(audio=b"", sample_rate=8000), OutputAudioRawFrame)
    assert StartInterruptionFrame is InterruptionFrame


def test_star_import_exposes_every_frame_name() -> None:
    namespace: dict[str, Any] = {}
    exec("from callpipe.frames import *", namespace)
    for name in cf.__all__:
        assert name in namespace, name
        assert namespace[name] is getattr(pf, name, None) or namespace[name] is getattr(llm, name)
    assert len(cf.__all__) == len(set(cf.__all__))
    # Every public frame class of the engine is re-exported.
    engine_frames = {
        name
        for name, obj in vars(pf).items()
        if not name.startswith("_")
        and isinstance(obj, type)
        and obj.__module__ == pf.__name__
        and (issubclass(obj, Frame) or dataclasses.is_dataclass(obj) or name == "AudioRawFrame")
    }
    assert engine_frames <= set(cf.__all__)
    assert "TextFrame" in namespace and "StartInterruptionFrame" in namespace


def test_processors_module_reexports_the_engine_classes() -> None:
    import callpipe.pipeline.processor as proc
    import callpipe.processors as procs

    assert procs.FrameProcessor is proc.FrameProcessor
    assert procs.FrameDirection is proc.FrameDirection
    assert set(procs.__all__) >= {"FrameProcessor", "FrameDirection"}


# ---------------------------------------------------------------------- runner


async def test_pipeline_runner_runs_a_task_to_completion() -> None:
    tail = Recorder()
    task = PipelineTask(Pipeline([Upper(), tail]), idle_timeout_secs=None)
    await task.queue_frames([TextFrame("a"), TextFrame("b")])
    await task.stop_when_done()
    await asyncio.wait_for(PipelineRunner().run(task), DEADLINE)
    assert task.has_finished()
    assert tail.texts() == ["A", "B"]
    assert tail.cleanups == 1
