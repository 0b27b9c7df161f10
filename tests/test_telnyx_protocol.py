"""The Telnyx media-stream protocol: every event, every builder, every malformed case."""

from __future__ import annotations

import base64
import json

import pytest

from callpipe.telnyx import protocol as p

STREAM_ID = "32DE0DEA-53CB-4B21-89A4-9E1819C043BC"
CCID = "v3:MdI91X4lWFEs7IgbBEOT9M4AigoY08M0WWZFISt1Yw2axZ_IiE4pqg"

# Shapes as documented in Telnyx's "Stream call media over WebSocket" reference.
CONNECTED = {"event": "connected", "version": "1.0.0"}
START = {
    "event": "start",
    "sequence_number": "1",
    "stream_id": STREAM_ID,
    "start": {
        "user_id": "3E6F995F-85F7-4705-9741-53B116D28237",
        "call_control_id": CCID,
        "call_session_id": "ff55a038-6f5d-11ef-9692-02420aeffb1f",
        "from": "+13122010094",
        "to": "+13122123456",
        "tags": ["TAG1", "TAG2"],
        "client_state": "aGF2ZSBhIG5pY2UgZGF5ID1d",
        "custom_parameters": {"customer_id": "customer_123"},
        "media_format": {"encoding": "PCMU", "sample_rate": 8000, "channels": 1},
    },
}
AUDIO = bytes(range(160))
MEDIA = {
    "event": "media",
    "sequence_number": "4",
    "media": {
        "track": "inbound",
        "chunk": "2",
        "timestamp": "5",
        "payload": base64.b64encode(AUDIO).decode(),
    },
    "stream_id": STREAM_ID,
}
STOP = {
    "event": "stop",
    "sequence_number": "5",
    "stop": {"user_id": "3E6F995F", "call_control_id": CCID},
    "stream_id": STREAM_ID,
}
DTMF = {
    "event": "dtmf",
    "stream_id": STREAM_ID,
    "occurred_at": "2026-11-24T08:00:00.000000Z",
    "sequence_number": "6",
    "dtmf": {"digit": "#"},
}
MARK = {"event": "mark", "sequence_number": "7", "stream_id": STREAM_ID, "mark": {"name": "turn-1"}}
ERROR = {
    "event": "error",
    "stream_id": STREAM_ID,
    "payload": {"code": 100002, "title": "unknown_error", "detail": "An unknown error occurred"},
}


def dumps(obj: object) -> str:
    return json.dumps(obj)


def test_connected() -> None:
    event = p.parse_event(dumps(CONNECTED))
    assert isinstance(event, p.ConnectedEvent)
    assert event.version == "1.0.0"
    assert event.auth_token is None


def test_connected_with_streaming_auth_token() -> None:
    event = p.parse_event(dumps({**CONNECTED, "x-telnyx-streaming-auth-token": "tok-123"}))
    assert isinstance(event, p.ConnectedEvent)
    assert event.auth_token == "tok-123"


def test_start_every_field() -> None:
    event = p.parse_event(dumps(START))
    assert isinstance(event, p.StartEvent)
    assert event.stream_id == STREAM_ID
    assert event.sequence_number == 1  # a string on the wire
    assert event.call_control_id == CCID
    assert event.call_session_id == "ff55a038-6f5d-11ef-9692-02420aeffb1f"
    assert event.user_id == "3E6F995F-85F7-4705-9741-53B116D28237"
    assert event.from_number == "+13122010094"
    assert event.to_number == "+13122123456"
    assert event.tags == ["TAG1", "TAG2"]
    assert event.client_state == "aGF2ZSBhIG5pY2UgZGF5ID1d"
    assert event.custom_parameters == {"customer_id": "customer_123"}
    assert event.media_format == p.MediaFormat(encoding="PCMU", sample_rate=8000, channels=1)


def test_start_minimal_uses_defaults() -> None:
    message = {
        "event": "start",
        "stream_id": "s1",
        "start": {"call_control_id": "c1", "media_format": {"encoding": "L16"}},
    }
    event = p.parse_event(dumps(message))
    assert isinstance(event, p.StartEvent)
    assert event.sequence_number is None
    assert event.from_number == "" and event.to_number == ""
    assert event.tags == [] and event.custom_parameters == {} and event.client_state is None
    assert event.media_format.sample_rate == 8000 and event.media_format.channels == 1


def test_media_payload_is_decoded() -> None:
    event = p.parse_event(dumps(MEDIA))
    assert isinstance(event, p.MediaEvent)
    assert event.payload == AUDIO
    assert event.track == "inbound"
    assert event.chunk == 2 and event.timestamp == 5 and event.sequence_number == 4
    assert event.stream_id == STREAM_ID


def test_media_accepts_bytes_and_numeric_fields() -> None:
    message = {**MEDIA, "sequence_number": 4, "media": {**MEDIA["media"], "chunk": 2, "timestamp": 5}}  # type: ignore[dict-item]
    event = p.parse_event(dumps(message).encode())
    assert isinstance(event, p.MediaEvent)
    assert (event.sequence_number, event.chunk, event.timestamp) == (4, 2, 5)


def test_stop() -> None:
    event = p.parse_event(dumps(STOP))
    assert isinstance(event, p.StopEvent)
    assert event.call_control_id == CCID
    assert event.sequence_number == 5


def test_stop_without_details() -> None:
    event = p.parse_event('{"event":"stop"}')
    assert isinstance(event, p.StopEvent)
    assert event.call_control_id == ""


def test_dtmf() -> None:
    event = p.parse_event(dumps(DTMF))
    assert isinstance(event, p.DTMFEvent)
    assert event.digit == "#"
    assert event.occurred_at.startswith("2026-11-24")


def test_mark() -> None:
    event = p.parse_event(dumps(MARK))
    assert isinstance(event, p.MarkEvent)
    assert event.name == "turn-1"


def test_error_under_payload() -> None:
    event = p.parse_event(dumps(ERROR))
    assert isinstance(event, p.ErrorEvent)
    assert (event.code, event.title, event.detail) == ("100002", "unknown_error", "An unknown error occurred")


def test_error_under_error_key_and_string_code() -> None:
    event = p.parse_event(dumps({"event": "error", "error": {"code": "100003", "title": "t", "detail": "d"}}))
    assert isinstance(event, p.ErrorEvent)
    assert (event.code, event.title, event.detail) == ("100003", "t", "d")


def test_error_without_details() -> None:
    event = p.parse_event('{"event":"error"}')
    assert isinstance(event, p.ErrorEvent)
    assert (event.code, event.title, event.detail) == ("", "", "")


def test_clear_is_parsed_for_the_simulator_side() -> None:
    assert isinstance(p.parse_event(p.build_clear()), p.ClearEvent)


def test_unknown_event_is_returned_not_raised() -> None:
    event = p.parse_event('{"event":"transcription","text":"hi"}')
    assert isinstance(event, p.UnknownEvent)
    assert event.event == "transcription"
    assert event.data == {"event": "transcription", "text": "hi"}


def test_unknown_extra_fields_are_ignored() -> None:
    message = {**MEDIA, "future_field": {"x": 1}, "media": {**MEDIA["media"], "extra": True}}  # type: ignore[dict-item]
    event = p.parse_event(dumps(message))
    assert isinstance(event, p.MediaEvent)
    assert event.payload == AUDIO


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("not json", "not valid JSON"),
        ("", "not valid JSON"),
        ('{"event":"media"', "not valid JSON"),
        ("[1, 2]", "Expected `object`, got `array`"),
        ('"media"', "Expected `object`, got `str`"),
        ("42", "Expected `object`, got `int`"),
        ('{"media":{}}', "missing required field `event`"),
        ('{"event": 5}', "Expected `str`"),
        ('{"event":"media"}', "missing required field `media`"),
        ('{"event":"media","media":{}}', "missing required field `payload`"),
        (
            '{"event":"media","media":{"payload":"***"}}',
            "invalid base64 audio payload - at `$.media.payload`",
        ),
        ('{"event":"media","media":{"payload":"AAE"}}', "invalid base64 audio payload"),
        (
            '{"event":"media","media":{"payload":12}}',
            "Expected `str` (base64 audio), got `int` - at `$.media.payload`",
        ),
        ('{"event":"media","media":{"payload":"AAAA"},"sequence_number":"x"}', "at `$.sequence_number`"),
        ('{"event":"media","media":{"payload":"AAAA","chunk":true}}', "at `$.media.chunk`"),
        ('{"event":"start","stream_id":"s","start":{}}', "missing required field `call_control_id`"),
        (
            '{"event":"start","start":{"call_control_id":"c","media_format":{"encoding":"PCMU"}}}',
            "`stream_id`",
        ),
        ('{"event":"start","stream_id":"s","start":{"call_control_id":"c"}}', "`media_format`"),
        (
            '{"event":"start","stream_id":"s","start":{"call_control_id":"c","media_format":{}}}',
            "missing required field `encoding`",
        ),
        (
            '{"event":"start","stream_id":"s","start":{"call_control_id":"c",'
            '"media_format":{"encoding":"PCMU","sample_rate":"fast"}}}',
            "at `$.start.media_format.sample_rate`",
        ),
        ('{"event":"start","stream_id":7,"start":{}}', "at `$.stream_id`"),
        ('{"event":"dtmf"}', "missing required field `dtmf`"),
        ('{"event":"dtmf","dtmf":{"digit":1}}', "at `$.dtmf.digit`"),
        ('{"event":"mark","mark":{}}', "missing required field `name`"),
        ('{"event":"mark"}', "missing required field `mark`"),
        ('{"event":"error","payload":"oops"}', "at `$.payload`"),
        ('{"event":"connected","version":1}', "at `$.version`"),
    ],
)
def test_malformed_messages_raise_protocol_error(text: str, reason: str) -> None:
    with pytest.raises(p.ProtocolError) as info:
        p.parse_event(text)
    assert reason in str(info.value)
    assert isinstance(info.value, ValueError)


def test_invalid_utf8_bytes_raise_protocol_error() -> None:
    with pytest.raises(p.ProtocolError):
        p.parse_event(b'{"event":"\xff\xfe"}')


def test_oversized_message_is_refused_before_parsing() -> None:
    huge = dumps({**MEDIA, "media": {"payload": base64.b64encode(bytes(100_000)).decode()}})
    with pytest.raises(p.ProtocolError, match="exceeds the limit of 4096"):
        p.parse_event(huge, max_length=4096)
    assert isinstance(p.parse_event(dumps(MEDIA), max_length=4096), p.MediaEvent)


# ------------------------------------------------------------------ builders


def test_build_media() -> None:
    text = p.build_media(AUDIO)
    assert json.loads(text) == {"event": "media", "media": {"payload": base64.b64encode(AUDIO).decode()}}


def test_build_media_empty_payload() -> None:
    assert json.loads(p.build_media(b"")) == {"event": "media", "media": {"payload": ""}}


def test_build_mark_escapes_name() -> None:
    name = 'turn "1" \\ ünï'
    assert json.loads(p.build_mark(name)) == {"event": "mark", "mark": {"name": name}}


def test_build_clear() -> None:
    assert json.loads(p.build_clear()) == {"event": "clear"}


def test_application_messages_round_trip_through_the_parser() -> None:
    media = p.parse_event(p.build_media(AUDIO))
    assert isinstance(media, p.MediaEvent) and media.payload == AUDIO
    mark = p.parse_event(p.build_mark("m-1"))
    assert isinstance(mark, p.MarkEvent) and mark.name == "m-1"


def test_telnyx_side_builders_match_documented_shapes() -> None:
    assert json.loads(p.build_connected()) == CONNECTED
    start = p.build_start(
        stream_id=STREAM_ID,
        call_control_id=CCID,
        encoding="PCMU",
        sample_rate=8000,
        sequence_number=1,
        call_session_id=START["start"]["call_session_id"],  # type: ignore[index]
        user_id=START["start"]["user_id"],  # type: ignore[index]
        from_number="+13122010094",
        to_number="+13122123456",
        tags=["TAG1", "TAG2"],
        client_state="aGF2ZSBhIG5pY2UgZGF5ID1d",
        custom_parameters={"customer_id": "customer_123"},
    )
    assert json.loads(start) == START
    media = p.build_inbound_media(AUDIO, stream_id=STREAM_ID, sequence_number=4, chunk=2, timestamp=5)
    assert json.loads(media) == MEDIA
    stop = p.build_stop(stream_id=STREAM_ID, call_control_id=CCID, sequence_number=5, user_id="3E6F995F")
    assert json.loads(stop) == STOP
    dtmf = p.build_dtmf("#", stream_id=STREAM_ID, sequence_number=6, occurred_at=DTMF["occurred_at"])
    assert json.loads(dtmf) == DTMF
    assert json.loads(p.build_mark_echo("turn-1", stream_id=STREAM_ID, sequence_number=7)) == MARK
    error = p.build_error(
        code=100002, title="unknown_error", detail="An unknown error occurred", stream_id=STREAM_ID
    )
    assert json.loads(error) == ERROR


def test_telnyx_side_builders_round_trip() -> None:
    token = p.parse_event(p.build_connected(auth_token="secret"))
    assert isinstance(token, p.ConnectedEvent) and token.auth_token == "secret"
    start = p.parse_event(
        p.build_start(stream_id="s", call_control_id="c", encoding="G722", sample_rate=16000)
    )
    assert isinstance(start, p.StartEvent)
    assert start.media_format == p.MediaFormat("G722", 16000, 1)
    media = p.parse_event(
        p.build_inbound_media(AUDIO, stream_id='odd "id"', sequence_number=9, chunk=8, timestamp=160)
    )
    assert isinstance(media, p.MediaEvent)
    assert media.stream_id == 'odd "id"' and media.payload == AUDIO and media.timestamp == 160
