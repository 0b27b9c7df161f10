"""The one place where call records feed ``/metrics`` (kept small so it is easy to move).

Per bot turn: a histogram per latency stage (seconds from the caller's end of speech);
the greeting has no caller speech before it and is left out.
"""

from __future__ import annotations

from callpipe import metrics
from callpipe.records.model import CallRecord, Latency

__all__ = ["call_finished", "turn_latency"]


def turn_latency(latency: Latency, greeting: bool) -> None:
    """A bot turn's latency is complete."""
    if greeting:
        return
    for stage, value in (
        ("vad_stop", latency.vad_stop_ms),
        ("stt_final", latency.stt_final_ms),
        ("llm_first_token", latency.llm_first_token_ms),
        ("tts_first_audio", latency.tts_first_audio_ms),
        ("first_audio_sent", latency.first_audio_sent_ms),
        ("heard", latency.heard_ms),
    ):
        if value is not None:
            metrics.REGISTRY.observe_stage(stage, max(0.0, value / 1000.0))


def call_finished(record: CallRecord) -> None:
    """A call's record is final."""
    metrics.REGISTRY.call_record_finished(record.end_reason)
