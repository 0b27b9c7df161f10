"""The input half of the WebSocket transport: the call's socket -> frames.

Per message: size cap and parse through the call's :class:`~callpipe.telnyx.stream.Stream`
(our side of the stream's state machine: one msgspec pass, then the state, stream id,
track and mark rules) -> decode + resample -> :class:`InputAudioRawFrame` pushed by
direct call; the same PCM feeds the shared, batched VAD. Nothing on it allocates a task
or crosses a queue. Bad input never ends a call over one glitch: a malformed message is
dropped, counted and logged once per call; only sustained garbage, an oversized message,
a flood or silence closes the call, with a logged reason and a WebSocket close code.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from typing import TYPE_CHECKING, Any

from callpipe.audio.vad import SileroVADAnalyzer, VADEvent
from callpipe.pipeline.frames import (
    BotInterruptionFrame,
    CancelFrame,
    CancelTaskFrame,
    EndFrame,
    ErrorFrame,
    Frame,
    InputDTMFFrame,
    InputEncodedAudioFrame,
    InterruptionFrame,
    StartFrame,
    UserSpeechPausedFrame,
    UserSpeechResumedFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from callpipe.pipeline.processor import FrameDirection, FrameProcessor, weak_back_reference
from callpipe.records import observer as records
from callpipe.telnyx import protocol
from callpipe.telnyx.reorder import Gap, ReorderBuffer, order_key
from callpipe.telnyx.stream import StreamProtocolError
from callpipe.transports.guards import FloodGuard, InputGuard, Verdict
from callpipe.transports.params import (
    CLOSE_GOING_AWAY,
    CLOSE_INVALID_DATA,
    CLOSE_POLICY_VIOLATION,
    CLOSE_TOO_BIG,
)

if TYPE_CHECKING:
    from callpipe.transports.fastapi import FastAPIWebsocketTransport

__all__ = ["PAUSE_SECS", "FastAPIWebsocketInputTransport"]

# Silence inside a turn after which the VAD says "paused" (speculative transcription
# starts there, in parallel with the rest of the stop window).
PAUSE_SECS = 0.09  # three 32 ms VAD windows

logger = logging.getLogger("callpipe.transports")

# The receive loop yields to the event loop after this many messages in a row.
_YIELD_EVERY = 4


class FastAPIWebsocketInputTransport(FrameProcessor):
    """Reads the call's WebSocket and pushes frames downstream."""

    def __init__(self, transport: FastAPIWebsocketTransport) -> None:
        super().__init__(name=f"{transport.name}:input")
        self._transport = transport
        self._params = transport.params
        self._serializer = transport.serializer
        self._stream = transport.stream  # our side of the stream's state machine
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

    def _release(self) -> None:
        super()._release()
        self._transport._drop_event_handlers()
        self._transport = weak_back_reference(self._transport)
        self._receive_task = None

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
        try:
            event = self._stream.receive_event(data)
        except StreamProtocolError as exc:
            if exc.kind == "size":
                return await self._close(CLOSE_TOO_BIG, f"oversized message: {exc}")
            return await self._bad_message(str(exc))
        if event is None:
            return None  # the machine took it: another track, a stray mark echo, a repeat
        if type(event) is protocol.MediaEvent:
            if self._stopped or not self._params.audio_in_enabled:
                return None
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
            return await self._telnyx_error(event)
        elif isinstance(event, protocol.UnknownEvent):
            return await self._bad_message(f"unknown event {event.event!r}", counts=False)
        # connected/start were consumed by parse_telephony_websocket; the machine drops repeats.
        return None

    async def _telnyx_error(self, event: protocol.ErrorEvent) -> str:
        """Telnyx reports the stream broken (malformed media, an unsupported operation): end the call.

        Processors see the :class:`ErrorFrame` first; the record ends with ``end_reason="error"``
        and the reason. Assumption: after an ``error`` the stream cannot be trusted to carry
        the call on (Telnyx's docs list no recoverable codes), so the bot ends and hangs up.
        """
        reason = f"Telnyx stream error {event.code} {event.title}: {event.detail}".strip().rstrip(":")
        logger.error("%s", reason)
        if self._observer is not None:
            self._observer.error("telnyx_stream_error", reason)
            self._observer.note_end("error", "server")
        await self.push_frame(
            ErrorFrame(error=f"Telnyx error {event.code}: {event.title} {event.detail}".strip()),
            FrameDirection.UPSTREAM,
        )
        return reason

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
