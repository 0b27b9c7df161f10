"""`SimulatedCaller(reorder=, duplicate=)` over a real WebSocket: the reorder window gives back the same audio."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import FastAPI, WebSocket, WebSocketDisconnect

from callpipe.audio import get_codec
from callpipe.server.background import BackgroundServer
from callpipe.sim.caller import CallerTurn, SimulatedCaller
from callpipe.telnyx import protocol
from callpipe.telnyx.reorder import Gap, ReorderBuffer, order_key
from callpipe.telnyx.stream import Role, Stream
from tests.conftest import tone


def _receiver_app(heard: list[dict[str, Any]]) -> FastAPI:
    """A bot side that only listens: the stream machine, the reorder window, the decoded audio."""
    app = FastAPI()

    @app.websocket("/ws")
    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        stream = Stream(Role.APP)
        buffer: ReorderBuffer[bytes] = ReorderBuffer(window=3, first_key=1)
        decoder = get_codec("PCMU").new_instance()
        pcm = bytearray()

        def play(item: bytes | Gap) -> None:
            pcm.extend(bytes(320 * item.frames) if isinstance(item, Gap) else decoder.decode(item))

        try:
            while True:
                for event in stream.receive(await websocket.receive_text()):
                    if isinstance(event, protocol.MediaEvent):
                        key = order_key(event)
                        assert key is not None
                        if buffer.push(key, event.payload):
                            play(event.payload)
                        else:
                            for item in buffer.ready():
                                play(item)
                    elif isinstance(event, protocol.StopEvent):
                        for item in buffer.flush():
                            play(item)
                        heard.append(
                            {"pcm": bytes(pcm), "counters": buffer.counters, "stream": stream.counters}
                        )
                        await websocket.close()
                        return
        except WebSocketDisconnect:
            heard.append({"pcm": bytes(pcm), "counters": buffer.counters, "stream": stream.counters})

    return app


async def test_shuffled_and_duplicated_media_give_the_same_audio() -> None:
    audio = tone(1.0, freq=440)
    heard: list[dict[str, Any]] = []
    with BackgroundServer(_receiver_app(heard)) as server:
        results = []
        for kw in ({}, {"reorder": 0.3, "duplicate": 0.2, "seed": 7}):
            caller = SimulatedCaller(server.ws_url + "/ws", **kw)  # type: ignore[arg-type]
            turn = CallerTurn(audio=audio, text="tone", wait_for_bot=False)
            results.append(await caller.run([turn], hang_up_after_secs=0.2))
        for _ in range(100):
            if len(heard) == 2:
                break
            await asyncio.sleep(0.02)
    in_order, shuffled = results
    assert in_order.media_reordered == 0 and in_order.media_duplicated == 0
    assert shuffled.media_reordered > 5 and shuffled.media_duplicated > 5
    assert heard[0]["counters"].reordered == 0
    assert heard[0]["pcm"] == in_order.caller_track
    counters = heard[1]["counters"]
    assert heard[1]["stream"].media_out_of_order > 0  # the stream machine saw the disorder ...
    assert counters.reordered >= shuffled.media_reordered  # ... and the window undid it
    assert counters.duplicates == shuffled.media_duplicated
    assert counters.gaps == 0 and counters.late == 0
    got, sent = heard[1]["pcm"], shuffled.caller_track
    first_diff = next((i for i in range(min(len(got), len(sent))) if got[i] != sent[i]), None)
    assert got == sent, (len(got), len(sent), first_diff)
    # The same words either way (the tone starts on the first frame of both calls).
    n = len(audio)
    assert heard[1]["pcm"][:n] == heard[0]["pcm"][:n]
