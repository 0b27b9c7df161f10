"""The output half of the WebSocket transport: the bot's frames -> the call's socket.

Audio is encoded to the call's outbound codec when it arrives (whole buffers) and queued
on the call's timeline; the shared :class:`~callpipe.transports.clock.OutputClock` sends
it in real time with a small lead, each message built by the call's
:class:`~callpipe.telnyx.stream.Stream` (which keeps the marks pending until Telnyx echoes
them). Non-audio frames that arrive behind queued audio (the words of a reply) are held
and released when the audio before them has *played*, so whatever follows the output
(the context aggregator) sees only what the caller heard.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import logging
import math
import time
from typing import TYPE_CHECKING, Any

from callpipe import metrics
from callpipe.audio import Codec, get_codec
from callpipe.eager import run_eager
from callpipe.pipeline.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    CancelFrame,
    EndFrame,
    Frame,
    InterruptionFrame,
    MetricsData,
    MetricsFrame,
    OutputAudioRawFrame,
    OutputEncodedAudioFrame,
    PlaybackCutFrame,
    StartFrame,
    SystemFrame,
    TTSStoppedFrame,
    TTSTextFrame,
    UserStoppedSpeakingFrame,
)
from callpipe.pipeline.processor import FrameDirection, FrameProcessor, weak_back_reference
from callpipe.records import observer as records
from callpipe.telnyx.stream import Clear, Mark, Media, SendEvent, State
from callpipe.transports.clock import OutputClock
from callpipe.transports.params import CLOSE_NORMAL

if TYPE_CHECKING:
    from callpipe.transports.fastapi import FastAPIWebsocketTransport

__all__ = ["FastAPIWebsocketOutputTransport"]

logger = logging.getLogger("callpipe.transports")

# After a barge-in, how long the output waits for its InterruptionFrame (processors
# upstream cancel within a couple of seconds) before it plays new audio regardless.
_MUTE_SECS = 5.0


class FastAPIWebsocketOutputTransport(FrameProcessor):
    """Sends the bot's audio to the call in real time, and other output frames."""

    def __init__(self, transport: FastAPIWebsocketTransport) -> None:
        super().__init__(name=f"{transport.name}:output")
        self._transport = transport
        self._params = transport.params
        self._serializer = transport.serializer
        self._stream = transport.stream
        codec = self._serializer.out_codec
        self._chunk_bytes = codec.payload_bytes(20)
        self._byte_rate = self._chunk_bytes * 50.0
        self._lead = self._params.audio_out_lead_secs
        self._clock: OutputClock | None = None
        self._context: contextvars.Context | None = None
        self._out_rate = 8000
        # The timeline.
        self._buffer = bytearray()  # encoded audio waiting to be sent
        self._enqueued = 0  # bytes ever queued
        self._sent = 0  # bytes ever sent
        self._play_end = 0.0  # when everything sent so far will have played
        self._held: collections.deque[tuple[int, Frame]] = collections.deque()  # (byte offset, frame)
        self._timed: collections.deque[tuple[float, Frame]] = collections.deque()  # (play time, frame)
        self._speaking = False
        self._active = False
        self._reply_complete = False
        self._mark_counter = 0
        self._pending_mark: str | None = None
        self._mark_confirmed = False
        self._send_task: asyncio.Task[Any] | None = None
        self._outbox: collections.deque[str] = collections.deque()  # behind a send that waits
        self._muted_until = 0.0  # after a barge-in, until its InterruptionFrame arrives
        self._inbox = transport.inbox
        self._drained = asyncio.Event()
        self._drained.set()
        self._closing = False
        # Metrics.
        self._speech_ended_at: float | None = None
        self._observer: records.CallObserver | None = None
        self._recorder: records.CallRecorder | None = None
        self._first_mark: str | None = None  # the mark after a turn's first chunk (heard latency)
        # Tagged audio items (byte offset where each starts) for PlaybackCutFrame on barge-in.
        self._tags: collections.deque[tuple[int, str]] = collections.deque(maxlen=8)
        self._wire_decoders: dict[tuple[str, int], Codec] = {}
        self._max_buffer_bytes = int(self._params.max_output_buffer_secs * self._byte_rate)
        self.shed_bytes = 0
        self.underruns = 0
        self.clears_sent = 0
        self.last_clear_at: float | None = None
        self.chunks_sent = 0

    # ------------------------------------------------------------------- frames

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Queue audio on the timeline; handle interruption, end and cancel."""
        await super().process_frame(frame, direction)
        if direction is FrameDirection.UPSTREAM:
            await self.push_frame(frame, direction)
            return
        if isinstance(frame, OutputAudioRawFrame):
            if self._params.audio_out_enabled and not self._closing and not self._muted():
                self._queue_audio(frame)
        elif isinstance(frame, OutputEncodedAudioFrame):
            if self._params.audio_out_enabled and not self._closing and not self._muted():
                self._queue_wire(frame)
        elif isinstance(frame, StartFrame):
            self._context = contextvars.copy_context()
            self._inbox.start()
            self._clock = OutputClock.for_running_loop()
            self._out_rate = self._params.audio_out_sample_rate or frame.audio_out_sample_rate
            observer = self._observer = records.current()
            self._recorder = observer.recorder if observer is not None else None
            await self.push_frame(frame, direction)
        elif isinstance(frame, InterruptionFrame):
            if self._muted_until:
                self._muted_until = 0.0  # stopped already (stop_for_interruption); the reply's
                # processors upstream have now cancelled, so new audio is a new reply
            elif self._observer is not None:
                self._observer.interrupted(time.monotonic(), cut=self._has_pending_audio())
            await self._interrupt()
            await self.push_frame(frame, direction)
        elif isinstance(frame, UserStoppedSpeakingFrame):
            self._speech_ended_at = frame.speech_ended_at or time.monotonic()
            await self.push_frame(frame, direction)
        elif isinstance(frame, TTSStoppedFrame):
            # The reply is complete: the resampler's last few milliseconds belong to it.
            self._queue_encoded(self._serializer.flush_output())
            self._reply_complete = True
            if self._observer is not None:
                self._observer.reply_ended()
            await self._pass_in_order(frame, direction)
        elif isinstance(frame, EndFrame):
            await self._end(frame)
        elif isinstance(frame, CancelFrame):
            await self._cancel(frame)
        else:
            await self._pass_in_order(frame, direction)

    async def _pass_in_order(self, frame: Frame, direction: FrameDirection) -> None:
        if isinstance(frame, TTSTextFrame) and self._muted():
            return  # a word of the interrupted reply: never played, so never heard
        if self._observer is not None and isinstance(frame, TTSTextFrame):
            self._observer.word_queued(frame.text)
        if isinstance(frame, SystemFrame):
            await self.push_frame(frame, direction)
        elif not self._active:
            if not self._inbox.idle:
                await self._inbox.wait_idle()  # behind frames the inbox is still delivering
            await self.push_frame(frame, direction)
        else:
            # In-order data behind queued audio: release it once that audio has played.
            self._held.append((self._enqueued, frame))

    def _queue_audio(self, frame: OutputAudioRawFrame) -> None:
        self._queue_encoded(self._serializer.encode_audio(frame.audio, frame.sample_rate))

    def _queue_wire(self, frame: OutputEncodedAudioFrame) -> None:
        if frame.item_id and (not self._tags or self._tags[-1][1] != frame.item_id):
            self._tags.append((self._enqueued, frame.item_id))
        codec = self._serializer.out_codec
        if frame.codec == codec.name and frame.sample_rate == codec.sample_rate:
            self._queue_encoded(frame.payload)  # the call's own codec: no work at all
            return
        key = (frame.codec, frame.sample_rate)
        decoder = self._wire_decoders.get(key)
        if decoder is None:
            decoder = self._wire_decoders[key] = get_codec(frame.codec, frame.sample_rate)
        pcm = decoder.decode(frame.payload)
        self._queue_encoded(self._serializer.encode_audio(pcm, decoder.sample_rate))

    def _report_cut(self) -> None:
        """Before a barge-in drops the queue: tell upstream how much of each tagged item played."""
        if not self._tags:
            return
        unplayed = max(0.0, self._play_end - time.monotonic()) * self._byte_rate
        played = self._sent - unplayed
        frames: list[Frame] = []
        for index, (offset, item_id) in enumerate(self._tags):
            following = self._tags[index + 1][0] if index + 1 < len(self._tags) else None
            if following is not None and following <= played:
                continue  # this item had played in full before the next one started
            heard = max(0.0, played - offset) / self._byte_rate
            frames.append(PlaybackCutFrame(item_id=item_id, played_ms=round(heard * 1000)))
        self._tags.clear()
        for frame in frames:
            self._inbox.post(self.push_frame(frame, FrameDirection.UPSTREAM))

    def _queue_encoded(self, encoded: bytes) -> None:
        if not encoded or self._closing:
            return
        if len(self._buffer) + len(encoded) > self._max_buffer_bytes:
            self._shed_audio(len(encoded))
            return
        self._buffer += encoded
        self._enqueued += len(encoded)
        self._drained.clear()
        if not self._active:
            self._active = True
            assert self._clock is not None
            self._clock.activate(self)
        self._reply_complete = False
        if not self._speaking and len(self._buffer) >= self._chunk_bytes:
            # Start at once rather than at the next tick: the first chunk's latency counts.
            self.on_tick(time.monotonic())

    def _shed_audio(self, size: int) -> None:
        self.shed_bytes += size
        metrics.REGISTRY.error("output_buffer_full")
        if self.shed_bytes == size:
            logger.warning(
                "more than %.0fs of bot audio queued; dropping what the bot pushes beyond it",
                self._params.max_output_buffer_secs,
            )

    # -------------------------------------------------------------- the timeline

    def on_tick(self, now: float) -> bool:
        """Send what is due, release played frames, detect the end of speech (clock callback)."""
        if self._closing:
            self._active = False
            return False
        buffer = self._buffer
        if buffer and (self._send_task is None or self._send_task.done()):
            if self._play_end < now:
                if self._speaking:
                    self.underruns += 1  # the caller heard a gap
                self._play_end = now
            due = now + self._lead - self._play_end
            if due > 0:
                chunks = math.ceil(due * 50.0 - 1e-9)
                take = min(chunks * self._chunk_bytes, len(buffer))
                size = take - take % self._chunk_bytes
                if size == 0 and (self._reply_complete or (self._speaking and self._play_end - now < 0.021)):
                    # Less than a chunk is left and the reply is over (or playback is about
                    # to run dry mid-reply): send it, padded to 20 ms with silence. Before
                    # the reply has started, a partial chunk waits for more audio instead.
                    size = take
                if size:
                    self._send_chunk(size, now)
        if self._timed:
            self._release_played(now)
        if not self._buffer and not self._held and not self._timed and self._speaking:
            grace = self._params.bot_stopped_grace_secs
            if now >= self._play_end and (self._mark_confirmed or now >= self._play_end + grace):
                self._speaking = False
                if self._observer is not None:
                    self._observer.bot_stopped()
                self._emit([BotStoppedSpeakingFrame()], both_ways=True)
        if not self._buffer and not self._held and not self._timed and not self._speaking:
            self._active = False
            self._drained.set()
            return False
        return True

    def _send_chunk(self, size: int, now: float) -> None:
        payload = bytes(self._buffer[:size])
        del self._buffer[:size]
        if len(payload) % self._chunk_bytes:
            payload += self._serializer.encode_silence_bytes(
                self._chunk_bytes - len(payload) % self._chunk_bytes
            )
        start = self._play_end
        self._play_end += len(payload) / self._byte_rate
        first_offset = self._sent
        self._sent += size
        self.chunks_sent += 1
        emitted: list[Frame] = []
        recorder = self._recorder
        if recorder is not None:
            recorder.bot(payload, start)
        first_of_turn = not self._speaking
        if first_of_turn:
            self._speaking = True
            self._mark_confirmed = False
            emitted.append(BotStartedSpeakingFrame())
            if self._observer is not None:
                self._observer.audio_started(now)
        if self._speech_ended_at is not None:
            latency = now - self._speech_ended_at
            self._speech_ended_at = None
            logger.info("metrics voice_to_voice=%.1fms", latency * 1000)
            metrics.REGISTRY.response_latency.observe(latency)
            emitted.append(MetricsFrame(data=[MetricsData(name="voice_to_voice", value=latency)]))
        # Frames held behind the audio just sent get the time at which it plays.
        held = self._held
        while held and held[0][0] <= self._sent:
            offset, frame = held.popleft()
            self._timed.append((start + max(0, offset - first_offset) / self._byte_rate, frame))
        stream = self._stream
        if stream.state is State.STREAMING:
            messages = [stream.send(Media(payload))]
            if first_of_turn and self._observer is not None and self._buffer:
                # Its echo says when the caller heard the turn's first audio (one mark per turn).
                self._mark_counter += 1
                self._first_mark = f"callpipe-{self._mark_counter}"
                messages.append(stream.send(Mark(self._first_mark)))
            if not self._buffer:
                # Everything queued is on its way: a mark tells us when the caller has heard it.
                self._mark_counter += 1
                self._pending_mark = f"callpipe-{self._mark_counter}"
                self._mark_confirmed = False
                messages.append(stream.send(Mark(self._pending_mark)))
            self._send(messages)
        if emitted:
            self._emit(emitted, both_ways=True)

    def _release_played(self, now: float) -> None:
        timed = self._timed
        released: list[Frame] = []
        while timed and timed[0][0] <= now:
            released.append(timed.popleft()[1])
        if released and self._observer is not None:
            for frame in released:
                if isinstance(frame, TTSTextFrame):
                    self._observer.word_heard(frame.text)
        if released:
            self._emit(released, both_ways=False)

    @property
    def bot_speaking(self) -> bool:
        """Whether bot audio is playing (or queued) right now."""
        return self._speaking or bool(self._buffer)

    def on_mark(self, name: str) -> None:
        """Telnyx echoed a mark: the audio before it has been played to the caller."""
        if name == self._pending_mark:
            self._mark_confirmed = True
        if self._observer is not None and (name == self._first_mark or name == self._pending_mark):
            self._first_mark = None
            self._observer.heard()

    # ---------------------------------------------------------------- sending

    def _send_event(self, event: SendEvent) -> None:
        # Nothing is sent on a stream that stopped (Telnyx said ``stop``) or closed.
        if self._stream.state is State.STREAMING:
            self._send([self._stream.send(event)])

    def _send(self, messages: list[str]) -> None:
        if self._closing:
            return
        if self._send_task is not None and not self._send_task.done():
            # A send is waiting on a congested socket: these go out after it, in order.
            self._outbox.extend(messages)
            return
        task = run_eager(self._send_in_order(messages), context=self._context)
        if task is not None:
            # The socket is congested: hold this call's audio until the send completes.
            self._send_task = task

    async def _send_in_order(self, messages: list[str]) -> None:
        await self._transport.send_texts(messages)
        outbox = self._outbox
        while outbox:
            batch = list(outbox)
            outbox.clear()
            await self._transport.send_texts(batch)

    def _emit(self, frames: list[Frame], *, both_ways: bool) -> None:
        # Called from the shared clock (or whichever task queued the audio): processors
        # downstream and upstream get these frames in the call's inbox task, in order.
        self._inbox.post(self._push_all(frames, both_ways))

    async def _push_all(self, frames: list[Frame], both_ways: bool) -> None:
        for frame in frames:
            await self.push_frame(frame)
            if both_ways:
                await self.push_frame(frame, FrameDirection.UPSTREAM)

    def _has_pending_audio(self) -> bool:
        return bool(self._buffer or self._held or self._timed)

    def _muted(self) -> bool:
        if self._muted_until and time.monotonic() > self._muted_until:
            # The InterruptionFrame never came (a processor swallowed it): play again.
            logger.warning("the interruption did not reach the output within %.0fs", _MUTE_SECS)
            self._muted_until = 0.0
        return self._muted_until > 0.0

    def stop_for_interruption(self) -> None:
        """Barge-in, first step: stop playing and send ``clear`` now.

        The input transport calls this before it pushes the :class:`InterruptionFrame`,
        which reaches the output only after every processor on the way has cancelled its
        work (seconds, for a slow service). Until it arrives, audio and words of the
        interrupted reply still coming down are dropped.
        """
        if self._closing:
            return
        self._muted_until = time.monotonic() + _MUTE_SECS
        if self._observer is not None:
            self._observer.interrupted(time.monotonic(), cut=self._has_pending_audio())
        if self._stop_playing():
            self._emit([BotStoppedSpeakingFrame()], both_ways=True)

    async def _interrupt(self) -> None:
        if self._stop_playing():
            await self.push_frame(BotStoppedSpeakingFrame())
            await self.push_frame(BotStoppedSpeakingFrame(), FrameDirection.UPSTREAM)

    def _stop_playing(self) -> bool:
        """Drop what is queued and send ``clear``; True if the bot was speaking."""
        if not self._buffer and not self._speaking and not self._held and not self._timed:
            self._tags.clear()
            return False
        self._report_cut()
        # Media not yet handed to the socket is dropped rather than sent and cleared;
        # a send already under way finishes first, and ``clear`` goes out after it.
        self._outbox.clear()
        self._buffer.clear()
        self._serializer.reset_output()
        self._enqueued = self._sent
        self._held.clear()
        self._timed.clear()
        self._pending_mark = None
        self._play_end = time.monotonic()
        self.clears_sent += 1
        self._send_event(Clear())
        self.last_clear_at = time.monotonic()
        was_speaking, self._speaking = self._speaking, False
        return was_speaking

    # ------------------------------------------------------------- end / cancel

    async def _end(self, frame: EndFrame) -> None:
        # Let the goodbye play out (bounded), then hang up and close.
        if self._observer is not None:
            self._observer.note_end("bot_ended", "bot")
        remaining = len(self._buffer) / self._byte_rate + max(0.0, self._play_end - time.monotonic())
        try:
            await asyncio.wait_for(
                self._drained.wait(), timeout=remaining + self._params.bot_stopped_grace_secs + 2.0
            )
        except TimeoutError:
            logger.warning("output did not drain before the end; closing anyway")
        try:
            # The last words released as they played are still on their way through the inbox.
            await asyncio.wait_for(self._inbox.wait_idle(), timeout=2.0)
        except TimeoutError:
            logger.warning("the call's processors did not take their last events before the end")
        await self._shutdown(CLOSE_NORMAL, "the bot ended the call")
        await self.push_frame(frame)

    async def _cancel(self, frame: CancelFrame) -> None:
        self._inbox.close()  # nothing more reaches the processors after the cancel
        await self._shutdown(CLOSE_NORMAL, frame.reason or "cancelled")
        await self.push_frame(frame)

    async def _shutdown(self, code: int, reason: str) -> None:
        if self._closing:
            return
        self._closing = True
        if self._clock is not None:
            self._clock.deactivate(self)
        self._buffer.clear()
        self._held.clear()
        self._timed.clear()
        self._drained.set()
        if self._serializer.auto_hang_up:
            await self._serializer.hang_up()
        await self._transport.close(code, reason)

    async def cleanup(self) -> None:
        """Leave the clock and make sure the socket is closed."""
        if self._clock is not None:
            self._clock.deactivate(self)
        self._closing = True
        self._inbox.close()
        await self._transport.close(CLOSE_NORMAL, "pipeline finished")
        await super().cleanup()

    def _release(self) -> None:
        super()._release()
        self._transport = weak_back_reference(self._transport)
        self._send_task = None
        self._context = None
