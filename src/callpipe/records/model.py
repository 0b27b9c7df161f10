"""The call record's shape: the JSON that ``GET /api/calls/{id}`` answers.

Plain msgspec structs, so one ``msgspec.json.encode`` gives the API's JSON and the
store's row payload. Times are UNIX seconds (floats) in memory and ISO 8601 in JSON
(``to_json``); latencies are milliseconds measured from the caller's end of speech.
"""

from __future__ import annotations

import datetime as _dt
from typing import Any, Literal

import msgspec

__all__ = [
    "END_REASONS",
    "IN_PROGRESS",
    "CallEvent",
    "CallRecord",
    "Latency",
    "ToolCall",
    "Turn",
    "Usage",
    "iso",
]

IN_PROGRESS = "in_progress"
# Every value ``end_reason`` can take.
END_REASONS = (
    "caller_hangup",
    "bot_ended",
    "transferred",
    "max_duration",
    "idle_timeout",
    "error",
    "shutdown",
    "process_died",
    "busy",  # dialled, never answered: the callee was busy (Telnyx hangup_cause user_busy)
    "no_answer",  # dialled, never answered: it rang out (timeout / no_answer)
    IN_PROGRESS,
)


def iso(ts: float | None) -> str | None:
    """UNIX seconds as ISO 8601 UTC with milliseconds, ``None`` for ``None``."""
    if ts is None:
        return None
    return _dt.datetime.fromtimestamp(ts, _dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Latency(msgspec.Struct, kw_only=True):
    """One bot turn's latency breakdown, each stage in ms from the caller's end of speech.

    ``None`` where a stage did not apply (a greeting has no caller speech before it; a
    realtime model has no separate STT/LLM/TTS stages). ``queue_wait_ms`` is the time
    this turn's path to its first audio spent waiting for shared model workers (embedded
    Whisper and Piper): ``stt_queue_wait_ms`` (the caller's transcript) plus
    ``tts_queue_wait_ms`` (the first sentence's audio); ``None`` with no such worker. It is
    part of the stages above, not a stage of its own: it says how much of them was queueing.
    """

    vad_stop_ms: float | None = None
    stt_final_ms: float | None = None
    llm_first_token_ms: float | None = None
    tts_first_audio_ms: float | None = None
    first_audio_sent_ms: float | None = None
    heard_ms: float | None = None
    queue_wait_ms: float | None = None
    stt_queue_wait_ms: float | None = None
    tts_queue_wait_ms: float | None = None


class ToolCall(msgspec.Struct, kw_only=True):
    """One tool (function) call the LLM made, with its result."""

    name: str
    arguments: dict[str, Any] = msgspec.field(default_factory=dict)
    result: Any = None
    at: float = 0.0


class Turn(msgspec.Struct, kw_only=True):
    """One turn of the conversation.

    Caller turns: ``text`` is the final transcript. Bot turns: ``text`` is what the bot
    meant to say, ``heard_text`` what the caller actually heard (cut at barge-in), with
    ``interrupted`` and the ``latency`` breakdown.
    """

    speaker: Literal["caller", "bot"]
    text: str = ""
    started_at: float = 0.0
    ended_at: float | None = None
    heard_text: str | None = None
    interrupted: bool = False
    latency: Latency | None = None
    tool_calls: list[ToolCall] = msgspec.field(default_factory=list)


class CallEvent(msgspec.Struct, kw_only=True):
    """Something that happened to the call: a webhook, DTMF, an error, a control action."""

    type: str  # e.g. "webhook", "dtmf", "error", "control", "transfer", "amd"
    at: float
    name: str = ""  # e.g. "call.hangup", the DTMF digit, the error kind
    data: dict[str, Any] = msgspec.field(default_factory=dict)


class Usage(msgspec.Struct, kw_only=True):
    """What the call consumed, per provider, for cost estimates."""

    stt_audio_secs: dict[str, float] = msgspec.field(default_factory=dict)
    llm_prompt_tokens: dict[str, int] = msgspec.field(default_factory=dict)
    llm_completion_tokens: dict[str, int] = msgspec.field(default_factory=dict)
    tts_characters: dict[str, int] = msgspec.field(default_factory=dict)
    # Speech-to-speech models bill audio tokens (included in the prompt/completion counts).
    audio_tokens_in: dict[str, int] = msgspec.field(default_factory=dict)
    audio_tokens_out: dict[str, int] = msgspec.field(default_factory=dict)


class CallRecord(msgspec.Struct, kw_only=True):
    """Everything kept about one call. Mutated in place by its call's observer."""

    call_control_id: str
    direction: Literal["inbound", "outbound"] = "inbound"
    from_: str | None = msgspec.field(default=None, name="from")
    to: str | None = None
    call_session_id: str | None = None
    stream_id: str | None = None
    codec: str | None = None
    sample_rate: int | None = None
    instance: str | None = None
    started_at: float = 0.0
    answered_at: float | None = None
    ended_at: float | None = None
    end_reason: str = IN_PROGRESS
    hangup_by: str | None = None  # "caller", "bot", "server", "telnyx", ...
    amd: dict[str, Any] | None = None
    transfer: dict[str, Any] | None = None  # a warm transfer: outcome, both legs (services/warm_transfer.py)
    body: dict[str, Any] | None = None
    query_params: dict[str, str] | None = None
    turns: list[Turn] = msgspec.field(default_factory=list)
    events: list[CallEvent] = msgspec.field(default_factory=list)
    usage: Usage = msgspec.field(default_factory=Usage)
    custom: dict[str, Any] = msgspec.field(default_factory=dict)
    recording_path: str | None = None  # on this instance's disk; the API serves it as recording_url

    @property
    def duration_secs(self) -> float | None:
        """Seconds from start to end (``None`` while the call is live)."""
        return None if self.ended_at is None else max(0.0, self.ended_at - self.started_at)

    def to_json(self, *, full: bool = True, recording_url: str | None = None) -> dict[str, Any]:
        """The API's JSON object; ``full=False`` leaves out ``turns`` and ``events`` (lists)."""
        data: dict[str, Any] = msgspec.to_builtins(self)
        data.pop("recording_path", None)
        for key in ("started_at", "answered_at", "ended_at"):
            data[key] = iso(data[key])
        for turn in data["turns"]:
            turn["started_at"] = iso(turn["started_at"])
            turn["ended_at"] = iso(turn["ended_at"])
            for tool in turn["tool_calls"]:
                tool["at"] = iso(tool["at"])
        for event in data["events"]:
            event["at"] = iso(event["at"])
        transfer = data.get("transfer")
        if isinstance(transfer, dict):
            for key in ("started_at", "ended_at"):
                if isinstance(transfer.get(key), int | float):
                    transfer[key] = iso(transfer[key])
        data["duration_secs"] = None if self.duration_secs is None else round(self.duration_secs, 3)
        data["recording_url"] = recording_url
        if not full:
            data.pop("turns")
            data.pop("events")
            data["turn_count"] = len(self.turns)
        return data
