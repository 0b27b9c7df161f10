"""The simulated caller's `Outbox` over a real WebSocket: order, reordering, duplicates, a lost peer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve

from callpipe.sim.call_result import CallResult
from callpipe.sim.outbox import Outbox


class _Peer:
    """A WebSocket server on 127.0.0.1 that keeps what it receives; ``hang_up`` closes it."""

    def __init__(self) -> None:
        self.received: list[str] = []
        self.arrived = asyncio.Condition()
        self.hang_up = asyncio.Event()

    async def handle(self, connection: ServerConnection) -> None:
        receiving = asyncio.ensure_future(self._receive(connection))
        await self.hang_up.wait()
        receiving.cancel()
        await connection.close()

    async def _receive(self, connection: ServerConnection) -> None:
        async for message in connection:
            async with self.arrived:
                self.received.append(str(message))
                self.arrived.notify_all()

    async def wait_for(self, count: int) -> list[str]:
        async with self.arrived:
            await asyncio.wait_for(self.arrived.wait_for(lambda: len(self.received) >= count), 5)
        return self.received


@asynccontextmanager
async def _connected() -> AsyncIterator[tuple[_Peer, ClientConnection]]:
    peer = _Peer()
    async with serve(peer.handle, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        try:
            async with connect(f"ws://127.0.0.1:{port}") as client:
                yield peer, client
        finally:
            peer.hang_up.set()  # the server's close waits for its handler


def _result() -> CallResult:
    return CallResult(stream_id="s", call_control_id="c", connected_at=0.0)


async def test_messages_arrive_in_the_order_they_were_queued() -> None:
    async with _connected() as (peer, client):
        outbox = Outbox(asyncio.Event(), lambda: None)
        outbox.start(client, _result())
        messages = [f"m{i}" * 2000 for i in range(200)]  # enough to fill the socket's buffer
        for message in messages:
            outbox.send_nowait(message)
        await outbox.send("last")
        assert await peer.wait_for(201) == [*messages, "last"]


async def test_reordered_frames_go_out_after_their_successor_and_the_last_is_released_once() -> None:
    async with _connected() as (peer, client):
        result = _result()
        outbox = Outbox(asyncio.Event(), lambda: None, reorder=1.0, seed=1)
        outbox.start(client, result)
        for index in range(1, 6):
            outbox.send_media(f"f{index}")
        assert result.media_reordered == 3
        outbox.release_held()
        outbox.release_held()  # the held frame was sent: nothing more to release
        await outbox.send("end")
        assert await peer.wait_for(6) == ["f2", "f1", "f4", "f3", "f5", "end"]


async def test_duplicated_frames_are_sent_twice_and_counted() -> None:
    async with _connected() as (peer, client):
        result = _result()
        outbox = Outbox(asyncio.Event(), lambda: None, duplicate=1.0, seed=1)
        outbox.start(client, result)
        outbox.send_media("f1")
        outbox.send_media("f2")
        await outbox.flush(5)
        assert await peer.wait_for(4) == ["f1", "f1", "f2", "f2"]
        assert result.media_duplicated == 2


async def test_a_closed_peer_is_reported_once_and_later_messages_are_dropped() -> None:
    async with _connected() as (peer, client):
        closed = asyncio.Event()
        lost: list[bool] = []
        outbox = Outbox(closed, lambda: lost.append(True))
        outbox.start(client, _result())
        await outbox.send("hello")
        await peer.wait_for(1)
        peer.hang_up.set()
        await asyncio.wait_for(client.wait_closed(), 5)
        await outbox.send("after the close")
        assert lost == [True] and closed.is_set()
        outbox.send_nowait("dropped")
        await outbox.flush(1)
        assert lost == [True]
        assert peer.received == ["hello"]
