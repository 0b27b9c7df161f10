"""The per-call observer: fills a call's :class:`CallRecord` while the call happens.

``callpipe serve`` creates one :class:`CallObserver` per call in ``_run_bot`` and sets
:data:`current_observer` before the bot runs. Context variables are inherited by every
task the call creates, so the parts of any pipeline - the transport, the STT, LLM and TTS
base classes, :class:`~callpipe.pipeline.task.PipelineTask` - find the observer of *their*
call with :func:`current` when they start, with no change to bot code. Outside
``callpipe serve`` there is none and they record nothing.

The observer mutates the record in its call's task only and calls ``sink.touch(record)``
after a change (the sink coalesces and writes later, off the audio path), and
``sink.finish(record)`` once at the end.
"""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import msgspec

from callpipe.records import stats
from callpipe.records.model import CallEvent, CallRecord, ToolCall
from callpipe.records.recording import CallRecorder, recording_path
from callpipe.records.sink import NullSink, RecordSink
from callpipe.records.timeline import Timeline

__all__ = ["CallObserver", "CallRecorder", "RecordFields", "current", "current_observer", "provider_name"]

logger = logging.getLogger("callpipe.records")

current_observer: contextvars.ContextVar[CallObserver | None] = contextvars.ContextVar(
    "callpipe_call_observer", default=None
)
# Events kept per call (webhooks, DTMF, errors); more are counted, not kept, so that a
# flood of input cannot grow one record without bound.
MAX_EVENTS = 500


def current() -> CallObserver | None:
    """The observer of the call whose task is running, or ``None`` (no record kept)."""
    return current_observer.get()


def provider_name(service: Any) -> str:
    """A service's key in the record's usage: ``deepgram:nova-3``, ``openai:gpt-4o-mini``."""
    name = type(service).__name__
    for suffix in ("STTService", "LLMService", "TTSService", "Service"):
        if name.endswith(suffix) and name != suffix:
            name = name[: -len(suffix)]
            break
    model = getattr(service, "model", "") or ""
    return f"{name.lower()}:{model}" if model else name.lower()


def _plain_json(key: str, value: Any) -> Any:
    try:
        return msgspec.json.decode(msgspec.json.encode(value))
    except (TypeError, msgspec.EncodeError) as exc:
        raise TypeError(
            f"record field {key!r}: a {type(value).__name__} is not JSON-serializable ({exc})"
        ) from None


class RecordFields:
    """``runner_args.record``: the bot's own fields in its call's record.

    ``set(outcome="booked", crm_id="A-17")`` or ``custom["outcome"] = "booked"``; values
    must be JSON-serializable (``TypeError`` otherwise) and are copied when set. Outside
    ``callpipe serve`` the fields are kept here and go nowhere.
    """

    def __init__(self, observer: CallObserver | None = None) -> None:
        self._observer = observer
        self._fields: dict[str, Any] = observer.record.custom if observer is not None else {}

    @property
    def call_control_id(self) -> str | None:
        """The call's id (``None`` outside ``callpipe serve``)."""
        return self._observer.record.call_control_id if self._observer is not None else None

    @property
    def custom(self) -> _CustomFields:
        """The bot's fields as a mapping (item assignment validates like :meth:`set`)."""
        return _CustomFields(self)

    def set(self, **fields: Any) -> None:
        """Set (or replace) the bot's own fields; ``TypeError`` if a value is not JSON."""
        values = {key: _plain_json(key, value) for key, value in fields.items()}
        self._fields.update(values)
        if self._observer is not None:
            self._observer.touch()

    def get(self, key: str, default: Any = None) -> Any:
        """A field's value, or ``default``."""
        return self._fields.get(key, default)

    def event(self, name: str, **data: Any) -> None:
        """Add an event of the bot's own (``type="bot"``) to the record's events."""
        if self._observer is not None:
            self._observer.event("bot", name, {k: _plain_json(k, v) for k, v in data.items()})


class _CustomFields(Mapping[str, Any]):
    def __init__(self, owner: RecordFields) -> None:
        self._owner = owner

    def __getitem__(self, key: str) -> Any:
        return self._owner._fields[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self._owner.set(**{key: value})

    def __iter__(self) -> Iterator[str]:
        return iter(self._owner._fields)

    def __len__(self) -> int:
        return len(self._owner._fields)


class CallObserver:
    """Owns one call's record; the hooks in the pipeline report to it.

    Every method is cheap and never raises into the call. ``end_reason`` is decided by
    the first :meth:`note_end` (the caller hanging up, the bot ending, a transfer...);
    :meth:`finish` fills the rest and hands the record to the sink.
    """

    def __init__(
        self,
        record: CallRecord,
        sink: RecordSink | None = None,
        *,
        recording_dir: str | Path | None = None,
    ) -> None:
        self.record = record
        self.sink: RecordSink = sink or NullSink()
        self.recording_dir = recording_dir
        self.recorder: CallRecorder | None = None
        self.started = time.monotonic()
        self._wall_offset = time.time() - self.started
        if not record.started_at:
            record.started_at = self.to_wall(self.started)
        # Not the bound ``self.to_wall``: the timeline must not refer back to the observer,
        # so a finished call's objects are freed by reference counting (no full collection).
        self.timeline = Timeline(
            record, started=self.started, to_wall=self._wall_offset.__add__, on_latency=stats.turn_latency
        )
        self._end: tuple[str, str | None] | None = None
        self._dropped_events = 0
        self._finished = False

    @property
    def fields(self) -> RecordFields:
        """``runner_args.record``: the bot's own fields in this call's record."""
        return RecordFields(self)

    def to_wall(self, monotonic: float) -> float:
        """A ``time.monotonic()`` stamp as UNIX seconds."""
        return monotonic + self._wall_offset

    def touch(self) -> None:
        """The record changed: let the sink write it at its next flush."""
        self.sink.touch(self.record)

    # ------------------------------------------------------------ lifecycle

    def start_recording(self, caller_codec: Any, bot_codec: Any) -> CallRecorder | None:
        """The call's transport started: open its recording (if recordings are on)."""
        if self.recording_dir is None or self.recorder is not None:
            return self.recorder
        path = recording_path(self.recording_dir, self.record.call_control_id, self.record.started_at)
        try:
            self.recorder = CallRecorder(
                path, caller_codec=caller_codec, bot_codec=bot_codec, started=self.started
            )
            self.recorder.start()
        except Exception:
            logger.exception("could not start the call's recording")
            self.recorder = None
            return None
        self.record.recording_path = str(path)
        self.touch()
        return self.recorder

    def note_end(self, reason: str, hangup_by: str | None = None) -> None:
        """What ended the call; the first one noted wins (later ones are consequences)."""
        if self._end is None:
            self._end = (reason, hangup_by)

    @property
    def end_noted(self) -> str | None:
        """The end reason noted so far, if any."""
        return None if self._end is None else self._end[0]

    async def finish(self, fallback: str = "bot_ended", hangup_by: str | None = "bot") -> None:
        """The call is over: close the recording and hand the final record to the sink."""
        if self._finished:
            return
        self._finished = True
        reason, by = self._end or (fallback, hangup_by)
        now = time.monotonic()
        self.timeline.bot_stopped(now)
        record = self.record
        record.end_reason = reason
        record.hangup_by = by
        record.ended_at = self.to_wall(now)
        if self._dropped_events:
            record.events.append(
                CallEvent(
                    type="dropped", at=record.ended_at, name="events", data={"count": self._dropped_events}
                )
            )
        if self.recorder is not None:
            try:
                await self.recorder.close()
            except Exception:
                logger.exception("could not finish the call's recording")
        stats.call_finished(record)
        self.sink.finish(record)

    # --------------------------------------------------------------- events

    def event(self, type_: str, name: str = "", data: dict[str, Any] | None = None) -> None:
        """Add an event (a webhook, DTMF, an error, a control action)."""
        if len(self.record.events) >= MAX_EVENTS:
            self._dropped_events += 1
            return
        self.record.events.append(CallEvent(type=type_, at=time.time(), name=name, data=data or {}))
        self.touch()

    def error(self, kind: str, reason: str) -> None:
        """An error of the call, with the reason that was logged."""
        self.event("error", kind, {"reason": reason[:500]})

    def webhook(self, event_type: str, payload: Mapping[str, Any]) -> None:
        """A Telnyx webhook about this call arrived."""
        data = dict(payload)
        self.event("webhook", event_type, data)
        if event_type == "call.hangup":
            self.note_end("caller_hangup", str(payload.get("hangup_source") or "caller"))
        elif event_type == "streaming.failed":
            # The media stream broke: the call cannot go on (control.py ends it).
            self.error("streaming_failed", str(payload.get("failure_reason") or "unknown"))
            self.note_end("error", "server")
        elif event_type == "call.answered" and self.record.answered_at is None:
            self.record.answered_at = time.time()
        elif event_type.startswith("call.machine."):
            # Merged: a voicemail policy adds its decision and times to the same dict.
            self.record.amd = {
                **(self.record.amd or {}),
                "event": event_type,
                "result": payload.get("result"),
            }

    def control_event(self, kind: str, event_type: str, payload: Mapping[str, Any], *, to: str = "") -> None:
        """A webhook or an operator's action reached this call (possibly forwarded)."""
        if kind == "webhook":
            self.webhook(event_type, payload)
        elif kind == "hangup":
            self.event("control", "hangup")
            self.note_end("bot_ended", "operator")
        elif kind == "transfer":
            self.event("control", "transfer", {"to": to})
            self.note_end("transferred", "operator")
        elif kind == "transfer_leg":
            keep = ("call_control_id", "digit", "result", "hangup_cause", "hangup_source")
            self.event("transfer_leg", event_type, {k: payload[k] for k in keep if k in payload})

    def transfer(self, result: dict[str, Any]) -> None:
        """A warm transfer ended (bridged, declined, ...): its outcome and both legs."""
        self.record.transfer = dict(result)
        self.event("transfer", str(result.get("outcome", "")), dict(result))

    def dtmf(self, digit: str) -> None:
        """The caller pressed a key."""
        self.event("dtmf", digit)

    # ---------------------------------------------------------- conversation

    def caller_started(self) -> None:
        """VAD: the caller started speaking."""
        self.timeline.caller_started(time.monotonic())

    def caller_stopped(self, speech_ended_at: float) -> None:
        """VAD: the caller stopped (their speech ended at ``speech_ended_at``)."""
        self.timeline.caller_stopped(speech_ended_at, time.monotonic())
        self.touch()

    def transcript(self, text: str) -> None:
        """A final transcript of the caller."""
        self.timeline.transcript(text, time.monotonic())
        self.touch()

    def llm_first_token(self) -> None:
        """The LLM's first token of a reply."""
        self.timeline.llm_first_token(time.monotonic())

    def queue_wait(self, stage: str, secs: float) -> None:
        """A shared model worker made ``stage`` (``"stt"`` or ``"tts"``) wait ``secs``."""
        if stage == "stt":
            self.timeline.stt_queue_wait(secs, time.monotonic())
        elif stage == "tts":
            self.timeline.tts_queue_wait(secs, time.monotonic())
        self.touch()

    def bot_text(self, text: str) -> None:
        """The TTS was given ``text`` to speak."""
        self.timeline.bot_text(text, time.monotonic())
        self.touch()

    def reply_ended(self) -> None:
        """The bot's reply is complete."""
        self.timeline.reply_ended(time.monotonic())

    def tts_first_audio(self) -> None:
        """The TTS produced the first audio of a sentence."""
        self.timeline.tts_first_audio(time.monotonic())

    def audio_started(self, now: float) -> None:
        """The output sent the first chunk of bot speech."""
        self.timeline.audio_sent(now)
        self.touch()

    def heard(self) -> None:
        """A mark echo: the first chunk of bot speech played to the caller."""
        self.timeline.heard(time.monotonic())
        self.touch()

    def word_queued(self, word: str) -> None:
        """A word reached the output behind its audio."""
        self.timeline.bot_word_queued(word, time.monotonic())

    def word_heard(self, word: str) -> None:
        """A word of the bot has played."""
        self.timeline.heard_word(word, time.monotonic())
        self.touch()

    def bot_stopped(self) -> None:
        """The bot's audio stopped."""
        self.timeline.bot_stopped(time.monotonic())
        self.touch()

    def interrupted(self, now: float, *, cut: bool = True) -> None:
        """The caller barged in: cut the recording and the bot turn here.

        ``cut``: bot audio or words were still waiting to play (else the turn had been
        heard whole and is only closed).
        """
        if self.recorder is not None:
            self.recorder.cut(now)
        if self.timeline.interrupted(now, cut=cut):
            self.touch()

    def tool_call(self, name: str, arguments: Mapping[str, Any], result: Any) -> None:
        """The LLM ran a tool."""
        try:
            plain = msgspec.json.decode(msgspec.json.encode(result))
        except (TypeError, msgspec.EncodeError):
            plain = repr(result)
        call = ToolCall(name=name, arguments=dict(arguments), result=plain, at=time.time())
        self.timeline.tool_call(call, time.monotonic())
        if name == "transfer_call" and isinstance(plain, dict) and "error" not in plain:
            self.note_end("transferred", "bot")
        self.touch()

    # ----------------------------------------------------------------- usage

    def stt_audio(self, provider: str, secs: float) -> None:
        """Seconds of audio an STT provider transcribed (billed)."""
        usage = self.record.usage.stt_audio_secs
        usage[provider] = round(usage.get(provider, 0.0) + secs, 3)
        self.touch()

    def llm_tokens(self, provider: str, prompt: int, completion: int) -> None:
        """Tokens an LLM provider reported for one request."""
        usage = self.record.usage
        usage.llm_prompt_tokens[provider] = usage.llm_prompt_tokens.get(provider, 0) + prompt
        usage.llm_completion_tokens[provider] = usage.llm_completion_tokens.get(provider, 0) + completion
        self.touch()

    def audio_tokens(self, provider: str, audio_in: int, audio_out: int) -> None:
        """Audio tokens a speech-to-speech model reported for one response (part of its tokens)."""
        usage = self.record.usage
        usage.audio_tokens_in[provider] = usage.audio_tokens_in.get(provider, 0) + audio_in
        usage.audio_tokens_out[provider] = usage.audio_tokens_out.get(provider, 0) + audio_out
        self.touch()

    def tts_characters(self, provider: str, count: int) -> None:
        """Characters sent to a TTS provider."""
        usage = self.record.usage.tts_characters
        usage[provider] = usage.get(provider, 0) + count
