"""How a call's media stream is asked for: the codec and rate the bot sends, legs, tracks.

Pure (no I/O). Telnyx sends the call's audio in the encoding its ``start`` message names
(``media_format``) and takes back what the stream was configured for: TeXML's
``bidirectionalCodec``/``bidirectionalSamplingRate`` (``STREAM_CODEC``/``STREAM_SAMPLE_RATE``)
or the Call Control dial's ``stream_bidirectional_codec``/``_sampling_rate`` (the settings,
or ``/start``'s fields per call). The two can differ (a PCMA call answered in PCMU, a
PCMU call answered in L16 at 16 kHz), so the server tells the bot what it asked for: a
dial puts it on the stream URL (``bidi_codec``/``bidi_rate``, covered by the token), and
``/ws`` hands it on as ``call_data["bidirectional_codec"]`` / ``["bidirectional_sampling_rate"]``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from callpipe.audio import get_codec

if TYPE_CHECKING:
    from callpipe.server.settings import ServerSettings

__all__ = [
    "CODEC_PARAM",
    "RATE_PARAM",
    "REQUEST_FIELDS",
    "STREAM_TRACKS",
    "TARGET_LEGS",
    "StreamOptions",
    "bidirectional_of",
    "check_codec",
    "from_request",
    "from_settings",
    "scope_parts",
]

# Telnyx's bidirectional codecs are PCMU, PCMA, G722, OPUS, AMR-WB and L16; callpipe
# encodes the first three and L16 (8 or 16 kHz).
_TELNYX_ONLY = ("OPUS", "AMR-WB")
TARGET_LEGS = ("self", "opposite", "both")
STREAM_TRACKS = ("inbound_track", "outbound_track", "both_tracks")
# ``/start``'s per-call fields (Telnyx's dial names).
REQUEST_FIELDS = (
    "stream_bidirectional_codec",
    "stream_bidirectional_sampling_rate",
    "stream_bidirectional_target_legs",
    "stream_track",
)
# The stream URL's parameters that carry the bidirectional codec to /ws.
CODEC_PARAM = "bidi_codec"
RATE_PARAM = "bidi_rate"


def check_codec(codec: str, rate: int | None) -> tuple[str, int]:
    """``(codec, rate)`` normalised (``G722``'s 8000 RTP clock is 16 kHz audio); ValueError if unusable."""
    name = codec.strip().upper()
    if name in _TELNYX_ONLY:
        raise ValueError(
            f"Telnyx takes {name} back, but callpipe cannot encode it: use PCMU, PCMA, G722 or L16"
        )
    try:
        resolved = get_codec(name, rate)
    except ValueError as exc:
        raise ValueError(f"bidirectional codec: {exc}") from None
    return resolved.name, resolved.sample_rate


@dataclass(frozen=True, slots=True)
class StreamOptions:
    """What a dial asks of the stream; see the module docstring."""

    codec: str = "PCMU"
    sampling_rate: int = 8000
    target_legs: str | None = None
    track: str = "inbound_track"

    def url_params(self) -> dict[str, str]:
        """The stream URL's parameters that tell ``/ws`` what Telnyx takes back."""
        return {CODEC_PARAM: self.codec, RATE_PARAM: str(self.sampling_rate)}

    def dial_fields(self) -> dict[str, Any]:
        """The Call Control dial's stream fields (``TelnyxClient.dial`` keywords)."""
        return {
            "stream_track": self.track,
            "stream_bidirectional_mode": "rtp",
            "stream_bidirectional_codec": self.codec,
            "stream_bidirectional_sampling_rate": self.sampling_rate,
            "stream_bidirectional_target_legs": self.target_legs,
        }


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}, not {value!r}")
    return value


def from_settings(settings: ServerSettings) -> StreamOptions:
    """The stream options the settings ask for (``STREAM_*``); ValueError naming the setting."""
    try:
        codec, rate = check_codec(settings.stream_codec, settings.stream_sample_rate)
    except ValueError as exc:
        raise ValueError(f"STREAM_CODEC/STREAM_SAMPLE_RATE: {exc}") from None
    legs = settings.stream_target_legs
    return StreamOptions(
        codec=codec,
        sampling_rate=rate,
        target_legs=None if legs is None else _choice("STREAM_TARGET_LEGS", legs, TARGET_LEGS),
        track=_choice("STREAM_TRACK", settings.stream_track, STREAM_TRACKS),
    )


def from_request(settings: ServerSettings, payload: Mapping[str, Any]) -> StreamOptions | None:
    """The options for one dial: the settings', overridden by ``/start``'s fields.

    ``None`` when the request names none of :data:`REQUEST_FIELDS`. ValueError says which
    field is wrong.
    """
    if not any(payload.get(name) is not None for name in REQUEST_FIELDS):
        return None
    base = from_settings(settings)
    codec_value = payload.get("stream_bidirectional_codec")
    rate_value = payload.get("stream_bidirectional_sampling_rate")
    if codec_value is not None and not isinstance(codec_value, str):
        raise ValueError("stream_bidirectional_codec must be a string")
    if rate_value is not None and (isinstance(rate_value, bool) or not isinstance(rate_value, int)):
        raise ValueError("stream_bidirectional_sampling_rate must be an integer (8000, 16000)")
    codec = codec_value or base.codec
    if rate_value is None:
        # The settings' rate goes with the settings' codec; another codec gets its own rate.
        rate_value = base.sampling_rate if codec.upper() == base.codec else None
    codec, rate = check_codec(codec, rate_value)
    legs = payload.get("stream_bidirectional_target_legs", base.target_legs)
    track = payload.get("stream_track", base.track)
    return StreamOptions(
        codec=codec,
        sampling_rate=rate,
        target_legs=None if legs is None else _choice("stream_bidirectional_target_legs", legs, TARGET_LEGS),
        track=_choice("stream_track", track, STREAM_TRACKS),
    )


def scope_parts(query: Mapping[str, str]) -> tuple[str, ...]:
    """The bidirectional parameters a stream token also covers (none on a plain URL)."""
    if CODEC_PARAM not in query and RATE_PARAM not in query:
        return ()
    return (query.get(CODEC_PARAM, ""), query.get(RATE_PARAM, ""))


def bidirectional_of(settings: ServerSettings, query: Mapping[str, str]) -> tuple[str, int]:
    """What Telnyx takes back on the stream ``/ws`` serves: the URL's, else the settings'."""
    codec = query.get(CODEC_PARAM)
    if codec is None:
        return check_codec(settings.stream_codec, settings.stream_sample_rate)
    rate = query.get(RATE_PARAM)
    try:
        number = int(rate) if rate else None
    except ValueError:
        raise ValueError(f"malformed {RATE_PARAM} parameter {rate!r}") from None
    return check_codec(codec, number)
