"""What the console shows, computed from call records (pure logic, no I/O).

Masked numbers, voice-to-voice percentiles, the call list's rows, the overview's
aggregates and a cost estimate from documented per-unit prices.
"""

from __future__ import annotations

import datetime as _dt
import math
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from callpipe.records.model import CallRecord, Turn, iso

__all__ = [
    "Prices",
    "call_row",
    "cost_estimate",
    "live_row",
    "mask_number",
    "overview",
    "percentile",
    "voice_to_voice_ms",
]

# Providers that run on this machine: their usage costs nothing per unit.
EMBEDDED_PROVIDERS = frozenset({"whisper", "piper", "scripted", "silero", "local", "embedded"})


def mask_number(number: str | None) -> str:
    """A phone number with its middle hidden: ``+15550001234`` -> ``+1•••••••1234``."""
    if not number:
        return ""
    digits = number.lstrip("+")
    if len(digits) <= 4:
        return number
    head = "+" if number.startswith("+") else ""
    keep_front = 1 if len(digits) > 7 else 0
    return head + digits[:keep_front] + "•" * (len(digits) - keep_front - 4) + digits[-4:]


def voice_to_voice_ms(turn: Turn) -> float | None:
    """Caller stopped speaking -> the caller heard the bot (first audio on the wire if no echo)."""
    if turn.speaker != "bot" or turn.latency is None:
        return None
    latency = turn.latency
    return latency.heard_ms if latency.heard_ms is not None else latency.first_audio_sent_ms


def percentile(values: Iterable[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) by linear interpolation; ``None`` for no values."""
    data = sorted(values)
    if not data:
        return None
    pos = (len(data) - 1) * q
    low, high = math.floor(pos), math.ceil(pos)
    return data[low] + (data[high] - data[low]) * (pos - low)


def _v2v_values(record: CallRecord) -> list[float]:
    return [v for v in (voice_to_voice_ms(t) for t in record.turns) if v is not None]


def call_row(record: CallRecord) -> dict[str, Any]:
    """One row of the call list: the record's summary JSON plus p50 voice-to-voice."""
    data = record.to_json(full=False)
    values = _v2v_values(record)
    p50 = percentile(values, 0.5)
    data["v2v_p50_ms"] = None if p50 is None else round(p50)
    data["from_masked"] = mask_number(record.from_)
    data["to_masked"] = mask_number(record.to)
    return data


def live_row(record: CallRecord, now: float) -> dict[str, Any]:
    """One live call: who (masked), since when, and what is being said now."""
    last = record.turns[-1] if record.turns else None
    return {
        "call_control_id": record.call_control_id,
        "direction": record.direction,
        "from_masked": mask_number(record.from_),
        "to_masked": mask_number(record.to),
        "started_at": iso(record.started_at),
        "elapsed_secs": round(max(0.0, now - record.started_at), 1),
        "turns": len(record.turns),
        "instance": record.instance,
        "now_speaker": last.speaker if last else None,
        "now_text": (last.heard_text or last.text) if last else "",
    }


def _day(ts: float) -> str:
    return _dt.datetime.fromtimestamp(ts, _dt.UTC).strftime("%Y-%m-%d")


def overview(records: Iterable[CallRecord], *, days: int, now: float) -> dict[str, Any]:
    """Per-day calls, voice-to-voice p50/p95, errors, and end reasons over ``days`` days."""
    labels = [_day(now - 86400 * (days - 1 - i)) for i in range(days)]
    calls: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    v2v: defaultdict[str, list[float]] = defaultdict(list)
    total = 0
    for record in records:
        total += 1
        day = _day(record.started_at)
        calls[day] += 1
        reasons[record.end_reason] += 1
        if record.end_reason in ("error", "process_died") or any(e.type == "error" for e in record.events):
            errors[day] += 1
        v2v[day].extend(_v2v_values(record))
    all_v2v = [v for values in v2v.values() for v in values]

    def rounded(value: float | None) -> float | None:
        return None if value is None else round(value)

    return {
        "days": labels,
        "calls": [calls[d] for d in labels],
        "errors": [errors[d] for d in labels],
        "v2v_p50_ms": [rounded(percentile(v2v[d], 0.5)) for d in labels],
        "v2v_p95_ms": [rounded(percentile(v2v[d], 0.95)) for d in labels],
        "end_reasons": dict(reasons.most_common()),
        "total_calls": total,
        "total_v2v_p50_ms": rounded(percentile(all_v2v, 0.5)),
        "total_v2v_p95_ms": rounded(percentile(all_v2v, 0.95)),
    }


@dataclass(frozen=True, kw_only=True)
class Prices:
    """Per-unit prices (USD) for the cost estimate; embedded providers cost nothing."""

    telephony_per_min: float = 0.0
    stt_per_min: float = 0.0
    llm_prompt_per_million: float = 0.0
    llm_completion_per_million: float = 0.0
    tts_per_million_chars: float = 0.0


def _paid(values: dict[str, Any]) -> float:
    # Usage keys are "provider" or "provider:model" (e.g. "whisper:tiny.en").
    return float(sum(v for k, v in values.items() if k.split(":")[0].lower() not in EMBEDDED_PROVIDERS))


def cost_estimate(record: CallRecord, prices: Prices) -> dict[str, Any]:
    """The call's estimated cost per component and in total, in USD."""
    usage = record.usage
    minutes = (record.duration_secs or 0.0) / 60.0
    parts = {
        "telephony": minutes * prices.telephony_per_min,
        "stt": _paid(usage.stt_audio_secs) / 60.0 * prices.stt_per_min,
        "llm": (
            _paid(usage.llm_prompt_tokens) * prices.llm_prompt_per_million
            + _paid(usage.llm_completion_tokens) * prices.llm_completion_per_million
        )
        / 1e6,
        "tts": _paid(usage.tts_characters) * prices.tts_per_million_chars / 1e6,
    }
    rounded = {k: round(v, 6) for k, v in parts.items()}
    return {"currency": "USD", "parts": rounded, "total": round(sum(parts.values()), 6)}
