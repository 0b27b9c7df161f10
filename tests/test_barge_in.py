"""Barge-in order: the output stops and ``clear`` goes out first, then upstream work is cancelled.

The transport runs over a stand-in WebSocket that records what is written and can be made
to block (a congested socket), so the wire order is exact.
"""

from __future__ import annotations

import asyncio
import json
import time
from types import SimpleNamespace
from typing import Any

from starlette.websockets import WebSocketState

from callpipe.pipeline import Pipeline, PipelineParams, PipelineTask
from callpipe.pipeline.frames import (
    BotInterruptionFrame,
    Frame,
    InterruptionFrame,
    StartFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSTextFrame,
)
from callpipe.pipeline.processor import FrameDirection, FrameProcessor
from callpipe.transports.fastapi import FastAPIWebsocketParams, FastAPIWebsocketTransport
from callpipe.transports.serializers import TelnyxFrameSerializer
from tests.conftest import tone
from tests.helpers import Recorder, wait_until


class WireSocket:
    """Records every text written; with ``gate`` cleared a send waits after writing (a full socket)."""

    def __init__(self) -> None:
        self.sent: list[tuple[float, str]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.state = SimpleNamespace()
        self.client_state = WebSocketState.CONNECTED
        self._never = asyncio.Event()

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append((time.monotonic(), message["text"]))
        await self.gate.wait()  # written, but the socket's buffer must drain first

    async def receive(self) -> dict[str, Any]:
        await self._never.wait()
        return {"type": "websocket.disconnect"}

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.client_state = WebSocketState.DISCONNECTED

    def events(self) -> list[str]:
        return [json.loads(text)["event"] for _, text in self.sent]


class SlowToCancel(FrameProcessor):
    """Takes ``secs`` to pass an InterruptionFrame on (a service cancelling a request)."""

    def __init__(self, secs: float) -> None:
        super().__init__(name="slow")
        self.secs = secs
        self.interruption_at: float | None = None

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, InterruptionFrame):
            self.interruption_at = time.monotonic()
            await asyncio.sleep(self.secs)
        await self.push_frame(frame, direction)


async def _running(slow_secs: float) -> tuple[WireSocket, FastAPIWebsocketTransport, PipelineTask, Any, Any]:
    ws = WireSocket()
    transport = FastAPIWebsocketTransport(
        ws,  # type: ignore[arg-type]
        FastAPIWebsocketParams(serializer=TelnyxFrameSerializer(stream_id="s-1"), receive_timeout_secs=None),
    )
    slow = SlowToCancel(slow_secs)
    after = Recorder(name="after")
    task = PipelineTask(
        Pipeline([transport.input(), slow, transport.output(), after]),
        params=PipelineParams(audio_in_sample_rate=8000, audio_out_sample_rate=8000),
        idle_timeout_secs=None,
    )
    run = asyncio.ensure_future(task.run())
    await wait_until(lambda: bool(after.seen(StartFrame)))
    return ws, transport, task, run, (slow, after)


async def _speak(task: PipelineTask, secs: float, words: list[str] = []) -> None:  # noqa: B006
    frames: list[Frame] = [TTSStartedFrame()]
    pcm = tone(secs)
    step = 640  # 40 ms at 8 kHz
    for i in range(0, len(pcm), step):
        frames.append(TTSAudioRawFrame(audio=pcm[i : i + step], sample_rate=8000))
        if words and i // step % 5 == 0:
            frames.append(TTSTextFrame(words.pop(0)))
    await task.queue_frames(frames)


async def test_clear_goes_out_before_upstream_processors_finish_cancelling() -> None:
    ws, transport, task, run, (slow, after) = await _running(slow_secs=1.0)
    try:
        await _speak(task, 3.0, ["a", "b", "c", "d", "e", "f", "g", "h"])
        await wait_until(lambda: ws.events().count("media") >= 10)
        started = time.monotonic()
        interrupt = asyncio.ensure_future(transport.input()._interrupt())
        await wait_until(lambda: "clear" in ws.events(), timeout=0.5)
        clear_at = next(t for t, text in ws.sent if '"clear"' in text)
        assert clear_at - started < 0.05  # not after the slow processor's second
        assert slow.interruption_at is not None and slow.interruption_at >= clear_at
        # While the slow processor is still cancelling, the output plays nothing more.
        media_before = ws.events().count("media")
        await asyncio.sleep(0.3)
        assert ws.events().count("media") == media_before
        assert ws.events()[-1] == "clear"
        await asyncio.wait_for(interrupt, 3)
        # Words of the interrupted reply that never played never reach the aggregator side.
        heard = [f.text for f in after.seen(TTSTextFrame)]
        assert len(heard) < 8
        # The interruption arrived; a new reply plays normally.
        await _speak(task, 0.4)
        await wait_until(lambda: ws.events().count("media") > media_before)
        assert ws.events().index("clear") < len(ws.events()) - 1
    finally:
        await task.cancel("test over")
        await asyncio.wait_for(run, 5)


async def test_a_pending_media_send_is_never_overtaken_by_clear_nor_clear_by_media() -> None:
    ws, transport, task, run, _ = await _running(slow_secs=0.0)
    try:
        ws.gate.clear()  # the socket is full: the first send (media, then its mark) waits
        await _speak(task, 2.0)
        await wait_until(lambda: ws.events() == ["media"])
        await asyncio.sleep(0.2)  # the clock ticks on; what falls due waits behind that send
        await transport.input()._interrupt()
        assert ws.events() == ["media"]  # clear did not jump the queue
        ws.gate.set()
        await wait_until(lambda: "clear" in ws.events())
        await asyncio.sleep(0.2)
        # The send under way finished (its mark) before clear; nothing of the old reply after.
        assert ws.events() == ["media", "mark", "clear"]
    finally:
        await task.cancel("test over")
        await asyncio.wait_for(run, 5)


async def _goodbye_then_hang_up(*, caller_talks_over_it: bool) -> tuple[list[str], list[Frame]]:
    """The bot's last reply, then the end of the call; what went on the wire and past the output."""
    ws, transport, task, run, (_slow, after) = await _running(slow_secs=0.0)
    try:
        await _speak(task, 1.5)
        await task.stop_when_done()
        await wait_until(lambda: ws.events().count("media") >= 10)
        if caller_talks_over_it:
            await transport.input()._user_started()  # the VAD hears the caller
            await transport.input().process_frame(BotInterruptionFrame(), FrameDirection.UPSTREAM)
        await asyncio.wait_for(run, 5)
        return ws.events(), after.seen(InterruptionFrame)
    finally:
        if not run.done():
            await task.cancel("test over")
            await asyncio.wait_for(run, 5)


async def test_the_goodbye_before_a_hang_up_is_not_interrupted() -> None:
    # The bot said goodbye and ended the call: the EndFrame follows the goodbye's audio.
    # The caller talking over it (a VAD start, or enough words) must not cut it off: the
    # call hangs up once it has played, so an interruption would only lose the goodbye.
    undisturbed, _ = await _goodbye_then_hang_up(caller_talks_over_it=False)
    talked_over, interruptions = await _goodbye_then_hang_up(caller_talks_over_it=True)
    assert "clear" not in talked_over and not interruptions
    assert talked_over.count("media") == undisturbed.count("media") > 50
