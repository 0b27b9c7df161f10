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
import types
from collections.abc import Coroutine, Generator
from typing import Any


@types.coroutine
def _resume(coro: Coroutine[Any, Any, Any], waiting_on: Any) -> Generator[Any, Any, Any]:
    # Hand the future the coroutine is waiting on to the task running us, then keep
    # driving the coroutine with whatever the task sends or throws back.
    while True:
        try:
            value = yield waiting_on
        except BaseException as exc:  # re-delivered to the coroutine
            try:
                waiting_on = coro.throw(exc)
            except StopIteration as stop:
                return stop.value
        else:
            try:
                waiting_on = coro.send(value)
            except StopIteration as stop:
                return stop.value


async def _finish(coro: Coroutine[Any, Any, Any], waiting_on: Any) -> Any:
    return await _resume(coro, waiting_on)


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
    loop = asyncio.get_running_loop()
    return loop.create_task(_finish(coro, waiting_on), context=context)
