"""A simulated caller: the phone plus Telnyx's media streaming, over a real WebSocket.

It opens the bot's WebSocket exactly as Telnyx does (``connected``, ``start``, then a
``media`` message every 20 ms, paced on a monotonic clock, with string sequence
numbers, chunks and timestamps) and plays the bot's audio back like a phone: what
arrives is buffered and played in real time, ``clear`` drops what has not been played
yet, and each ``mark`` is echoed once the audio before it has played (or at once when
cleared), as Telnyx documents.

The caller speaks a script of turns; between turns it sends silence, like a phone line.
It records both sides (caller left, bot right) and a timeline per turn: when the caller
stopped speaking, when the bot's first audio arrived and was heard, gaps in the bot's
audio, and the ``clear`` messages it received.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import websockets
from websockets.asyncio.client import ClientConnection

from callpipe.audio import StreamResampler, get_codec
from callpipe.sim.call_result import CallerTurn, CallResult, TurnTiming
from callpipe.sim.outbox import Outbox
from callpipe.sim.playback import FRAME_SECS, PhonePlayback
from callpipe.telnyx import protocol
from callpipe.telnyx import stream as ts
from callpipe.transports.clock import OutputClock

__all__ = ["FRAME_SECS", "CallResult", "CallerTurn", "SimulatedCaller", "TurnTiming"]

logger = logging.getLogger("callpipe.sim")

_ids = itertools.count(1)
# After hanging up, how long the caller waits for its last messages and the receive loop.
_CLOSE_WAIT_SECS = 2.0


class SimulatedCaller:
    """Places one simulated call to a bot's WebSocket ``url``.

    ``encoding``/``sample_rate`` are the call's own codec: what the caller sends (and
    what ``start.media_format`` says). ``out_encoding``/``out_sample_rate`` are what the
    bot must send back (the stream's bidirectional codec; default: the call's), decoded
    with that codec. ``stream_track="both_tracks"`` also sends an ``outbound`` track (what
    the caller hears, in the call's codec), which the bot must not take for the caller.
    ``hears_bot=False``: the bot's audio reaches another leg (``target_legs="opposite"``),
    so this phone plays nothing (marks are still echoed). ``reorder``/``duplicate``: the
    share of media frames sent swapped with the next one or twice (see :mod:`~callpipe.sim.outbox`).
    """

    def __init__(
        self,
        url: str,
        *,
        encoding: str = "PCMU",
        sample_rate: int | None = None,
        from_number: str = "+15550001111",
        to_number: str = "+15550002222",
        custom_parameters: dict[str, Any] | None = None,
        client_state: str | None = None,
        call_control_id: str | None = None,
        stream_id: str | None = None,
        auth_token: str | None = None,
        extra_headers: dict[str, str] | None = None,
        max_call_secs: float = 60.0,
        record: bool = True,
        on_event: Callable[[str, dict[str, Any]], None] | None = None,
        reorder: float = 0.0,
        duplicate: float = 0.0,
        seed: int | None = None,
        out_encoding: str | None = None,
        out_sample_rate: int | None = None,
        stream_track: str = "inbound_track",
        hears_bot: bool = True,
    ) -> None:
        self.url = url
        self._set_up_codecs(encoding, sample_rate, out_encoding, out_sample_rate)
        self.stream_track = stream_track
        self.hears_bot = hears_bot
        self.from_number = from_number
        self.to_number = to_number
        self.custom_parameters = custom_parameters or {}
        self.client_state = client_state
        n = next(_ids)
        self.call_control_id = call_control_id or f"v3:sim-call-{n}-{uuid.uuid4().hex[:12]}"
        self.stream_id = stream_id or str(uuid.uuid4())
        self.auth_token = auth_token
        self.extra_headers = extra_headers or {}
        self.max_call_secs = max_call_secs
        self.record = record
        self.on_event = on_event
        self.reorder = reorder
        self.duplicate = duplicate
        self._closed = asyncio.Event()
        self._outbox = Outbox(
            self._closed, self._on_send_lost, reorder=reorder, duplicate=duplicate, seed=seed
        )
        self._playback = PhonePlayback(
            rate=self.out_rate, record=record, echo_mark=self._echo_mark, emit=self._emit
        )
        self._spoke_until = 0.0  # quiet is counted from the caller's own last words
        # Telnyx's side of the stream: sequence numbers, chunks, pending marks, states.
        self._stream = ts.Stream(ts.Role.TELNYX, stream_id=self.stream_id)
        self._hang_up_requested = asyncio.Event()
        self.connected = asyncio.Event()  # set once connected + start have been sent
        self._clock_start = 0.0
        self._frames_sent = 0
        self._speech: collections.deque[bytes] = collections.deque()  # encoded 20 ms frames to say
        self._caller_track = bytearray()
        self.result: CallResult | None = None

    def _set_up_codecs(
        self, encoding: str, sample_rate: int | None, out_encoding: str | None, out_sample_rate: int | None
    ) -> None:
        """The call's codec (what the caller says) and the bot's (what it hears), with their state."""
        self.codec = get_codec(encoding, sample_rate)
        self.encoding = self.codec.name
        self.rate = self.codec.sample_rate
        self.frame_samples = int(self.rate * FRAME_SECS)
        self.out_codec = self.codec if out_encoding is None else get_codec(out_encoding, out_sample_rate)
        self.out_rate = self.out_codec.sample_rate
        self._encoder = self.codec.new_instance()
        self._decoder = self.out_codec.new_instance()  # the bot's audio
        # G.722 is stateful, so the caller's own track is decoded with a separate decoder.
        self._record_decoder = self.codec.new_instance()
        self._silence = self._encoder.encode(bytes(2 * self.frame_samples))
        # The outbound track (both_tracks): what the caller hears, in the call's codec.
        self._track_encoder = self.codec.new_instance()
        self._track_resampler = StreamResampler(self.out_rate, self.rate)

    # ------------------------------------------------------------------ helpers

    def _send_event(self, event: ts.SendEvent) -> None:
        """Queue a streaming-time message; nothing once the stream has stopped."""
        if self._stream.state is ts.State.STREAMING:
            self._outbox.send_nowait(self._stream.send(event))

    def _on_send_lost(self) -> None:
        # The bot closed the socket while we were sending: noticed here first, it is
        # still the bot's close (the receive loop would otherwise find _closed set).
        if self.result is not None and not self._closed.is_set():
            self.result.closed_by = self.result.closed_by or "bot"
            if self.result.closed_at is None:
                self.result.closed_at = time.monotonic()

    def send_error(self, error: ts.Error) -> None:
        """Send a Telnyx ``error`` message on the stream (as Telnyx does for bad media)."""
        if self._stream.state in (ts.State.STREAMING, ts.State.AWAITING_START):
            self._outbox.send_nowait(self._stream.send(error))
            self._emit("error_sent", code=error.code, title=error.title)

    async def hang_up(self) -> None:
        """Hang up from outside the script (as when Telnyx ends the call): ``stop``, then close."""
        self._hang_up_requested.set()

    def _encode_turn(self, turn: CallerTurn) -> list[bytes]:
        pcm = turn.audio
        if turn.sample_rate != self.rate:
            resampler = StreamResampler(turn.sample_rate, self.rate)
            pcm = resampler.process(pcm) + resampler.flush()
        samples = np.frombuffer(pcm, dtype=np.int16)
        pad = (-len(samples)) % self.frame_samples
        if pad:
            samples = np.concatenate([samples, np.zeros(pad, dtype=np.int16)])
        encoded = self._encoder.encode(samples.tobytes())
        size = len(self._silence)
        return [encoded[i : i + size] for i in range(0, len(encoded), size)]

    @property
    def bot_is_playing(self) -> bool:
        """Whether bot audio is buffered or still playing."""
        return self._playback.queued_bytes > 0

    def _bot_quiet_for(self, now: float) -> float:
        return self._playback.quiet_for(now, self._spoke_until)

    # ------------------------------------------------------------------- run

    async def run(self, turns: Iterable[CallerTurn], *, hang_up_after_secs: float = 1.5) -> CallResult:
        """Connect, speak ``turns``, wait ``hang_up_after_secs`` of bot silence, hang up."""
        if self._hang_up_requested.is_set():
            raise RuntimeError("the call was hung up before it connected")
        headers = dict(self.extra_headers)
        if self.auth_token:
            headers["x-telnyx-streaming-auth-token"] = self.auth_token
        async with websockets.connect(
            self.url, additional_headers=headers or None, max_size=2**22, open_timeout=10
        ) as ws:
            result = await self._open_stream(ws)
            receiver = asyncio.ensure_future(self._receive_loop(ws))
            self._clock_start = time.monotonic()
            clock = OutputClock.for_running_loop()
            clock.activate(self)
            script = asyncio.ensure_future(self._script(turns, hang_up_after_secs))
            hang_up = asyncio.ensure_future(self._hang_up_requested.wait())
            try:
                await self._until_call_ends(script, hang_up, result)
            finally:
                await self._hang_up_stream(ws, result)
                clock.deactivate(self)
                for task in (script, hang_up):
                    task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await asyncio.wait_for(receiver, _CLOSE_WAIT_SECS)
                if ws.close_code is not None:
                    result.close_code = ws.close_code
                    result.close_reason = ws.close_reason or ""
        # The call may have ended while the bot's last reply was still the latest thing heard.
        self._playback.end_reply(self._playback.heard_until)
        result.caller_track = bytes(self._caller_track)
        result.bot_track = bytes(self._playback.track)
        return result

    async def _open_stream(self, ws: ClientConnection) -> CallResult:
        """Start measuring the call and send ``connected`` and ``start``, as Telnyx does."""
        connected_at = time.monotonic()
        result = self.result = CallResult(
            stream_id=self.stream_id,
            call_control_id=self.call_control_id,
            connected_at=connected_at,
            sample_rate=self.rate,
            bot_sample_rate=self.out_rate,
        )
        self._outbox.start(ws, result)
        # Quiet time is measured from the moment the call connects, so the first
        # turn waits for the bot's greeting.
        self._playback.start(result, connected_at)
        await self._outbox.send(self._stream.send(ts.Connected(auth_token=self.auth_token)))
        await self._outbox.send(
            self._stream.send(
                ts.Start(
                    call_control_id=self.call_control_id,
                    encoding=self.encoding,
                    sample_rate=self.rate,
                    call_session_id=f"sim-session-{self.stream_id[:8]}",
                    user_id="sim-user",
                    from_number=self.from_number,
                    to_number=self.to_number,
                    client_state=self.client_state,
                    custom_parameters=self.custom_parameters,
                )
            )
        )
        self.connected.set()
        self._emit("connected", stream_id=self.stream_id, call_control_id=self.call_control_id)
        return result

    async def _until_call_ends(
        self, script: asyncio.Future[None], hang_up: asyncio.Future[Any], result: CallResult
    ) -> None:
        """Wait for the script to finish, a hang-up from outside, or the call's time limit."""
        try:
            async with asyncio.timeout(self.max_call_secs):
                await asyncio.wait({script, hang_up}, return_when=asyncio.FIRST_COMPLETED)
            if script.done():
                script.result()
            elif result.closed_by == "":
                result.closed_by = "telnyx"
        except TimeoutError:
            result.errors.append(f"call exceeded {self.max_call_secs}s")

    async def _hang_up_stream(self, ws: ClientConnection, result: CallResult) -> None:
        """Unless the bot closed first: send ``stop`` and close; then let the last messages go."""
        if not self._closed.is_set():
            result.closed_by = result.closed_by or "caller"
            self._outbox.release_held()
            await self._outbox.send(self._stream.send(ts.Stop()))
            with contextlib.suppress(Exception):
                await ws.close()
        await self._outbox.flush(_CLOSE_WAIT_SECS)
        self._closed.set()

    async def _script(self, turns: Iterable[CallerTurn], hang_up_after_secs: float) -> None:
        for turn in turns:
            if self._closed.is_set():
                return
            if turn.barge_in_after is not None:
                after = turn.barge_in_after
                await self._wait_until(lambda now, after=after: self._bot_heard_since() >= after)
            elif turn.wait_for_bot:
                await self._wait_for_answer(turn)
                if turn.require_answer and not self._answered():
                    # A last chance to answer the last nudge, then hang up.
                    await self._wait_until(lambda now, q=turn.quiet_secs: self._bot_quiet_for(now) >= q)
                    if not self._answered():
                        return
            if turn.pause_secs:
                await asyncio.sleep(turn.pause_secs)
            if turn.error is not None:
                self.send_error(turn.error)
                continue
            if turn.dtmf:
                for digit in turn.dtmf:
                    if self._stream.state is ts.State.STREAMING:
                        await self._outbox.send(self._stream.send(ts.DTMF(digit)))
                self._spoke_until = time.monotonic()
                continue
            await self._say(turn)
        # Wait for the bot's last answer to finish, then hang up.
        await self._wait_until(lambda now: self._bot_quiet_for(now) >= hang_up_after_secs)

    async def _say(self, turn: CallerTurn) -> None:
        """Speak ``turn``'s audio in real time, timing it as a turn of the call."""
        frames = self._encode_turn(turn)
        now = time.monotonic()
        timing = TurnTiming(text=turn.text, started_at=now, ended_at=now + len(frames) * FRAME_SECS)
        assert self.result is not None
        self.result.turns.append(timing)
        # ``frame``: where the turn starts in the recorded tracks (in 20 ms frames; a
        # long stall skips frames on the clock, never in the tracks).
        at = len(self._caller_track) // (2 * self.frame_samples) if self.record else self._frames_sent
        self._emit("caller_turn", text=turn.text, secs=len(frames) * FRAME_SECS, frame=at)
        self._speech.extend(frames)
        await self._wait_until(lambda now: not self._speech)
        timing.ended_at = self._spoke_until = time.monotonic()
        self._emit("caller_turn_ended", text=turn.text)

    def _answered(self) -> bool:
        """Whether the bot has spoken since the caller's last turn (or greeted, before the first)."""
        assert self.result is not None
        if not self.result.turns:
            return self.result.greeting_heard_at is not None
        return self.result.turns[-1].first_bot_audio_heard_at is not None

    async def _wait_for_answer(self, turn: CallerTurn) -> None:
        """Wait for ``quiet_secs`` of bot silence; say the nudge while the bot has not answered."""
        quiet = turn.quiet_secs
        for _ in range(turn.max_nudges + 1):
            await self._wait_until(lambda now: self._bot_quiet_for(now) >= quiet)
            if not turn.nudge_audio or self._answered() or self._closed.is_set():
                return
            assert self.result is not None
            self.result.nudges.append((len(self.result.turns), time.monotonic()))
            self._emit("nudge", text=turn.nudge_text)
            self._speech.extend(
                self._encode_turn(CallerTurn(audio=turn.nudge_audio, sample_rate=turn.sample_rate))
            )
            await self._wait_until(lambda now: not self._speech)
            self._spoke_until = time.monotonic()

    def _bot_heard_since(self) -> float:
        turn = self.result.turns[-1] if self.result and self.result.turns else None
        start = (
            turn.first_bot_audio_heard_at
            if turn
            else (self.result.greeting_heard_at if self.result else None)
        )
        if start is None:
            return 0.0
        return time.monotonic() - start

    async def _wait_until(self, condition: Any) -> None:
        # Conditions combine several timers and buffers; polling at 10 ms is simplest and
        # far finer than anything the caller measures.
        while not self._closed.is_set() and not condition(time.monotonic()):  # noqa: ASYNC110
            await asyncio.sleep(0.01)

    # ----------------------------------------------------------------- receive

    async def _receive_loop(self, ws: ClientConnection) -> None:
        assert self.result is not None
        result = self.result
        try:
            async for message in ws:
                result.received_messages += 1
                try:
                    events = self._stream.receive(message)
                except ts.StreamProtocolError as exc:
                    result.errors.append(f"bot sent a malformed message: {exc}")
                    continue
                if events:
                    self._on_bot_event(events[0], time.monotonic())
        except websockets.ConnectionClosed:
            pass
        finally:
            self._stream.close()
            if not self._closed.is_set() and not result.closed_by:
                result.closed_by = "bot"
            if result.closed_at is None:
                result.closed_at = time.monotonic()
            self._closed.set()

    def _on_bot_event(self, event: protocol.Event, now: float) -> None:
        """Play, queue or clear what the bot sent, like a phone behind Telnyx."""
        if isinstance(event, protocol.MediaEvent):
            if not self.hears_bot:
                return  # played to another leg
            self._playback.receive_audio(self._decoder.decode(event.payload), now)
        elif isinstance(event, protocol.MarkEvent):
            self._playback.receive_mark(event.name)
        elif isinstance(event, protocol.ClearEvent):
            assert self.result is not None
            self.result.clears.append(now)
            self._emit("clear")
            self._playback.clear()

    def _emit(self, kind: str, **data: Any) -> None:
        if self.on_event is not None:
            try:
                self.on_event(kind, data)
            except Exception:
                logger.exception("on_event callback failed")

    def _echo_mark(self, name: str) -> None:
        assert self.result is not None
        self.result.marks_echoed.append(name)
        self._send_event(ts.MarkEcho(name))

    # ------------------------------------------------------------------- clock

    def on_tick(self, now: float) -> bool:
        """Clock callback: send the caller's due 20 ms frames and play the bot's.

        The caller keeps its own timeline (frames due since the call started), so a late
        tick is caught up rather than stretching the caller's speech; after a long stall
        at most five frames are sent at once, like a real jitter burst.
        """
        if self._closed.is_set():
            return False
        due = int((now - self._clock_start) / FRAME_SECS) + 1 - self._frames_sent
        for _ in range(min(max(due, 0), 5)):
            speech = self._speech.popleft() if self._speech else None
            payload = speech if speech is not None else self._silence
            if self._stream.state is ts.State.STREAMING:
                self._outbox.send_media(
                    self._stream.send(ts.InboundMedia(payload, timestamp=self._frames_sent * 20))
                )
            self._frames_sent += 1
            if self.record:
                self._caller_track += self._record_decoder.decode(payload)
            # Bot -> caller's ear, one frame per frame sent.
            heard = self._playback.play_frame(now)
            if self.stream_track == "both_tracks" and self._stream.state is ts.State.STREAMING:
                self._send_outbound_track(heard)
        if due > 5:
            self._frames_sent += due - 5  # skip what a long stall made us miss
        return True

    def _send_outbound_track(self, heard: bytes) -> None:
        # Assumption: Telnyx sends the outbound track in the call's codec, a frame for each
        # inbound one, numbering chunks per track.
        pcm = self._track_resampler.process(heard)
        frame = 2 * self.frame_samples
        pcm = (pcm + bytes(frame))[:frame]
        payload = self._track_encoder.encode(pcm)
        self._outbox.send_media(self._stream.send(ts.InboundMedia(payload, track="outbound")))
        assert self.result is not None
        self.result.outbound_frames_sent += 1
