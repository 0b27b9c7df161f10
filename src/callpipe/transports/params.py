"""The settings of the WebSocket transport, its close codes, and the close-reason fit.

Shared by :mod:`callpipe.transports.input`, :mod:`callpipe.transports.output` and
:mod:`callpipe.transports.fastapi` (which re-exports all of it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from callpipe.audio.vad import SileroVADAnalyzer
from callpipe.transports.serializers import TelnyxFrameSerializer

__all__ = [
    "CLOSE_GOING_AWAY",
    "CLOSE_INVALID_DATA",
    "CLOSE_NORMAL",
    "CLOSE_POLICY_VIOLATION",
    "CLOSE_TOO_BIG",
    "FastAPIWebsocketParams",
    "fit_close_reason",
]

# WebSocket close codes (RFC 6455) used when we end a call over its input.
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_INVALID_DATA = 1007
CLOSE_POLICY_VIOLATION = 1008
CLOSE_TOO_BIG = 1009


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
