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
import random
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import websockets
from websockets.asyncio.client import ClientConnection

from callpipe.audio import StreamResampler, get_codec
from callpipe.eager import run_eager
from callpipe.sim.call_result import CallerTurn, CallResult, TurnTiming
from callpipe.telnyx import protocol
from callpipe.telnyx import stream as ts
from callpipe.transports.clock import OutputClock

__all__ = ["FRAME_SECS", "CallResult", "CallerTurn", "SimulatedCaller", "TurnTiming"]

logger = logging.getLogger("callpipe.sim")

FRAME_SECS = 0.02
_ids = itertools.count(1)


class SimulatedCaller:
    """Places one simulated call to a bot's WebSocket ``url``.

    ``encoding``/``sample_rate`` are the call's own codec: what the caller sends (and
    what ``start.media_format`` says). ``out_encoding``/``out_sample_rate`` are what the
    bot must send back (the stream's bidirectional codec; default: the call's), decoded
    with that codec. ``stream_track="both_tracks"`` also sends an ``outbound`` track (what
    the caller hears, in the call's codec), which the bot must not take for the caller.
    ``hears_bot=False``: the bot's audio reaches another leg (``target_legs="opposite"``),
    so this phone plays nothing (marks are still echoed).
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
        # Network misbehaviour to reproduce: this share of media frames is sent after the
        # next frame (swapped), or sent twice.
        self.reorder = reorder
        self.duplicate = duplicate
        self._rng = random.Random(seed) if reorder > 0 or duplicate > 0 else None
        self._held_media: str | None = None
        self.codec = get_codec(encoding, sample_rate)
        self.encoding = self.codec.name
        self.rate = self.codec.sample_rate
        self.frame_samples = int(self.rate * FRAME_SECS)
        if out_encoding is None:
            self.out_codec = self.codec
        else:
            self.out_codec = get_codec(out_encoding, out_sample_rate)
        self.out_rate = self.out_codec.sample_rate
        self.stream_track = stream_track
        self.hears_bot = hears_bot
        # The outbound track (both_tracks): what the caller hears, in the call's codec.
        self._track_encoder = self.codec.new_instance()
        self._track_resampler = StreamResampler(self.out_rate, self.rate)
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
        self._burst_started: float | None = None  # when the bot's current reply became audible
        self._burst_offset = 0  # where that reply starts in the bot track
        self._encoder = self.codec.new_instance()
        self._decoder = self.out_codec.new_instance()  # the bot's audio
        self._silence = self._encoder.encode(bytes(2 * self.frame_samples))
        # Playback state (the phone's jitter buffer).
        self._play: collections.deque[tuple[str, Any]] = (
            collections.deque()
        )  # ("audio", pcm) | ("mark", name)
        self._play_bytes = 0
        self._last_audio_received = 0.0
        self._spoke_until = 0.0  # quiet is counted from the caller's own last words
        self._bot_heard_until = 0.0
        self._was_playing = False
        self._gap_started: float | None = None
        # Telnyx's side of the stream: sequence numbers, chunks, pending marks, states.
        self._stream = ts.Stream(ts.Role.TELNYX, stream_id=self.stream_id)
        self._ws: ClientConnection | None = None
        self._outbox: collections.deque[str] = collections.deque()
        self._sender: asyncio.Task[None] | None = None
        self._hang_up_requested = asyncio.Event()
        self.connected = asyncio.Event()  # set once connected + start have been sent
        self._clock_start = 0.0
        self._frames_sent = 0
        self._speech: collections.deque[bytes] = collections.deque()  # encoded 20 ms frames to say
        self._speaking_turn: TurnTiming | None = None
        self._closed = asyncio.Event()
        self._caller_track = bytearray()
        self._bot_track = bytearray()
        self.result: CallResult | None = None

    # ------------------------------------------------------------------ helpers

    def _send_event(self, event: ts.SendEvent) -> None:
        """Queue a streaming-time message; nothing once the stream has stopped."""
        if self._stream.state is ts.State.STREAMING:
            self._send_nowait(self._stream.send(event))

    async def _send(self, text: str) -> None:
        """Send ``text`` after everything queued before it, and wait until it is written."""
        self._send_nowait(text)
        sender = self._sender
        if sender is not None and not sender.done():
            await asyncio.shield(sender)

    def _send_nowait(self, text: str) -> None:
        """Queue ``text``; written at once unless the socket is busy (then by one task, in order)."""
        if self._ws is None or self._closed.is_set():
            return
        self._outbox.append(text)
        if self._sender is None or self._sender.done():
            self._sender = run_eager(self._drain_outbox())

    async def _drain_outbox(self) -> None:
        ws = self._ws
        outbox = self._outbox
        try:
            while outbox and ws is not None:
                await ws.send(outbox.popleft())
        except websockets.ConnectionClosed:
            outbox.clear()
            # The bot closed the socket while we were sending: noticed here first, it is
            # still the bot's close (the receive loop would otherwise find _closed set).
            if self.result is not None and not self._closed.is_set():
                self.result.closed_by = self.result.closed_by or "bot"
                if self.result.closed_at is None:
                    self.result.closed_at = time.monotonic()
            self._closed.set()

    def send_error(self, error: ts.Error) -> None:
        """Send a Telnyx ``error`` message on the stream (as Telnyx does for bad media)."""
        if self._stream.state in (ts.State.STREAMING, ts.State.AWAITING_START):
            self._send_nowait(self._stream.send(error))
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
        return self._play_bytes > 0

    def _bot_quiet_for(self, now: float) -> float:
        if self._play_bytes > 0:
            return 0.0
        return now - max(self._bot_heard_until, self._last_audio_received, self._spoke_until)

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
            self._ws = ws
            connected_at = time.monotonic()
            # Quiet time is measured from the moment the call connects, so the first
            # turn waits for the bot's greeting.
            self._last_audio_received = connected_at
            self.result = CallResult(
                stream_id=self.stream_id,
                call_control_id=self.call_control_id,
                connected_at=connected_at,
                sample_rate=self.rate,
                bot_sample_rate=self.out_rate,
            )
            await self._send(self._stream.send(ts.Connected(auth_token=self.auth_token)))
            await self._send(
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
            receiver = asyncio.ensure_future(self._receive_loop())
            self._clock_start = time.monotonic()
            clock = OutputClock.for_running_loop()
            clock.activate(self)
            script = asyncio.ensure_future(self._script(turns, hang_up_after_secs))
            hang_up = asyncio.ensure_future(self._hang_up_requested.wait())
            try:
                async with asyncio.timeout(self.max_call_secs):
                    await asyncio.wait({script, hang_up}, return_when=asyncio.FIRST_COMPLETED)
                if script.done():
                    script.result()
                elif self.result.closed_by == "":
                    self.result.closed_by = "telnyx"
            except TimeoutError:
                self.result.errors.append(f"call exceeded {self.max_call_secs}s")
            finally:
                if not self._closed.is_set():
                    self.result.closed_by = self.result.closed_by or "caller"
                    if self._held_media is not None:  # a frame held back to be reordered
                        self._send_nowait(self._held_media)
                    await self._send(self._stream.send(ts.Stop()))
                    with contextlib.suppress(Exception):
                        await ws.close()
                if self._sender is not None and not self._sender.done():
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await asyncio.wait_for(asyncio.shield(self._sender), 2.0)
                self._closed.set()
                clock.deactivate(self)
                for task in (script, hang_up):
                    task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await asyncio.wait_for(receiver, 2.0)
                if ws.close_code is not None:
                    self.result.close_code = ws.close_code
                    self.result.close_reason = ws.close_reason or ""
        if self._burst_started is not None:
            # The call ended while the bot's last reply was still the latest thing heard.
            self._emit(
                "bot_audio_stopped",
                secs=self._bot_heard_until - self._burst_started,
                audio=bytes(self._bot_track[self._burst_offset :]) if self.record else b"",
                sample_rate=self.out_rate,
            )
            self._burst_started = None
        self.result.caller_track = bytes(self._caller_track)
        self.result.bot_track = bytes(self._bot_track)
        return self.result

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
                        await self._send(self._stream.send(ts.DTMF(digit)))
                self._spoke_until = time.monotonic()
                continue
            frames = self._encode_turn(turn)
            now = time.monotonic()
            timing = TurnTiming(text=turn.text, started_at=now, ended_at=now + len(frames) * FRAME_SECS)
            self._speaking_turn = timing
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
        # Wait for the bot's last answer to finish, then hang up.
        await self._wait_until(lambda now: self._bot_quiet_for(now) >= hang_up_after_secs)

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

    async def _receive_loop(self) -> None:
        assert self._ws is not None and self.result is not None
        result = self.result
        try:
            async for message in self._ws:
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
        result = self.result
        assert result is not None
        if isinstance(event, protocol.MediaEvent):
            if not self.hears_bot:
                return  # played to another leg
            pcm = self._decoder.decode(event.payload)
            result.bot_audio_arrivals.append((now, len(pcm) / 2 / self.out_rate))
            self._play.append(("audio", pcm))
            self._play_bytes += len(pcm)
            self._last_audio_received = now
            turn = self._current_turn()
            if turn is not None and turn.first_bot_audio_received_at is None and now >= turn.ended_at:
                turn.first_bot_audio_received_at = now
        elif isinstance(event, protocol.MarkEvent):
            if self._play_bytes == 0:
                self._echo_mark(event.name)
            else:
                self._play.append(("mark", event.name))
        elif isinstance(event, protocol.ClearEvent):
            result.clears.append(now)
            self._emit("clear")
            marks = [item[1] for item in self._play if item[0] == "mark"]
            self._play.clear()
            self._play_bytes = 0
            for name in marks:
                self._echo_mark(name)

    def _emit(self, kind: str, **data: Any) -> None:
        if self.on_event is not None:
            try:
                self.on_event(kind, data)
            except Exception:
                logger.exception("on_event callback failed")

    def _current_turn(self) -> TurnTiming | None:
        if self.result is None or not self.result.turns:
            return None
        return self.result.turns[-1]

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
        frame_bytes = 2 * int(self.out_rate * FRAME_SECS)
        for _ in range(min(max(due, 0), 5)):
            speech = self._speech.popleft() if self._speech else None
            payload = speech if speech is not None else self._silence
            if self._stream.state is ts.State.STREAMING:
                self._send_media(
                    self._stream.send(ts.InboundMedia(payload, timestamp=self._frames_sent * 20))
                )
            self._frames_sent += 1
            if self.record:
                self._caller_track += self._decoder_for_record(payload)
            # Bot -> caller's ear, one frame per frame sent.
            heard = self._play_frame(now, frame_bytes)
            if self.stream_track == "both_tracks" and self._stream.state is ts.State.STREAMING:
                self._send_outbound_track(heard)
        if due > 5:
            self._frames_sent += due - 5  # skip what a long stall made us miss
        return True

    def _send_media(self, text: str) -> None:
        rng = self._rng
        if rng is None:
            self._send_nowait(text)
            return
        assert self.result is not None
        held = self._held_media
        if held is None and rng.random() < self.reorder:
            self._held_media = text  # goes out after the next frame
            self.result.media_reordered += 1
            return
        self._send_nowait(text)
        if rng.random() < self.duplicate:
            self._send_nowait(text)
            self.result.media_duplicated += 1
        if held is not None:
            self._send_nowait(held)
            self._held_media = None

    def _send_outbound_track(self, heard: bytes) -> None:
        # Assumption: Telnyx sends the outbound track in the call's codec, a frame for each
        # inbound one, numbering chunks per track.
        pcm = self._track_resampler.process(heard)
        frame = 2 * self.frame_samples
        pcm = (pcm + bytes(frame))[:frame]
        payload = self._track_encoder.encode(pcm)
        self._send_media(self._stream.send(ts.InboundMedia(payload, track="outbound")))
        assert self.result is not None
        self.result.outbound_frames_sent += 1

    def _decoder_for_record(self, payload: bytes) -> bytes:
        # G.722 is stateful, so the caller's own track is decoded with a separate decoder.
        if not hasattr(self, "_record_decoder"):
            self._record_decoder = self.codec.new_instance()
        return self._record_decoder.decode(payload)

    def _play_frame(self, now: float, frame_bytes: int) -> bytes:
        assert self.result is not None
        result = self.result
        out = bytearray()
        while len(out) < frame_bytes and self._play:
            kind, item = self._play[0]
            if kind == "mark":
                if out:
                    break  # the mark is echoed once the audio before it has played
                self._play.popleft()
                self._echo_mark(item)
                continue
            need = frame_bytes - len(out)
            if len(item) <= need:
                out += item
                self._play.popleft()
            else:
                out += item[:need]
                self._play[0] = ("audio", item[need:])
        self._play_bytes -= len(out)
        if out:
            if self._gap_started is not None:
                result.gaps.append(now - self._gap_started)
                self._gap_started = None
            elif self._burst_started is None:
                self._burst_started = now
                self._burst_offset = len(self._bot_track)
                turn = self._current_turn()
                latency = now - turn.ended_at if turn is not None and now >= turn.ended_at else None
                self._emit("bot_audio_started", latency=latency)
            if result.greeting_heard_at is None:
                result.greeting_heard_at = now
            turn = self._current_turn()
            if turn is not None and turn.first_bot_audio_heard_at is None and now >= turn.ended_at:
                turn.first_bot_audio_heard_at = now
            result.bot_audio_secs += len(out) / 2 / self.out_rate
            self._bot_heard_until = now + FRAME_SECS
            self._was_playing = True
            if len(out) < frame_bytes:
                out += bytes(frame_bytes - len(out))
        else:
            if self._was_playing and self._gap_started is None:
                self._gap_started = now
            self._was_playing = False
            out = bytearray(frame_bytes)
        # A gap only counts if more audio of the same reply follows soon after.
        if self._gap_started is not None and now - self._gap_started > 0.5:
            if self._burst_started is not None:
                audio = bytes(self._bot_track[self._burst_offset :]) if self.record else b""
                self._emit(
                    "bot_audio_stopped",
                    secs=self._gap_started - self._burst_started,
                    audio=audio,
                    sample_rate=self.out_rate,
                )
                self._burst_started = None
            self._gap_started = None
        if self.record:
            self._bot_track += out
        return bytes(out)
