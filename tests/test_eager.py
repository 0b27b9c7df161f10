"""run_eager: step a coroutine in place; hand it to a task only if it has to wait."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from callpipe.eager import run_eager

call_id: contextvars.ContextVar[str] = contextvars.ContextVar("call_id", default="none")

DEADLINE = 2.0


async def _never_waits(log: list[str], value: int) -> int:
    log.append(f"ran {value}")
    return value


async def _waits_on(fut: asyncio.Future[int], log: list[str]) -> int:
    log.append("before")
    result = await fut
    log.append("after")
    return result * 2


async def test_returns_none_when_the_coroutine_never_suspends() -> None:
    log: list[str] = []
    loop = asyncio.get_running_loop()
    ticked: list[bool] = []
    loop.call_soon(ticked.append, True)
    assert run_eager(_never_waits(log, 7)) is None
    assert log == ["ran 7"]  # ran synchronously, inside the call
    assert not ticked


async def test_exception_before_the_first_wait_propagates_to_the_caller() -> None:
    async def fails_at_once() -> None:
        raise ValueError("immediately")

    with pytest.raises(ValueError, match="immediately"):
        run_eager(fails_at_once())


async def test_returns_a_task_that_finishes_the_coroutine_with_its_result() -> None:
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[int] = loop.create_future()
    log: list[str] = []
    task = run_eager(_waits_on(fut, log))
    assert isinstance(task, asyncio.Task)
    assert log == ["before"]  # the first step ran in place
    await asyncio.sleep(0)
    assert not task.done()
    fut.set_result(21)
    assert await asyncio.wait_for(task, DEADLINE) == 42
    assert log == ["before", "after"]


async def test_many_suspensions_and_sleep_zero() -> None:
    async def chatty() -> list[int]:
        seen = []
        for i in range(20):
            await asyncio.sleep(0)  # a bare yield (None) to the task
            seen.append(i)
        await asyncio.sleep(0.01)  # a real future
        return seen

    task = run_eager(chatty())
    assert task is not None
    assert await asyncio.wait_for(task, DEADLINE) == list(range(20))


async def test_future_already_done_when_the_task_starts() -> None:
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[int] = loop.create_future()
    log: list[str] = []
    task = run_eager(_waits_on(fut, log))
    assert task is not None
    fut.set_result(5)  # before the task's first step
    assert await asyncio.wait_for(task, DEADLINE) == 10


async def test_exception_after_suspension_propagates_through_the_task() -> None:
    async def fails_later() -> None:
        await asyncio.sleep(0)
        raise KeyError("later")

    task = run_eager(fails_later())
    assert task is not None
    with pytest.raises(KeyError, match="later"):
        await asyncio.wait_for(task, DEADLINE)


async def test_exception_set_on_the_awaited_future_reaches_the_coroutine() -> None:
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[int] = loop.create_future()
    caught: list[BaseException] = []

    async def handles() -> str:
        try:
            await fut
        except OSError as exc:
            caught.append(exc)
            await asyncio.sleep(0)
            return "handled"
        return "not reached"

    task = run_eager(handles())
    assert task is not None
    fut.set_exception(OSError("socket gone"))
    assert await asyncio.wait_for(task, DEADLINE) == "handled"
    assert isinstance(caught[0], OSError)


def _cancellable(log: list[str]) -> Callable[[], Awaitable[None]]:
    async def coro() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            log.append("cancelled")
            raise
        finally:
            log.append("finally")

    return coro


async def test_cancelling_the_task_cancels_the_coroutine() -> None:
    log: list[str] = []
    task = run_eager(_cancellable(log)())  # type: ignore[arg-type]
    assert task is not None
    await asyncio.sleep(0.01)  # the task is now waiting inside the coroutine
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, DEADLINE)
    assert task.cancelled()
    assert log == ["cancelled", "finally"]


async def test_cancelling_the_task_at_once_still_cancels_the_coroutine() -> None:
    log: list[str] = []
    task = run_eager(_cancellable(log)())  # type: ignore[arg-type]
    assert task is not None
    task.cancel()  # e.g. the call hangs up in the same loop iteration
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, DEADLINE)
    assert log == ["cancelled", "finally"]


async def test_coroutine_may_swallow_the_cancellation() -> None:
    async def stubborn() -> str:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            return "cleaned up"
        return "slept"

    task = run_eager(stubborn())
    assert task is not None
    await asyncio.sleep(0.01)
    task.cancel()
    assert await asyncio.wait_for(task, DEADLINE) == "cleaned up"


async def test_runs_in_the_given_context_before_and_after_suspension() -> None:
    call_id.set("outer")
    context = contextvars.copy_context()
    context.run(call_id.set, "call-1")
    seen: list[tuple[str, str]] = []

    async def logs() -> str:
        seen.append(("before", call_id.get()))
        await asyncio.sleep(0.01)
        seen.append(("after", call_id.get()))
        call_id.set("changed inside")
        return call_id.get()

    task = run_eager(logs(), context=context)
    assert seen == [("before", "call-1")]
    assert call_id.get() == "outer"  # the caller's context is untouched
    assert task is not None
    assert await asyncio.wait_for(task, DEADLINE) == "changed inside"
    assert seen == [("before", "call-1"), ("after", "call-1")]
    assert call_id.get() == "outer"
    assert context[call_id] == "changed inside"  # it really ran in *that* context


async def test_context_of_a_coroutine_that_never_suspends() -> None:
    context = contextvars.copy_context()
    context.run(call_id.set, "call-2")
    seen: list[str] = []

    async def quick() -> None:
        seen.append(call_id.get())
        call_id.set("set inside")

    assert run_eager(quick(), context=context) is None
    assert seen == ["call-2"]
    assert context[call_id] == "set inside"
    assert call_id.get() != "set inside"


async def test_without_a_context_the_task_copies_the_callers() -> None:
    call_id.set("caller")
    seen: list[str] = []

    async def reads() -> None:
        await asyncio.sleep(0)
        seen.append(call_id.get())

    task = run_eager(reads())
    assert task is not None
    call_id.set("changed after the call")
    await asyncio.wait_for(task, DEADLINE)
    assert seen == ["caller"]


async def test_tasks_of_the_same_context_keep_their_order() -> None:
    """Several eager sends in one call's context, each waiting on the one before."""
    context = contextvars.copy_context()
    order: list[int] = []
    gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def step(i: int, previous: asyncio.Task[Any] | None) -> None:
        if previous is not None:
            await previous
        elif i == 0:
            await gate
        order.append(i)

    previous: asyncio.Task[Any] | None = None
    for i in range(5):
        task = run_eager(step(i, previous), context=context)
        assert task is not None
        previous = task
    gate.set_result(None)
    assert previous is not None
    await asyncio.wait_for(previous, DEADLINE)
    assert order == [0, 1, 2, 3, 4]


def test_works_under_uvloop() -> None:
    uvloop = pytest.importorskip("uvloop")
    context = contextvars.copy_context()
    context.run(call_id.set, "uv-call")

    async def scenario() -> tuple[Any, ...]:
        log: list[str] = []
        assert run_eager(_never_waits(log, 1)) is None

        seen: list[str] = []

        async def waits() -> int:
            seen.append(call_id.get())
            await asyncio.sleep(0.01)
            seen.append(call_id.get())
            return 3

        task = run_eager(waits(), context=context)
        assert task is not None
        result = await asyncio.wait_for(task, DEADLINE)

        async def fails() -> None:
            await asyncio.sleep(0)
            raise RuntimeError("uv boom")

        failing = run_eager(fails())
        assert failing is not None
        with pytest.raises(RuntimeError, match="uv boom"):
            await failing

        cancel_log: list[str] = []
        cancelled = run_eager(_cancellable(cancel_log)())  # type: ignore[arg-type]
        assert cancelled is not None
        await asyncio.sleep(0.01)
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        return log, result, seen, cancel_log, type(asyncio.get_running_loop()).__module__

    loop = uvloop.new_event_loop()
    try:
        log, result, seen, cancel_log, loop_module = loop.run_until_complete(scenario())
    finally:
        loop.close()
    assert loop_module.startswith("uvloop")
    assert log == ["ran 1"]
    assert result == 3
    assert seen == ["uv-call", "uv-call"]
    assert cancel_log == ["cancelled", "finally"]


async def test_nested_run_eager_in_the_same_context() -> None:
    context = contextvars.copy_context()
    results: list[Any] = []

    async def inner() -> str:
        return call_id.get()

    async def outer() -> None:
        await asyncio.sleep(0)
        coro = inner()
        try:
            results.append(run_eager(coro, context=context))
        finally:
            coro.close()  # no-op once it ran

    context.run(call_id.set, "nested")
    task = run_eager(outer(), context=context)
    assert task is not None
    await asyncio.wait_for(task, DEADLINE)
    assert results == [None]
