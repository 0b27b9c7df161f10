"""A hostile Telnyx peer for the flood tests, run in its own process.

``python -m tests.flooder URL COUNT CONNECTIONS`` opens ``CONNECTIONS`` media streams to
``URL``, does the Telnyx handshake on each, then sends ``COUNT`` valid 20 ms ``media``
messages per stream as fast as TCP takes them. It prints one JSON line per stream: how
many messages went out, the close code and reason, and how long it took. Its own process,
so the flood's sending costs neither the server's loop nor the healthy callers'.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
import uuid

import websockets

from callpipe.telnyx import protocol

ONE_FRAME = bytes([0xFF]) * 160  # 20 ms of PCMU silence


async def _discard_incoming(ws: websockets.ClientConnection) -> None:
    with contextlib.suppress(websockets.ConnectionClosed):
        async for _ in ws:
            pass


async def flood(url: str, count: int) -> dict[str, object]:
    """One connection: handshake, then ``count`` media messages back to back."""
    stream_id = str(uuid.uuid4())
    sent = 0
    started = time.monotonic()
    async with websockets.connect(url, open_timeout=10, close_timeout=5, max_size=2**22) as ws:
        await ws.send(protocol.build_connected())
        await ws.send(
            protocol.build_start(
                stream_id=stream_id,
                call_control_id=f"v3:flood-{stream_id[:8]}",
                encoding="PCMU",
                sample_rate=8000,
            )
        )
        messages = [
            protocol.build_inbound_media(
                ONE_FRAME, stream_id=stream_id, sequence_number=i + 2, chunk=i + 1, timestamp=20 * i
            )
            for i in range(count)
        ]
        # Read what the bot sends (its greeting): unread, it would fill the client's
        # queue, pause reading, and hide the server's close frame behind it.
        reader = asyncio.ensure_future(_discard_incoming(ws))
        with contextlib.suppress(websockets.ConnectionClosed):
            for message in messages:
                await ws.send(message)
                sent += 1
            # Everything is written; wait (bounded) for the server to react.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ws.wait_closed(), 5)
        reader.cancel()
        return {
            "sent": sent,
            "code": ws.close_code,
            "reason": ws.close_reason,
            "secs": round(time.monotonic() - started, 3),
        }


async def main(url: str, count: int, connections: int) -> None:
    results = await asyncio.gather(*(flood(url, count) for _ in range(connections)))
    for result in results:
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
