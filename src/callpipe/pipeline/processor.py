"""Frame processors: the stages of a pipeline.

A processor receives frames in :meth:`FrameProcessor.process_frame` and passes frames on
with :meth:`FrameProcessor.push_frame`, exactly as Pipecat users write them. The
difference is inside: ``push_frame`` *calls* the next processor directly instead of
putting the frame on a queue read by a task of that processor. A 20 ms audio frame
therefore crosses the whole pipeline in one chain of awaits, with no task switches.

The price of direct calls is a rule: ``process_frame`` must return quickly. Work that
takes time (a network request, synthesis) belongs in a task of the processor
(:meth:`FrameProcessor.create_task`) that pushes its results when they are ready. Frames
pushed from one task arrive in the order they were pushed.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import itertools
import logging
import time
import weakref
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from callpipe.pipeline.frames import (
    CancelFrame,
    ErrorFrame,
    Frame,
    MetricsData,
    MetricsFrame,
    StartFrame,
)

logger = logging.getLogger("callpipe.pipeline")

_processor_ids = itertools.count(1)

HandlerT = TypeVar("HandlerT", bound=Callable[..., Any])
ObjectT = TypeVar("ObjectT")


def weak_back_reference(obj: ObjectT) -> ObjectT:
    """``obj`` through a weak proxy (``obj`` itself if it already is one).

    For the references that close a cycle (a transport's halves back to the transport), once
    the call is over: a finished call is then freed by reference counting at once, instead
    of waiting, heap and all, for a full garbage collection (a stall of every live call).
    """
    if isinstance(obj, weakref.ProxyType | weakref.CallableProxyType):
        return obj
    proxy: ObjectT = weakref.proxy(obj)
    return proxy


class FrameDirection(enum.Enum):
    """Which way a frame travels: towards the output (downstream) or the input (upstream)."""

    DOWNSTREAM = 1
    UPSTREAM = 2


class EventHandlerMixin:
    """Named event handlers: ``@obj.event_handler("on_x") async def f(obj, ...)``."""

    def __init__(self) -> None:
        self._event_handlers: dict[str, list[Callable[..., Any]]] = {}
        self._handler_tasks: set[asyncio.Task[Any]] = set()

    def register_event_handler(self, event_name: str) -> None:
        """Declare an event that handlers may be attached to."""
        self._event_handlers.setdefault(event_name, [])

    def event_handler(self, event_name: str) -> Callable[[HandlerT], HandlerT]:
        """Decorator attaching a handler (sync or async) to ``event_name``."""

        def decorator(handler: HandlerT) -> HandlerT:
            self.add_event_handler(event_name, handler)
            return handler

        return decorator

    def add_event_handler(self, event_name: str, handler: Callable[..., Any]) -> None:
        """Attach ``handler`` to ``event_name``; unknown names are an error (a typo guard)."""
        if event_name not in self._event_handlers:
            known = ", ".join(sorted(self._event_handlers)) or "none"
            raise ValueError(f"{type(self).__name__} has no event {event_name!r} (known: {known})")
        self._event_handlers[event_name].append(handler)

    def has_event_handlers(self, event_name: str) -> bool:
        """Whether anything listens to ``event_name``."""
        return bool(self._event_handlers.get(event_name))

    async def _call_event_handler(self, event_name: str, *args: Any) -> None:
        """Run the handlers of ``event_name`` with ``(self, *args)``.

        Each async handler runs in a task of its own: a handler may await for long, or
        cancel the very pipeline whose frame triggered it, without blocking that frame.
        """
        for handler in self._event_handlers.get(event_name, ()):
            try:
                result = handler(self, *args)
            except Exception:
                logger.exception("event handler %s for %s failed", event_name, type(self).__name__)
                continue
            if inspect.isawaitable(result):
                task = asyncio.ensure_future(self._guard_handler(event_name, result))
                self._handler_tasks.add(task)
                task.add_done_callback(self._handler_tasks.discard)

    async def _guard_handler(self, event_name: str, awaitable: Awaitable[Any]) -> None:
        try:
            await awaitable
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("event handler %s for %s failed", event_name, type(self).__name__)

    def _drop_event_handlers(self) -> None:
        # Handlers are closures that mostly refer back to this object (or its call): at the
        # end of a call they go, so that the call's objects are no cycle.
        for handlers in self._event_handlers.values():
            handlers.clear()

    async def wait_for_event_handlers(self, timeout: float = 5.0) -> None:
        """Wait (bounded) for running async event handlers to finish."""
        if self._handler_tasks:
            await asyncio.wait(set(self._handler_tasks), timeout=timeout)


class FrameProcessor(EventHandlerMixin):
    """A pipeline stage. Subclass it and override :meth:`process_frame`.

    ``process_frame`` must call ``await super().process_frame(frame, direction)`` first
    (it records the pipeline settings from the :class:`StartFrame`) and then push the
    frames it wants to pass on; a frame that is not pushed stops here.
    """

    def __init__(self, *, name: str | None = None, **kwargs: Any) -> None:
        super().__init__()
        self.id = next(_processor_ids)
        self.name = name or f"{type(self).__name__}#{self.id}"
        self._prev: FrameProcessor | None = None
        self._next: FrameProcessor | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._started = False
        self._allow_interruptions = True
        self._enable_metrics = True
        self._interruption_min_secs = 0.0
        self._interruption_min_words = 0
        self._ttfb_started_at: float | None = None

    # ------------------------------------------------------------------- linking

    def link(self, processor: FrameProcessor) -> None:
        """Make ``processor`` the next stage downstream of this one."""
        self._next = processor
        processor._prev = self

    @property
    def next(self) -> FrameProcessor | None:
        """The processor downstream of this one."""
        return self._next

    @property
    def previous(self) -> FrameProcessor | None:
        """The processor upstream of this one."""
        return self._prev

    def processors_within(self) -> list[FrameProcessor]:
        """This processor and, for containers like a pipeline, every processor inside."""
        return [self]

    def _release(self) -> None:
        """The pipeline has finished (its task calls this): drop what links the call's objects
        into cycles (the neighbours, the event handlers), so that they are freed at once.

        A subclass that holds a reference back to an object holding it overrides this.
        """
        self._prev = None
        self._next = None
        self._drop_event_handlers()

    # ---------------------------------------------------------------- settings

    @property
    def started(self) -> bool:
        """Whether a :class:`StartFrame` has passed through."""
        return self._started

    @property
    def interruptions_allowed(self) -> bool:
        """Whether the pipeline lets the caller interrupt the bot."""
        return self._allow_interruptions

    @property
    def metrics_enabled(self) -> bool:
        """Whether the pipeline collects metrics."""
        return self._enable_metrics

    # ------------------------------------------------------------------- frames

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Handle one frame. The base records pipeline settings; it pushes nothing."""
        if isinstance(frame, StartFrame):
            self._started = True
            self._allow_interruptions = frame.allow_interruptions
            self._enable_metrics = frame.enable_metrics
            self._interruption_min_secs = frame.interruption_min_secs
            self._interruption_min_words = frame.interruption_min_words
        elif isinstance(frame, CancelFrame):
            self.cancel_all_tasks()

    async def push_frame(self, frame: Frame, direction: FrameDirection = FrameDirection.DOWNSTREAM) -> None:
        """Pass ``frame`` to the next processor in ``direction`` (a direct call)."""
        target = self._next if direction is FrameDirection.DOWNSTREAM else self._prev
        if target is not None:
            await target.queue_frame(frame, direction)

    async def queue_frame(self, frame: Frame, direction: FrameDirection = FrameDirection.DOWNSTREAM) -> None:
        """Deliver ``frame`` to this processor.

        An exception in ``process_frame`` is contained here: it is logged (with the
        call id) and reported upstream as a non-fatal :class:`ErrorFrame`, so one bad
        frame never unwinds the caller's input loop.
        """
        try:
            await self.process_frame(frame, direction)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.exception("%s failed on %s", self.name, frame.name)
            if not isinstance(frame, ErrorFrame):
                await self.push_error(f"{self.name}: {exc}", fatal=False)

    async def push_error(self, error: str, *, fatal: bool = False) -> None:
        """Report an error upstream (a fatal one ends the pipeline)."""
        await self.push_frame(
            ErrorFrame(error=error, fatal=fatal, processor=self.name), FrameDirection.UPSTREAM
        )

    # -------------------------------------------------------------------- tasks

    def create_task(self, coro: Coroutine[Any, Any, Any], name: str | None = None) -> asyncio.Task[Any]:
        """Start a task owned by this processor; it is cancelled when the pipeline stops."""
        task = asyncio.ensure_future(coro)
        if name:
            task.set_name(f"{self.name}:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("%s task %s failed", self.name, task.get_name(), exc_info=task.exception())

    async def cancel_task(self, task: asyncio.Task[Any] | None, timeout: float = 2.0) -> None:
        """Cancel one of this processor's tasks and wait (bounded) for it to end."""
        if task is None or task.done():
            return
        task.cancel()
        if task is asyncio.current_task():
            return
        await asyncio.wait({task}, timeout=timeout)

    def cancel_all_tasks(self) -> None:
        """Cancel every task this processor started (except the one running this)."""
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current:
                task.cancel()

    async def setup(self) -> None:
        """Called once before the pipeline starts."""

    async def cleanup(self) -> None:
        """Called once after the pipeline ended: cancel and await every task left."""
        current = asyncio.current_task()
        tasks = [t for t in self._tasks | self._handler_tasks if t is not current and not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)

    # ------------------------------------------------------------------ metrics

    def start_ttfb_metrics(self) -> None:
        """Start timing time-to-first-byte for the current request."""
        if self._enable_metrics:
            self._ttfb_started_at = time.monotonic()

    async def stop_ttfb_metrics(self, model: str | None = None) -> None:
        """Stop the time-to-first-byte timer and push a :class:`MetricsFrame`."""
        if self._ttfb_started_at is None:
            return
        value = time.monotonic() - self._ttfb_started_at
        self._ttfb_started_at = None
        data = MetricsData(name="ttfb", value=value, processor=self.name, model=model)
        logger.info("metrics %s ttfb=%.1fms", self.name, value * 1000)
        await self.push_frame(MetricsFrame(data=[data]))

    def __repr__(self) -> str:
        return self.name
