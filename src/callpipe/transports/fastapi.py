"""The FastAPI (Starlette) WebSocket transport for Telnyx media streams.

``transport.input()`` reads the call's WebSocket and pushes frames into the pipeline;
``transport.output()`` takes the bot's frames at the end of the pipeline and sends them.

Input path, per message: size cap -> parse (one msgspec pass) -> decode + resample ->
:class:`InputAudioRawFrame` pushed by direct call; the same PCM feeds the shared,
batched VAD. Nothing on it allocates a task or crosses a queue.

Output path: audio is encoded to the call's wire codec when it arrives (whole buffers)
and queued on the call's timeline; the shared :class:`~callpipe.transports.clock.OutputClock`
sends it in real time with a small lead. Non-audio frames that arrive behind queued audio
(the words of a reply) are held and released when the audio before them has *played*,
so whatever follows the output (the context aggregator) sees only what the caller heard.

Events from outside the call's tasks (the shared VAD batcher and output clock, timers,
webhooks) reach the processors through the call's :class:`~callpipe.transports.inbox.CallInbox`
task, so processor code always runs in a task of its own call.

Bad input never ends a call over one glitch: a malformed message is dropped, counted
and logged once per call. Only sustained garbage, an oversized message, or silence on
the socket closes the call, with a logged reason and a WebSocket close code.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import logging
import math
import time
import weakref
from dataclasses import dataclass, field
from typing import Any

from starlette.websockets import WebSocket, WebSocketState

from callpipe import metrics
from callpipe.audio import Codec, get_codec
from callpipe.audio.vad import SileroVADAnalyzer, VADEvent
from callpipe.eager import run_eager
from callpipe.log import call_id
from callpipe.pipeline.frames import (
    BotInterruptionFrame,
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    CancelFrame,
    CancelTaskFrame,
    EndFrame,
    ErrorFrame,
    Frame,
    InputDTMFFrame,
    InputEncodedAudioFrame,
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
    UserSpeechPausedFrame,
    UserSpeechResumedFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from callpipe.pipeline.processor import FrameDirection, FrameProcessor
from callpipe.records import observer as records
from callpipe.telnyx import protocol
from callpipe.telnyx.reorder import Gap, ReorderBuffer, order_key
from callpipe.telnyx.stream import CALLER_TRACK
from callpipe.transports.base_transport import BaseTransport
from callpipe.transports.clock import OutputClock
from callpipe.transports.digits import DigitCollector
from callpipe.transports.guards import FloodGuard, InputGuard, Verdict
from callpipe.transports.inbox import CallInbox
from callpipe.transports.serializers import TelnyxFrameSerializer

# Silence inside a turn after which the VAD says "paused" (speculative transcription
# starts there, in parallel with the rest of the stop window).
PAUSE_SECS = 0.09  # three 32 ms VAD windows

logger = logging.getLogger("callpipe.transports")

# WebSocket close codes (RFC 6455) used when we end a call over its input.
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_INVALID_DATA = 1007
CLOSE_POLICY_VIOLATION = 1008
CLOSE_TOO_BIG = 1009

# The receive loop yields to the event loop after this many messages in a row.
_YIELD_EVERY = 4
# After a barge-in, how long the output waits for its InterruptionFrame (processors
# upstream cancel within a couple of seconds) before it plays new audio regardless.
_MUTE_SECS = 5.0


@dataclass(kw_only=True)
class FastAPIWebsocketParams:
    """Settings of a :class:`FastAPIWebsocketTransport` (Pipecat-compatible names).

    ``audio_out_lead_secs``: how far ahead of real time bot audio is sent (a ``clear``
    stops what the caller hears within about this much). ``receive_timeout_secs``: a
    call whose socket is silent this long is closed (Telnyx streams audio every 20 ms).
    ``max_bad_messages_per_sec``: malformed messages tolerated per second before the
    call is closed. ``max_media_ahead_secs``: how far caller audio may run ahead of real
    time (a network hiccup's backlog) before the excess is dropped undecoded;
    ``flood_close_after_secs`` of dropped audio, or more than ``max_messages_per_sec``
    messages (after a burst of twice that), close the call with 1008.
    ``media_reorder_frames``: put caller media back in ``chunk`` order within this many
    20 ms frames (3 = 60 ms), dropping duplicates and filling lost frames with silence
    (0, the default, passes frames on as they come). ``max_output_buffer_secs``: bot audio queued beyond this (a bot that pushes an hour
    of it) is dropped, logged once and counted. ``add_wav_header`` is accepted for compatibility; Telnyx takes raw
    payloads, so it has no effect. ``audio_in_passthrough``: push the caller's payloads
    undecoded as :class:`InputEncodedAudioFrame` (for a speech-to-speech service that
    speaks the call's codec); they are decoded only for a VAD, if one is set.
    """

    audio_in_enabled: bool = True
    audio_in_passthrough: bool = False
    audio_out_enabled: bool = True
    add_wav_header: bool = False
    serializer: TelnyxFrameSerializer | None = None
    vad_analyzer: SileroVADAnalyzer | None = None
    audio_in_sample_rate: int | None = None
    audio_out_sample_rate: int | None = None
    audio_out_lead_secs: float = 0.08
    receive_timeout_secs: float | None = 10.0
    session_timeout: float | None = None
    max_bad_messages_per_sec: int = 20
    max_media_ahead_secs: float = 3.0
    flood_close_after_secs: float = 2.0
    max_messages_per_sec: float = 200.0
    max_output_buffer_secs: float = 120.0
    media_reorder_frames: int = 0
    bot_stopped_grace_secs: float = 0.6
    extra: dict[str, Any] = field(default_factory=dict)


def fit_close_reason(reason: str) -> str:
    """Trim a close reason to RFC 6455's 123 bytes of UTF-8 (longer ones break the close frame)."""
    return reason.encode()[:123].decode(errors="ignore")


class FastAPIWebsocketInputTransport(FrameProcessor):
    """Reads the call's WebSocket and pushes frames downstream."""

    def __init__(self, transport: FastAPIWebsocketTransport) -> None:
        super().__init__(name=f"{transport.name}:input")
        self._transport = transport
        self._params = transport.params
        self._serializer = transport.serializer
        self._receive_task: asyncio.Task[None] | None = None
        self._vad = self._params.vad_analyzer
        self._user_speaking = False
        self._last_receive = time.monotonic()
        self._watchdog: asyncio.TimerHandle | None = None
        self._guard = InputGuard(self._params.max_bad_messages_per_sec)
        self._flood = FloodGuard(
            burst_secs=self._params.max_media_ahead_secs,
            close_after_secs=self._params.flood_close_after_secs,
            max_messages_per_sec=self._params.max_messages_per_sec,
            message_burst=2 * self._params.max_messages_per_sec,
        )
        self._media_byte_rate = float(self._serializer.max_payload_bytes)  # payload bytes per second
        window = self._params.media_reorder_frames
        self.reorder: ReorderBuffer[bytes] | None = ReorderBuffer(window, first_key=1) if window else None
        self._silence_payload = b""  # one encoded 20 ms of silence, made at the first gap
        self._stopped = False
        # Set once an EndFrame has passed: the bot is saying its last words (a goodbye
        # before end_call) and the call hangs up after them, so nothing interrupts them.
        self._ending = False
        self._context: contextvars.Context | None = None
        self._interrupt_handle: asyncio.TimerHandle | None = None
        self.messages_received = 0
        # The call's record and recording (under ``callpipe serve``), looked up at start.
        self._observer: records.CallObserver | None = None
        self._recorder: records.CallRecorder | None = None

    @property
    def vad_analyzer(self) -> SileroVADAnalyzer | None:
        """The VAD fed with this call's audio (from the params, or adopted from the user aggregator)."""
        return self._vad

    def use_vad_analyzer(self, analyzer: SileroVADAnalyzer) -> None:
        """Run ``analyzer`` on this call's audio (before the pipeline starts; see ``place_vad``)."""
        self._vad = analyzer

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Start/stop reading; turn upstream interruption requests into interruptions."""
        await super().process_frame(frame, direction)
        if isinstance(frame, StartFrame):
            await self._start(frame)
            await self.push_frame(frame, direction)
        elif isinstance(frame, CancelFrame):
            self._stop_reading()
            await self.push_frame(frame, direction)
        elif isinstance(frame, BotInterruptionFrame):
            if not self._ending:
                await self._interrupt()
        else:
            if isinstance(frame, EndFrame):
                self._ending = True
            await self.push_frame(frame, direction)

    async def _start(self, frame: StartFrame) -> None:
        self._context = contextvars.copy_context()
        observer = self._observer = self._guard.observer = records.current()
        if observer is not None:
            self._recorder = observer.start_recording(self._serializer.in_codec, self._serializer.out_codec)
        in_rate = self._params.audio_in_sample_rate or frame.audio_in_sample_rate
        self._serializer.set_pipeline_in_rate(in_rate)
        if self._vad is not None:
            self._vad.set_sample_rate(in_rate)
            self._vad.set_pause_secs(PAUSE_SECS)
            self._vad.set_listener(self._on_vad_event)
        self._transport.inbox.start()
        self._receive_task = self.create_task(self._receive_loop(), "receive")
        self._arm_watchdog()
        await self._transport._call_event_handler("on_client_connected", self._transport.websocket)

    def _stop_reading(self) -> None:
        self._stopped = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self._interrupt_handle is not None:
            self._interrupt_handle.cancel()
        if self._vad is not None:
            self._vad.close()
        if self._receive_task is not None and self._receive_task is not asyncio.current_task():
            self._receive_task.cancel()

    async def cleanup(self) -> None:
        """Stop reading and release the VAD."""
        self._stop_reading()
        self._transport.inbox.close()
        await super().cleanup()
        if self._guard.total:
            logger.info("call had %d malformed messages in total", self._guard.total)
        if self._flood.dropped:
            logger.info(
                "dropped %d media messages (%.1fs of audio) that ran ahead of real time",
                self._flood.dropped,
                self._flood.dropped_secs,
            )

    # ------------------------------------------------------------------ reading

    async def _receive_loop(self) -> None:
        websocket = self._transport.websocket
        receive = websocket.receive
        reason = "the caller's stream closed"
        flood = self._flood
        burst = 0
        try:
            while True:
                message = await receive()
                if message["type"] == "websocket.disconnect":
                    self._note_end("caller_hangup", "caller")
                    break
                now = time.monotonic()
                self.messages_received += 1
                if now - self._last_receive < 0.001:
                    # Messages back to back: the server hands queued ones over without
                    # suspending, so a sender that fills the socket would hold the loop for
                    # all of them. Yield every few (real-time audio never gets here).
                    burst += 1
                    if burst >= _YIELD_EVERY:
                        burst = 0
                        await asyncio.sleep(0)
                else:
                    burst = 0
                self._last_receive = now
                if flood.message(now) is Verdict.CLOSE:
                    reason = await self._close(CLOSE_POLICY_VIOLATION, flood.reason, abort=True)
                    break
                data = message.get("text")
                if data is None:
                    data = message.get("bytes") or b""
                close_reason = await self._handle_message(data)
                if close_reason is not None:
                    reason = close_reason
                    break
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a broken socket ends this call only
            reason = f"receive failed: {exc}"
            self._note_end("caller_hangup", "network")
        finally:
            self._transport.digits.end()
            if not self._stopped:
                self._stopped = True
                logger.info("input ended: %s", reason)
                await self._transport._call_event_handler("on_client_disconnected", websocket)
                await self.push_frame(CancelTaskFrame(reason=reason), FrameDirection.UPSTREAM)

    async def _handle_message(self, data: str | bytes) -> str | None:
        """Handle one message; return a reason if the call must end."""
        serializer = self._serializer
        try:
            event = serializer.parse(data)
        except protocol.ProtocolError as exc:
            if str(exc).startswith("message of"):
                return await self._close(CLOSE_TOO_BIG, f"oversized message: {exc}")
            return await self._bad_message(str(exc))
        if type(event) is protocol.MediaEvent:
            if self._stopped or not self._params.audio_in_enabled:
                return None
            if event.media.track != CALLER_TRACK:
                return None  # stream_track=both_tracks: the bot hears only the caller
            payload = event.media.payload
            if len(payload) > self._media_byte_rate:
                return await self._close(CLOSE_TOO_BIG, f"media payload of {len(payload)} bytes is over 1 s")
            verdict = self._flood.media(len(payload) / self._media_byte_rate)
            if verdict is not Verdict.ACCEPT:
                # Beyond real time: dropped before any decoding or VAD work.
                if verdict is Verdict.DROP:
                    return None
                return await self._close(CLOSE_POLICY_VIOLATION, self._flood.reason, abort=True)
            reorder = self.reorder
            if (
                reorder is not None
                and (key := order_key(event)) is not None
                and not reorder.push(key, payload)
            ):
                return await self._media_ready(reorder.ready())
            return await self._media(payload)
        return await self._control_event(event)

    async def _media_ready(self, items: list[bytes | Gap]) -> str | None:
        # Out-of-order arrival: what the reorder window now releases, lost frames as silence.
        for item in items:
            if isinstance(item, Gap):
                if not self._silence_payload:
                    codec = self._serializer.in_codec
                    self._silence_payload = codec.new_instance().encode(bytes(2 * codec.sample_rate // 50))
                for _ in range(item.frames):
                    if (reason := await self._media(self._silence_payload)) is not None:
                        return reason
            elif (reason := await self._media(item)) is not None:
                return reason
        return None

    async def _media(self, payload: bytes) -> str | None:
        """One frame of caller audio, in order: decoded (or passed on), recorded, to the VAD and on."""
        serializer = self._serializer
        if self._params.audio_in_passthrough:
            return await self._pass_media(payload)
        try:
            pcm = serializer.decode_media(payload)
        except ValueError as exc:
            return await self._bad_message(f"undecodable audio: {exc}")
        if pcm:
            recorder = self._recorder
            if recorder is not None:
                recorder.caller(payload)
            if self._vad is not None:
                self._vad.push_audio(pcm)
            await self.push_frame(serializer.input_frame(pcm))
        return None

    async def _control_event(self, event: protocol.Event) -> str | None:
        if isinstance(event, protocol.DTMFEvent):
            if self._observer is not None:
                self._observer.dtmf(event.digit)
            if not self._transport.digits.feed(event.digit):  # a collect_digits takes it
                await self.push_frame(InputDTMFFrame(button=event.digit))
        elif isinstance(event, protocol.MarkEvent):
            self._transport.output_processor.on_mark(event.name)
        elif isinstance(event, protocol.StopEvent):
            self._note_end("caller_hangup", "caller")
            return "Telnyx stopped the stream (the call ended)"
        elif isinstance(event, protocol.ErrorEvent):
            logger.error("Telnyx stream error %s %s: %s", event.code, event.title, event.detail)
            if self._observer is not None:
                self._observer.error("telnyx_stream_error", f"{event.code} {event.title}: {event.detail}")
            await self.push_frame(
                ErrorFrame(error=f"Telnyx error {event.code}: {event.title} {event.detail}".strip()),
                FrameDirection.UPSTREAM,
            )
        elif isinstance(event, protocol.UnknownEvent):
            return await self._bad_message(f"unknown event {event.event!r}", counts=False)
        # connected/start were consumed by parse_telephony_websocket; repeats are ignored.
        return None

    async def _pass_media(self, payload: bytes) -> str | None:
        # The wire bytes go on as they are; only a VAD (if any) needs them decoded.
        codec = self._serializer.in_codec
        if self._vad is not None:
            try:
                self._vad.push_audio(self._serializer.decode_media(payload))
            except ValueError as exc:
                return await self._bad_message(f"undecodable audio: {exc}")
        if self._recorder is not None:
            self._recorder.caller(payload)
        await self.push_frame(
            InputEncodedAudioFrame(payload=payload, codec=codec.name, sample_rate=codec.sample_rate)
        )
        return None

    async def _bad_message(self, reason: str, *, counts: bool = True) -> str | None:
        if self._guard.record(reason, time.monotonic(), counts=counts):
            return await self._close(
                CLOSE_INVALID_DATA,
                f"more than {self._guard.max_per_sec} malformed messages per second (last: {reason})",
            )
        return None

    def _note_end(self, reason: str, by: str) -> None:
        if self._observer is not None:
            self._observer.note_end(reason, by)

    async def _close(self, code: int, reason: str, *, abort: bool = False) -> str:
        logger.warning("closing the call's stream (%d): %s", code, reason)
        if self._observer is not None:
            self._observer.error("input", reason)
            self._observer.note_end("error", "server")
        await self._transport.close(code, reason)
        if abort:
            self._transport.abort_connection()
        return reason

    # ----------------------------------------------------------------- watchdog

    def _arm_watchdog(self) -> None:
        timeout = self._params.receive_timeout_secs
        if timeout is None or self._stopped:
            return
        loop = asyncio.get_running_loop()
        self._watchdog = loop.call_later(min(timeout / 2, 1.0), self._check_silence)

    def _check_silence(self) -> None:
        timeout = self._params.receive_timeout_secs
        if self._stopped or timeout is None:
            return
        silent_for = time.monotonic() - self._last_receive
        if silent_for >= timeout:
            reason = f"no message from the caller's stream for {silent_for:.1f}s"
            self._spawn_in_call(self._close_for_silence(reason))
            return
        self._arm_watchdog()

    async def _close_for_silence(self, reason: str) -> None:
        await self._close(CLOSE_GOING_AWAY, reason)
        if self._receive_task is not None:
            self._receive_task.cancel()
        if not self._stopped:
            self._stopped = True
            await self._transport._call_event_handler("on_client_disconnected", self._transport.websocket)
            await self.push_frame(CancelTaskFrame(reason=reason), FrameDirection.UPSTREAM)

    def _spawn_in_call(self, coro: Any) -> None:
        # From a timer or the shared VAD batcher: into the pipeline through the call's inbox.
        self._transport.inbox.post(coro)

    # ---------------------------------------------------------------------- VAD

    def _on_vad_event(self, event: VADEvent) -> None:
        # Called by the shared VAD batcher, outside this call's tasks: the pushes run in
        # the call's inbox task, in the order the events happened.
        if self._stopped:
            return
        now = time.monotonic()
        if event.kind == "started":
            self._spawn_in_call(self._user_started())
        elif event.kind == "paused":
            ended_at = now - max(0.0, event.stream_time - event.speech_time)
            self._spawn_in_call(self.push_frame(UserSpeechPausedFrame(speech_ended_at=ended_at)))
        elif event.kind == "resumed":
            self._spawn_in_call(self.push_frame(UserSpeechResumedFrame()))
        else:
            ended_at = now - max(0.0, event.stream_time - event.speech_time)
            self._spawn_in_call(self._user_stopped(ended_at))

    async def _user_started(self) -> None:
        self._user_speaking = True
        if self._observer is not None:
            self._observer.caller_started()
        await self.push_frame(UserStartedSpeakingFrame())
        if not self.interruptions_allowed or self._ending:
            return
        if self._interruption_min_words > 0 and self._transport.output_processor.bot_speaking:
            # While the bot talks, the words decide: the user aggregator asks for the
            # interruption (BotInterruptionFrame) once enough of them were transcribed.
            return
        vad_start = self._vad.params.start_secs if self._vad is not None else 0.0
        extra = self._interruption_min_secs - vad_start
        if extra > 0:
            # Only a turn that lasts interruption_min_secs interrupts (not a cough).
            loop = asyncio.get_running_loop()
            self._interrupt_handle = loop.call_later(extra, self._interrupt_if_still_speaking)
        else:
            await self._interrupt()

    def _interrupt_if_still_speaking(self) -> None:
        if self._user_speaking and not self._stopped and not self._ending:
            self._spawn_in_call(self._interrupt())

    async def _user_stopped(self, speech_ended_at: float) -> None:
        self._user_speaking = False
        if self._interrupt_handle is not None:
            self._interrupt_handle.cancel()
            self._interrupt_handle = None
        if self._observer is not None:
            self._observer.caller_stopped(speech_ended_at)
        await self.push_frame(UserStoppedSpeakingFrame(speech_ended_at=speech_ended_at))

    async def _interrupt(self) -> None:
        # The caller must stop hearing the bot now, not once every processor on the way
        # to the output has cancelled its work: stop the output first, then tell them.
        self._transport.output_processor.stop_for_interruption()
        await self.push_frame(InterruptionFrame())


class FastAPIWebsocketOutputTransport(FrameProcessor):
    """Sends the bot's audio to the call in real time, and other output frames."""

    def __init__(self, transport: FastAPIWebsocketTransport) -> None:
        super().__init__(name=f"{transport.name}:output")
        self._transport = transport
        self._params = transport.params
        self._serializer = transport.serializer
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
        messages = [protocol.build_media(payload)]
        if first_of_turn and self._observer is not None and self._buffer:
            # Its echo says when the caller heard the turn's first audio (one mark per turn).
            self._mark_counter += 1
            self._first_mark = f"callpipe-{self._mark_counter}"
            messages.append(protocol.build_mark(self._first_mark))
        if not self._buffer:
            # Everything queued is on its way: a mark tells us when the caller has heard it.
            self._mark_counter += 1
            self._pending_mark = f"callpipe-{self._mark_counter}"
            self._mark_confirmed = False
            messages.append(protocol.build_mark(self._pending_mark))
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
        self._send([protocol.build_clear()])
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


_live_transports: weakref.WeakValueDictionary[str, FastAPIWebsocketTransport] = weakref.WeakValueDictionary()


def transport_for_call(call_control_id: str) -> FastAPIWebsocketTransport | None:
    """The live transport of a call (for webhook events the server routes into its pipeline)."""
    return _live_transports.get(call_control_id)


class FastAPIWebsocketTransport(BaseTransport):
    """A call's WebSocket as a pair of processors: :meth:`input` and :meth:`output`.

    Events: ``on_client_connected(transport, websocket)`` once the pipeline starts, and
    ``on_client_disconnected(transport, websocket)`` when the caller's stream ends.
    """

    _count = 0

    def __init__(self, websocket: WebSocket, params: FastAPIWebsocketParams, name: str | None = None) -> None:
        super().__init__()
        FastAPIWebsocketTransport._count += 1
        self.name = name or f"FastAPIWebsocketTransport#{FastAPIWebsocketTransport._count}"
        if not isinstance(params.serializer, TelnyxFrameSerializer):
            raise TypeError("FastAPIWebsocketParams.serializer must be a TelnyxFrameSerializer")
        self.websocket = websocket
        self.params = params
        self.serializer: TelnyxFrameSerializer = params.serializer
        handshake = getattr(websocket.state, "callpipe_telephony", None) or {}
        self.serializer.use_call_sample_rate(handshake.get("sample_rate"))
        self._closed = False
        self.call_id = call_id.get()
        for event in ("on_client_connected", "on_client_disconnected", "on_session_timeout"):
            self.register_event_handler(event)
        self.inbox = CallInbox(self.name)
        self.digits = DigitCollector()  # collect_digits (transports/digits.py)
        self._input = FastAPIWebsocketInputTransport(self)
        self._output = FastAPIWebsocketOutputTransport(self)
        if self.serializer.call_control_id:
            _live_transports[self.serializer.call_control_id] = self

    async def push_call_event(self, frame: Frame) -> None:
        """Push a frame that came from outside the stream (a webhook) into the pipeline.

        The frame enters through the call's inbox, so processors see it in the call's own
        task (not the webhook request's), in order with the call's other events.
        """
        self.inbox.post(self._input.push_frame(frame))

    async def end_from_outside(self, reason: str) -> None:
        """The call ended elsewhere (a ``call.hangup`` webhook): end this pipeline now.

        Direct, not through the inbox: upstream of the input is only the task itself (no
        processor code runs), and a hang-up must not wait behind a stuck processor.
        """
        await self._input.push_frame(CancelTaskFrame(reason=reason), FrameDirection.UPSTREAM)

    def input(self) -> FastAPIWebsocketInputTransport:
        """The processor that reads the call (first in the pipeline)."""
        return self._input

    def output(self) -> FastAPIWebsocketOutputTransport:
        """The processor that plays to the call (last in the pipeline, before aggregators)."""
        return self._output

    @property
    def output_processor(self) -> FastAPIWebsocketOutputTransport:
        """Same as :meth:`output`."""
        return self._output

    async def send_texts(self, messages: list[str]) -> None:
        """Send text messages in order; a closed socket ends sending quietly."""
        if self._closed:
            return
        try:
            for text in messages:
                await self.websocket.send({"type": "websocket.send", "text": text})
        except Exception as exc:  # the caller is gone; the input side ends the call
            logger.debug("send failed: %s", exc)
            self._closed = True

    def abort_connection(self) -> None:
        """Drop the TCP connection now, after a close frame was sent (a flooding peer).

        A graceful close waits for the peer's close frame, and until it comes the server
        parses (and inflates) every frame the peer had already sent: thousands per read
        for a flood, a stall for every call. Under uvicorn the ASGI ``receive`` is a
        method of its protocol object, which holds the asyncio transport; other servers
        keep the graceful close.
        """
        protocol_object = getattr(getattr(self.websocket, "_receive", None), "__self__", None)
        transport = getattr(protocol_object, "transport", None)
        if isinstance(transport, asyncio.BaseTransport) and hasattr(transport, "abort"):
            transport.abort()

    async def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        """Close the WebSocket once (with a close code and reason)."""
        if self._closed:
            return
        self._closed = True
        if self.websocket.client_state == WebSocketState.DISCONNECTED:
            return
        try:
            await self.websocket.close(code=code, reason=fit_close_reason(reason))
        except Exception as exc:
            logger.debug("close failed: %s", exc)
