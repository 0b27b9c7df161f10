"""Helpers for the call-store tests: a full record, and stores that are started and closed."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

from callpipe.records.model import CallEvent, CallRecord, Latency, ToolCall, Turn, Usage
from callpipe.store.sql import SqlCallStore


def full_record(
    ccid: str = "v3:call-1",
    *,
    started_at: float | None = None,
    direction: str = "inbound",
    from_: str = "+15551230001",
    to: str = "+15559990000",
    caller_says: str = "I would like to book a table",
    end_reason: str = "caller_hangup",
    recording_path: str | None = None,
) -> CallRecord:
    """A finished record with every part filled in (turns, latency, tools, events, usage)."""
    t0 = time.time() - 60 if started_at is None else started_at
    return CallRecord(
        call_control_id=ccid,
        direction="outbound" if direction == "outbound" else "inbound",
        from_=from_,
        to=to,
        call_session_id=f"session-{ccid}",
        stream_id=f"stream-{ccid}",
        codec="PCMU",
        sample_rate=8000,
        started_at=t0,
        answered_at=t0 + 0.5,
        ended_at=t0 + 30 if end_reason != "in_progress" else None,
        end_reason=end_reason,
        hangup_by="caller",
        amd={"result": "human"},
        body={"customer": "42"},
        query_params={"campaign": "spring"},
        turns=[
            Turn(speaker="bot", text="Hello! How can I help?", started_at=t0 + 1, ended_at=t0 + 2.5, heard_text="Hello! How can I help?"),
            Turn(speaker="caller", text=caller_says, started_at=t0 + 3, ended_at=t0 + 5),
            Turn(
                speaker="bot",
                text="Sure, for how many people and when?",
                heard_text="Sure, for how",
                interrupted=True,
                started_at=t0 + 5.6,
                ended_at=t0 + 6.5,
                latency=Latency(vad_stop_ms=210.0, stt_final_ms=260.5, llm_first_token_ms=420.0, tts_first_audio_ms=540.0, first_audio_sent_ms=555.0, heard_ms=610.0),
                tool_calls=[ToolCall(name="lookup", arguments={"q": "table"}, result={"free": 3}, at=t0 + 5.3)],
            ),
        ],
        events=[CallEvent(type="webhook", at=t0 + 31, name="call.hangup", data={"hangup_cause": "normal_clearing"})],
        usage=Usage(stt_audio_secs={"whisper": 12.5}, llm_prompt_tokens={"openai": 800}, llm_completion_tokens={"openai": 60}, tts_characters={"piper": 120}),
        custom={"outcome": "booked", "crm_id": 7},
        recording_path=recording_path,
    )  # fmt: skip


@contextlib.asynccontextmanager
async def started_store(url: str, **options: Any) -> AsyncIterator[SqlCallStore]:
    """A started :class:`SqlCallStore` on ``url``, closed (flushed) at the end."""
    store = SqlCallStore(url, **options)
    await store.start()
    try:
        yield store
    finally:
        await store.close()
