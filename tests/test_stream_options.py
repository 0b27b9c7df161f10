"""The stream's per-direction options: settings, ``/start`` fields, the fake's codec choice,
the serializer's two codecs. Pure logic, no sockets."""

from __future__ import annotations

from typing import Any

import pytest

from callpipe.server.settings import ServerSettings, SettingsError
from callpipe.server.stream_options import (
    StreamOptions,
    bidirectional_of,
    check_codec,
    from_request,
    from_settings,
    scope_parts,
)
from callpipe.server.urls import stream_url
from callpipe.sim.fake_api.media import call_control_media, texml_media
from callpipe.sim.texml import TeXMLStream
from callpipe.transports.serializers import TelnyxFrameSerializer, TelnyxSerializerParams


def _settings(**values: Any) -> ServerSettings:
    base = {"public_url": "https://bot.example", "callpipe_secret": "s" * 20}
    return ServerSettings(_env_file=None, **{**base, **values})  # type: ignore[call-arg]


def test_codecs_are_normalised_and_checked() -> None:
    assert check_codec("pcma", None) == ("PCMA", 8000)
    assert check_codec("G722", 8000) == ("G722", 16000)  # the RTP clock rate of 16 kHz audio
    assert check_codec("L16", 8000) == ("L16", 8000)
    with pytest.raises(ValueError, match="cannot encode"):
        check_codec("OPUS", 16000)
    with pytest.raises(ValueError, match="PCMU does not support sample_rate=16000"):
        check_codec("PCMU", 16000)


def test_settings_give_the_dial_its_stream_fields() -> None:
    options = from_settings(
        _settings(stream_codec="L16", stream_sample_rate=16000, stream_track="both_tracks")
    )
    assert options == StreamOptions(codec="L16", sampling_rate=16000, track="both_tracks")
    assert options.dial_fields() == {
        "stream_track": "both_tracks",
        "stream_bidirectional_mode": "rtp",
        "stream_bidirectional_codec": "L16",
        "stream_bidirectional_sampling_rate": 16000,
        "stream_bidirectional_target_legs": None,
    }
    with pytest.raises(SettingsError, match="STREAM_TARGET_LEGS"):
        _settings(stream_target_legs="everyone").check_for_serving()
    with pytest.raises(SettingsError, match="STREAM_CODEC"):
        _settings(stream_codec="AMR-WB").check_for_serving()


def test_start_fields_override_the_settings_per_call() -> None:
    settings = _settings(stream_codec="PCMU")
    assert from_request(settings, {"phone_number": "+1555"}) is None
    options = from_request(settings, {"stream_bidirectional_codec": "L16"})
    assert options is not None and (options.codec, options.sampling_rate) == ("L16", 16000)
    options = from_request(
        settings,
        {
            "stream_bidirectional_codec": "G722",
            "stream_bidirectional_target_legs": "both",
            "stream_track": "both_tracks",
        },
    )
    assert options == StreamOptions(
        codec="G722", sampling_rate=16000, target_legs="both", track="both_tracks"
    )
    for bad, match in [
        ({"stream_bidirectional_codec": "OPUS"}, "cannot encode"),
        ({"stream_bidirectional_codec": 7}, "must be a string"),
        ({"stream_bidirectional_sampling_rate": "16000"}, "must be an integer"),
        ({"stream_bidirectional_codec": "PCMA", "stream_bidirectional_sampling_rate": 16000}, "sample_rate"),
        ({"stream_bidirectional_target_legs": "nobody"}, "self, opposite, both"),
        ({"stream_track": "left"}, "inbound_track, outbound_track, both_tracks"),
    ]:
        with pytest.raises(ValueError, match=match):
            from_request(settings, bad)


def test_the_stream_url_carries_the_codec_under_its_token() -> None:
    settings = _settings()
    options = StreamOptions(codec="L16", sampling_rate=16000)
    url = stream_url(
        settings,
        direction="outbound",
        call_sid=None,
        extra={"bidi_codec": "PCMA"},
        media=options.url_params(),
    )
    query = dict(part.split("=", 1) for part in url.split("?", 1)[1].split("&"))
    assert query["bidi_codec"] == "L16" and query["bidi_rate"] == "16000"  # not the caller's "extra"
    assert scope_parts(query) == ("L16", "16000") and scope_parts({}) == ()
    assert bidirectional_of(settings, query) == ("L16", 16000)
    assert bidirectional_of(_settings(stream_codec="PCMA"), {}) == ("PCMA", 8000)
    with pytest.raises(ValueError, match="malformed"):
        bidirectional_of(settings, {"bidi_codec": "L16", "bidi_rate": "fast"})


def test_the_fake_sends_the_callees_codec_and_expects_the_bidirectional_one() -> None:
    media = call_control_media(
        {"stream_bidirectional_codec": "L16", "stream_bidirectional_sampling_rate": 16000},
        callee_codec="PCMU",
    )
    assert (media.encoding, media.sample_rate, media.out_encoding, media.out_sample_rate) == (
        "PCMU",
        None,
        "L16",
        16000,
    )
    # No codec of its own: the callee speaks what the stream takes back (as before).
    media = call_control_media({"stream_bidirectional_codec": "G722"})
    assert (media.encoding, media.out_encoding) == ("G722", "G722")
    media = call_control_media({"stream_codec": "PCMA", "stream_track": "both_tracks"}, callee_codec="PCMU")
    assert (media.encoding, media.out_encoding, media.stream_track) == ("PCMA", "PCMA", "both_tracks")
    assert call_control_media({"stream_bidirectional_target_legs": "opposite"}).hears_bot is False
    assert call_control_media({"stream_bidirectional_target_legs": "self"}).hears_bot is True
    texml = texml_media(TeXMLStream(url="ws://x", bidirectional_codec="PCMU"), callee_codec="PCMA")
    assert (texml.encoding, texml.out_encoding) == ("PCMA", "PCMU")


def test_the_serializer_keeps_the_two_directions_apart() -> None:
    serializer = TelnyxFrameSerializer(
        "s",
        outbound_encoding="PCMU",
        inbound_encoding="L16",
        params=TelnyxSerializerParams(telnyx_sample_rate=8000, inbound_sample_rate=16000, auto_hang_up=False),
    )
    assert (serializer.in_codec.name, serializer.in_codec.sample_rate) == ("PCMU", 8000)
    assert (serializer.out_codec.name, serializer.out_codec.sample_rate) == ("L16", 16000)
    # A guide-style serializer (no rates): the start's rate for what Telnyx sends, the
    # stream's bidirectional rate for what we send.
    guide = TelnyxFrameSerializer(
        "s",
        outbound_encoding="L16",
        inbound_encoding="L16",
        params=TelnyxSerializerParams(auto_hang_up=False),
    )
    guide.use_call_sample_rate(8000, 16000)
    assert guide.in_codec.sample_rate == 8000 and guide.out_codec.sample_rate == 16000
    same = TelnyxFrameSerializer(
        "s",
        outbound_encoding="L16",
        inbound_encoding="L16",
        params=TelnyxSerializerParams(auto_hang_up=False),
    )
    same.use_call_sample_rate(8000)
    assert same.in_codec.sample_rate == 8000 and same.out_codec.sample_rate == 8000
