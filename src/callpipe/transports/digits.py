"""Collect DTMF digits from a call: ``await collect_digits(transport, max_digits=6)``.

Each call's transport holds a :class:`DigitCollector`. While a collection runs, the input
transport hands every key press to it instead of pushing an ``InputDTMFFrame`` downstream
(so the LLM does not answer each key of an account number); the key is still recorded as
a ``dtmf`` event. A collection stops at the terminator (not included in the digits), at
``max_digits``, when no key came for ``timeout`` seconds (the wait restarts with each key),
or when the call ends. The result goes into the call's record as a ``digits`` event.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from callpipe.records import observer as records

if TYPE_CHECKING:
    from callpipe.transports.fastapi import FastAPIWebsocketTransport

__all__ = ["DigitCollector", "DigitResult", "collect_digits"]

StopReason = Literal["terminator", "max_digits", "timeout", "ended"]


@dataclass(frozen=True, slots=True)
class DigitResult:
    """The digits collected (terminator excluded) and why the collection stopped."""

    digits: str
    reason: StopReason

    def to_dict(self) -> dict[str, str]:
        """``{"digits": ..., "reason": ...}`` (a tool result, a record event)."""
        return {"digits": self.digits, "reason": self.reason}


class DigitCollector:
    """One call's key presses, for at most one collection at a time."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[str] | None = None
        self._ended = False

    @property
    def active(self) -> bool:
        """Whether a collection is running (key presses go to it)."""
        return self._queue is not None

    def feed(self, digit: str) -> bool:
        """A key press arrived; ``True`` if a collection took it (do not push it on)."""
        if self._queue is None:
            return False
        self._queue.put_nowait(digit)
        return True

    def end(self) -> None:
        """The call ended: a running collection stops with what it has."""
        self._ended = True
        if self._queue is not None:
            self._queue.put_nowait("")

    async def collect(
        self, *, max_digits: int = 6, terminator: str | None = "#", timeout: float = 5.0
    ) -> DigitResult:
        """Collect key presses until the terminator, ``max_digits``, ``timeout`` s without a key, or the end."""
        if max_digits < 1:
            raise ValueError("max_digits must be at least 1")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        if self._queue is not None:
            raise RuntimeError("a digit collection is already running on this call")
        digits = ""
        reason: StopReason = "ended"
        queue: asyncio.Queue[str] = asyncio.Queue()
        self._queue = queue
        try:
            while not self._ended:
                try:
                    digit = await asyncio.wait_for(queue.get(), timeout)
                except TimeoutError:
                    reason = "timeout"
                    break
                if not digit:
                    break  # the call ended
                if terminator and digit == terminator:
                    reason = "terminator"
                    break
                digits += digit
                if len(digits) >= max_digits:
                    reason = "max_digits"
                    break
        finally:
            self._queue = None
        result = DigitResult(digits, reason)
        observer = records.current()
        if observer is not None:
            observer.event("digits", reason, result.to_dict())
        return result


async def collect_digits(
    transport: FastAPIWebsocketTransport,
    *,
    max_digits: int = 6,
    terminator: str | None = "#",
    timeout: float = 5.0,
) -> DigitResult:
    """Collect DTMF digits from the call of ``transport`` (see :class:`DigitCollector`)."""
    return await transport.digits.collect(max_digits=max_digits, terminator=terminator, timeout=timeout)
