"""What a simulated call's media stream carries each way, from the dial or the ``<Stream>``.

Telnyx sends the call's own audio (``start.media_format``: the callee's codec, or the
dial's ``stream_codec`` when it asks for another) and takes back the stream's
bidirectional codec and rate (``stream_bidirectional_codec``/``_sampling_rate``, or
TeXML's ``bidirectionalCodec``/``bidirectionalSamplingRate``). ``stream_track`` says
which tracks are streamed and ``stream_bidirectional_target_legs`` who hears the bot.
Pure: the simulator passes the result to its :class:`~callpipe.sim.caller.SimulatedCaller`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from callpipe.sim.texml import TeXMLStream

__all__ = ["StreamMedia", "call_control_media", "texml_media"]


@dataclass(frozen=True, slots=True)
class StreamMedia:
    """The codecs each way, the tracks streamed, and whether this leg hears the bot."""

    encoding: str = "PCMU"
    sample_rate: int | None = None
    out_encoding: str = "PCMU"
    out_sample_rate: int | None = None
    stream_track: str = "inbound_track"
    hears_bot: bool = True

    def caller_options(self) -> dict[str, Any]:
        """The :class:`~callpipe.sim.caller.SimulatedCaller` keywords."""
        return {
            "encoding": self.encoding,
            "sample_rate": self.sample_rate,
            "out_encoding": self.out_encoding,
            "out_sample_rate": self.out_sample_rate,
            "stream_track": self.stream_track,
            "hears_bot": self.hears_bot,
        }


def _codec(value: Any) -> str | None:
    return value if isinstance(value, str) and value and value.lower() != "default" else None


def _rate(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _resolve(
    own: str | None, own_rate: int | None, asked: str | None, out: str | None, out_rate: int | None
) -> tuple[str, int | None, str, int | None]:
    # Without a codec of its own the callee speaks what the stream takes back (the
    # simulator's behaviour before per-direction codecs), else PCMU.
    # Assumption: Telnyx transcodes the call to ``stream_codec`` whatever it is (its docs
    # promise PCMU <-> PCMA only).
    encoding = asked or own or out or "PCMU"
    if own is not None and (asked is None or asked.upper() == own.upper()):
        rate = own_rate  # the callee's own audio, as it is
    elif out is not None and encoding.upper() == out.upper():
        rate = out_rate  # the same codec both ways, at the stream's rate
    else:
        rate = None  # the codec's own rate
    out_encoding = out or encoding
    if out_rate is None and out_encoding.upper() == encoding.upper():
        out_rate = rate
    return encoding, rate, out_encoding, out_rate


def call_control_media(
    params: Mapping[str, Any], *, callee_codec: str | None = None, callee_sample_rate: int | None = None
) -> StreamMedia:
    """A Call Control dial's stream (its ``stream_*`` fields) to a callee speaking ``callee_codec``."""
    encoding, rate, out, out_rate = _resolve(
        callee_codec,
        callee_sample_rate,
        _codec(params.get("stream_codec")),
        _codec(params.get("stream_bidirectional_codec")),
        _rate(params.get("stream_bidirectional_sampling_rate")),
    )
    track = params.get("stream_track")
    legs = params.get("stream_bidirectional_target_legs")
    return StreamMedia(
        encoding=encoding,
        sample_rate=rate,
        out_encoding=out,
        out_sample_rate=out_rate,
        stream_track=track if isinstance(track, str) and track else "inbound_track",
        # Assumption: on a call with one leg, "opposite" is nobody (the callee hears nothing).
        hears_bot=legs in (None, "self", "both"),
    )


def texml_media(
    stream: TeXMLStream, *, callee_codec: str | None = None, callee_sample_rate: int | None = None
) -> StreamMedia:
    """A TeXML ``<Stream>`` to a callee speaking ``callee_codec``."""
    encoding, rate, out, out_rate = _resolve(
        callee_codec,
        callee_sample_rate,
        _codec(stream.codec),
        _codec(stream.bidirectional_codec),
        stream.bidirectional_sampling_rate,
    )
    return StreamMedia(
        encoding=encoding,
        sample_rate=rate,
        out_encoding=out,
        out_sample_rate=out_rate,
        stream_track=stream.track or "inbound_track",
    )
