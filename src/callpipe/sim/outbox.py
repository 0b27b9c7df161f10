"""The simulated caller's sending side: its messages written to the WebSocket in order.

A message is written at once when the socket is idle, otherwise queued for the one task
that drains the queue, so the caller's clock never waits on the socket. Media frames can
be made to misbehave like a network (``reorder``: sent after the next frame; ``duplicate``:
sent twice), seeded for repeatable runs.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import random
from collections.abc import Callable

import websockets
from websockets.asyncio.client import ClientConnection

from callpipe.eager import run_eager
from callpipe.sim.call_result import CallResult

__all__ = ["Outbox"]


class Outbox:
    """Writes one call's messages in order; ``closed`` stops it, ``on_lost`` hears of a close."""

    def __init__(
        self,
        closed: asyncio.Event,
        on_lost: Callable[[], None],
        *,
        reorder: float = 0.0,
        duplicate: float = 0.0,
        seed: int | None = None,
    ) -> None:
        self._closed = closed
        self._on_lost = on_lost
        self.reorder = reorder
        self.duplicate = duplicate
        self._rng = random.Random(seed) if reorder > 0 or duplicate > 0 else None
        self._held_media: str | None = None
        self._ws: ClientConnection | None = None
        self._result: CallResult | None = None
        self._queue: collections.deque[str] = collections.deque()
        self._sender: asyncio.Task[None] | None = None

    def start(self, ws: ClientConnection, result: CallResult) -> None:
        """Send on ``ws``; count misbehaving frames into ``result``."""
        self._ws = ws
        self._result = result

    async def send(self, text: str) -> None:
        """Send ``text`` after everything queued before it, and wait until it is written."""
        self.send_nowait(text)
        sender = self._sender
        if sender is not None and not sender.done():
            await asyncio.shield(sender)

    def send_nowait(self, text: str) -> None:
        """Queue ``text``; written at once unless the socket is busy (then by one task, in order)."""
        if self._ws is None or self._closed.is_set():
            return
        self._queue.append(text)
        if self._sender is None or self._sender.done():
            self._sender = run_eager(self._drain())

    async def _drain(self) -> None:
        ws = self._ws
        queue = self._queue
        try:
            while queue and ws is not None:
                await ws.send(queue.popleft())
        except websockets.ConnectionClosed:
            queue.clear()
            self._on_lost()
            self._closed.set()

    def send_media(self, text: str) -> None:
        """Send a media message, reordered or duplicated as the network is set to misbehave."""
        rng = self._rng
        if rng is None:
            self.send_nowait(text)
            return
        assert self._result is not None
        held = self._held_media
        if held is None and rng.random() < self.reorder:
            self._held_media = text  # goes out after the next frame
            self._result.media_reordered += 1
            return
        self.send_nowait(text)
        if rng.random() < self.duplicate:
            self.send_nowait(text)
            self._result.media_duplicated += 1
        if held is not None:
            self.send_nowait(held)
            self._held_media = None

    def release_held(self) -> None:
        """Send the frame held back to be reordered, if any (the call is ending)."""
        held, self._held_media = self._held_media, None
        if held is not None:
            self.send_nowait(held)

    async def flush(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for what is queued to be written."""
        if self._sender is not None and not self._sender.done():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(self._sender), timeout)
