"""Running a pipeline: :class:`PipelineTask` and :class:`PipelineRunner`."""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
import weakref
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass
from typing import Any

from callpipe.pipeline.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    CancelFrame,
    CancelTaskFrame,
    EndFrame,
    EndTaskFrame,
    ErrorFrame,
    Frame,
    InputDTMFFrame,
    StartFrame,
    TranscriptionFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from callpipe.pipeline.processor import EventHandlerMixin, FrameDirection, FrameProcessor
from callpipe.pipeline.vad_placement import place_vad
from callpipe.records import observer as records

logger = logging.getLogger("callpipe.pipeline")

# Frames that show the conversation is alive, for the idle timeout.
_ACTIVITY_FRAMES = (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
    TranscriptionFrame,
    InputDTMFFrame,
)


@dataclass(slots=True, kw_only=True)
class PipelineParams:
    """Pipeline-wide settings, sent to every processor in the :class:`StartFrame`."""

    audio_in_sample_rate: int = 16000
    audio_out_sample_rate: int = 24000
    allow_interruptions: bool = True
    enable_metrics: bool = True
    enable_usage_metrics: bool = False
    interruption_min_secs: float = 0.0
    interruption_min_words: int = 0


class _TaskSource(FrameProcessor):
    """Head of a task: receives what the pipeline pushes upstream out of its first stage."""

    def __init__(self, task: PipelineTask) -> None:
        super().__init__(name=f"{task.name}:source")
        self._task: PipelineTask = weakref.proxy(task)  # the task owns this (no cycle)

    async def queue_frame(self, frame: Frame, direction: FrameDirection = FrameDirection.DOWNSTREAM) -> None:
        if direction is FrameDirection.DOWNSTREAM:
            await self.push_frame(frame, direction)
        else:
            self._task._on_upstream_frame(frame)


class _TaskSink(FrameProcessor):
    """Tail of a task: sees every frame that leaves the pipeline downstream."""

    def __init__(self, task: PipelineTask) -> None:
        super().__init__(name=f"{task.name}:sink")
        self._task: PipelineTask = weakref.proxy(task)  # the task owns this (no cycle)

    async def queue_frame(self, frame: Frame, direction: FrameDirection = FrameDirection.DOWNSTREAM) -> None:
        self._task._on_downstream_frame(frame)


class PipelineTask(EventHandlerMixin):
    """Runs one pipeline (one call): start it, feed it frames, end or cancel it.

    Events: ``on_pipeline_started``, ``on_pipeline_finished`` (with the final frame),
    ``on_idle_timeout``. With ``idle_timeout_secs`` set, a call in which nobody speaks
    for that long is cancelled (``cancel_on_idle_timeout``) after the handlers run.
    """

    _names = 0

    def __init__(
        self,
        pipeline: FrameProcessor,
        *,
        params: PipelineParams | None = None,
        idle_timeout_secs: float | None = 300.0,
        cancel_on_idle_timeout: bool = True,
        name: str | None = None,
    ) -> None:
        super().__init__()
        PipelineTask._names += 1
        self.name = name or f"PipelineTask#{PipelineTask._names}"
        self.pipeline = pipeline
        self.params = params or PipelineParams()
        self._idle_timeout_secs = idle_timeout_secs
        self._cancel_on_idle_timeout = cancel_on_idle_timeout
        self._source = _TaskSource(self)
        self._sink = _TaskSink(self)
        self._source.link(pipeline)
        pipeline.link(self._sink)
        self._queue: asyncio.Queue[Frame] = asyncio.Queue()
        self._finished = asyncio.Event()
        self._final_frame: Frame | None = None
        self._cancelling = False
        self._running = False
        self._last_activity = time.monotonic()
        self._idle_handle: asyncio.TimerHandle | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._observer = records.current()  # the call's record (under ``callpipe serve``)
        for event in ("on_pipeline_started", "on_pipeline_finished", "on_idle_timeout"):
            self.register_event_handler(event)

    # ---------------------------------------------------------------- public API

    def has_finished(self) -> bool:
        """Whether the pipeline has ended (or was cancelled)."""
        return self._finished.is_set()

    async def queue_frame(self, frame: Frame) -> None:
        """Send ``frame`` down the pipeline, after the frames queued before it."""
        await self._queue.put(frame)

    async def queue_frames(self, frames: Iterable[Frame]) -> None:
        """Send several frames down the pipeline, in order."""
        for frame in frames:
            await self._queue.put(frame)

    async def stop_when_done(self) -> None:
        """End gracefully once everything queued so far has been processed."""
        await self.queue_frame(EndFrame())

    async def cancel(self, reason: str = "cancelled") -> None:
        """Stop now: a :class:`CancelFrame` overtakes everything queued."""
        if self._finished.is_set() or self._cancelling:
            return
        self._cancelling = True
        logger.info("%s cancelling: %s", self.name, reason)
        await self._source.push_frame(CancelFrame(reason=reason), FrameDirection.DOWNSTREAM)
        # A processor may swallow the frame; the task ends regardless.
        self._finish(None)

    async def run(self) -> None:
        """Run the pipeline until it ends; then clean every processor up.

        A pipeline runs once: at its end the task unlinks its processors (see
        :meth:`_release_call`).
        """
        if self._running:
            raise RuntimeError(f"{self.name} is already running")
        self._running = True
        processors = self.pipeline.processors_within()
        place_vad(processors)  # Pipecat >= 1.0 gives the VAD to the user aggregator
        try:
            for processor in processors:
                await processor.setup()
            start = StartFrame(
                audio_in_sample_rate=self.params.audio_in_sample_rate,
                audio_out_sample_rate=self.params.audio_out_sample_rate,
                allow_interruptions=self.params.allow_interruptions,
                enable_metrics=self.params.enable_metrics,
                enable_usage_metrics=self.params.enable_usage_metrics,
                interruption_min_secs=self.params.interruption_min_secs,
                interruption_min_words=self.params.interruption_min_words,
            )
            self._last_activity = time.monotonic()
            self._schedule_idle_check()
            await self._source.push_frame(start, FrameDirection.DOWNSTREAM)
            await self._call_event_handler("on_pipeline_started")
            await self._pump()
        except asyncio.CancelledError:
            # The runner itself was cancelled (server shutdown): cancel the pipeline too.
            await asyncio.shield(self.cancel("runner cancelled"))
            raise
        finally:
            try:
                await self._clean_up(processors)
            finally:
                self._release_call(processors)

    async def _clean_up(self, processors: list[FrameProcessor]) -> None:
        if self._idle_handle is not None:
            self._idle_handle.cancel()
        for task in list(self._background):
            task.cancel()
        for processor in processors:
            try:
                await processor.cleanup()
            except Exception:
                logger.exception("%s cleanup failed", processor.name)
        await self._call_event_handler("on_pipeline_finished", self._final_frame)
        await self.wait_for_event_handlers()

    def _release_call(self, processors: list[FrameProcessor]) -> None:
        """Unlink the finished call's objects, so reference counting frees them at once.

        A pipeline is a doubly linked chain, and handlers and transports refer back to
        what holds them: left as they are, every finished call would wait for a full
        garbage collection, whose pause (it walks the whole heap) every live call hears.
        """
        for processor in (self._source, *processors, self._sink):
            processor._release()
        self._drop_event_handlers()

    # ----------------------------------------------------------------- internals

    async def _pump(self) -> None:
        """Feed queued frames into the pipeline until it has finished."""
        finished = asyncio.ensure_future(self._finished.wait())
        try:
            while not self._finished.is_set():
                getter = asyncio.ensure_future(self._queue.get())
                done, _ = await asyncio.wait({getter, finished}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    break
                frame = getter.result()
                if isinstance(frame, CancelFrame):
                    await self.cancel(frame.reason)
                    break
                if isinstance(frame, EndFrame) and self._observer is not None:
                    self._observer.note_end("bot_ended", "bot")
                await self._source.push_frame(frame, FrameDirection.DOWNSTREAM)
        finally:
            finished.cancel()

    def _finish(self, frame: Frame | None) -> None:
        if not self._finished.is_set():
            self._final_frame = frame
            self._finished.set()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _on_downstream_frame(self, frame: Frame) -> None:
        if isinstance(frame, _ACTIVITY_FRAMES):
            self._last_activity = time.monotonic()
        elif isinstance(frame, EndFrame | CancelFrame):
            self._finish(frame)

    def _on_upstream_frame(self, frame: Frame) -> None:
        # Called from inside some processor's push: never await the pipeline from here.
        if isinstance(frame, _ACTIVITY_FRAMES):
            self._last_activity = time.monotonic()
        elif isinstance(frame, EndTaskFrame):
            logger.info("%s ending: %s", self.name, frame.reason or "requested by the pipeline")
            if self._observer is not None:
                self._observer.note_end("bot_ended", "bot")
            self._queue.put_nowait(EndFrame(reason=frame.reason))
        elif isinstance(frame, CancelTaskFrame):
            self._spawn(self.cancel(frame.reason or "requested by the pipeline"))
        elif isinstance(frame, ErrorFrame):
            if self._observer is not None:
                self._observer.error(
                    "fatal" if frame.fatal else "processor", f"{frame.processor}: {frame.error}"
                )
                if frame.fatal:
                    self._observer.note_end("error", "server")
            if frame.fatal:
                logger.error("%s fatal error from %s: %s", self.name, frame.processor, frame.error)
                self._spawn(self.cancel(f"fatal error: {frame.error}"))
            else:
                logger.warning("%s error from %s: %s", self.name, frame.processor, frame.error)

    def _schedule_idle_check(self) -> None:
        if self._idle_timeout_secs is None:
            return
        # One cheap timer per call, a few times per timeout period: no per-frame work.
        period = min(max(self._idle_timeout_secs / 4, 0.05), 5.0)
        self._idle_handle = asyncio.get_running_loop().call_later(period, self._check_idle)

    def _check_idle(self) -> None:
        if self._finished.is_set() or self._idle_timeout_secs is None:
            return
        idle_for = time.monotonic() - self._last_activity
        if idle_for >= self._idle_timeout_secs:
            logger.info("%s idle for %.1fs", self.name, idle_for)
            self._spawn(self._idle_timeout())
            if self._cancel_on_idle_timeout:
                return
            # Still running: fire again after another idle period (as Pipecat does).
            self._last_activity = time.monotonic()
        self._schedule_idle_check()

    async def _idle_timeout(self) -> None:
        await self._call_event_handler("on_idle_timeout")
        if self._cancel_on_idle_timeout:
            if self._observer is not None:
                self._observer.note_end("idle_timeout", "server")
            await self.cancel("idle timeout")


class PipelineRunner:
    """Runs pipeline tasks; with ``handle_sigint`` a Ctrl-C cancels the task cleanly."""

    def __init__(self, *, handle_sigint: bool = False, name: str | None = None) -> None:
        self.name = name or "PipelineRunner"
        self._handle_sigint = handle_sigint

    async def run(self, task: PipelineTask) -> None:
        """Run ``task`` to its end."""
        loop = asyncio.get_running_loop()
        installed = False
        if self._handle_sigint and threading.current_thread() is threading.main_thread():
            try:
                loop.add_signal_handler(
                    signal.SIGINT, lambda: asyncio.ensure_future(task.cancel("interrupted (SIGINT)"))
                )
                installed = True
            except (NotImplementedError, RuntimeError):
                installed = False
        try:
            await task.run()
        finally:
            if installed:
                loop.remove_signal_handler(signal.SIGINT)
