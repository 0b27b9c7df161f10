"""Run a coroutine eagerly: to its end when it never waits, in a task only if it does.

Shared loops (the output clock that paces audio for every call) must not stall on one
call's slow socket, yet creating a task per 20 ms send would cost more than the send.
:func:`run_eager` steps the coroutine once in place; almost always it finishes right
there (a WebSocket send that fits the socket buffer). Only when it really has to wait is
the rest of it handed to a new task, exactly where it stopped. Python 3.12's eager task
factory does the same for every task; this is the 3.11 equivalent for one call site.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
from collections.abc import Coroutine, Generator
from typing import Any


class _Finish(Coroutine[Any, Any, Any]):
    # The rest of ``coro``, for a task: its first step hands the task the future ``coro``
    # is waiting on. Unlike an ``async def`` wrapper, a cancellation thrown in before that
    # first step (the task cancelled at once) still reaches ``coro``, as in a real task.

    __slots__ = ("_coro", "_waiting_on")

    def __init__(self, coro: Coroutine[Any, Any, Any], waiting_on: Any) -> None:
        self._coro = coro
        self._waiting_on: Any = waiting_on

    def send(self, value: Any) -> Any:
        waiting_on, self._waiting_on = self._waiting_on, _STEPPED
        return self._coro.send(value) if waiting_on is _STEPPED else waiting_on

    def throw(self, *args: Any) -> Any:
        waiting_on, self._waiting_on = self._waiting_on, _STEPPED
        if waiting_on is not _STEPPED and asyncio.isfuture(waiting_on):
            waiting_on.cancel()  # what Task.cancel() does to the future a task waits on
        return self._coro.throw(*args)

    def close(self) -> None:
        self._coro.close()

    def __await__(self) -> Generator[Any, Any, Any]:
        raise TypeError("_Finish is run by a task, not awaited")


_STEPPED = object()


def run_eager(
    coro: Coroutine[Any, Any, Any], *, context: contextvars.Context | None = None
) -> asyncio.Task[Any] | None:
    """Run ``coro`` now; return ``None`` if it finished, else the task that finishes it.

    With ``context``, the coroutine runs in that context (a call's, so its log lines
    carry its call id) both now and in the task. Exceptions raised before the first
    wait propagate to the caller.
    """
    try:
        waiting_on = coro.send(None) if context is None else context.run(coro.send, None)
    except StopIteration:
        return None
    except RuntimeError:
        # ``context`` is already entered: we are running in it, so step the coroutine as is.
        if context is None or inspect.getcoroutinestate(coro) != inspect.CORO_CREATED:
            raise
        try:
            waiting_on = coro.send(None)
        except StopIteration:
            return None
    loop = asyncio.get_running_loop()
    return loop.create_task(_Finish(coro, waiting_on), context=context)
