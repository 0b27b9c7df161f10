"""The sans-I/O stream state machine: both roles, every transition and every error, no sockets."""

from __future__ import annotations

import pytest

from callpipe.telnyx import protocol
from callpipe.telnyx.stream import (
    DTMF,
    Clear,
    Connected,
    Error,
    InboundMedia,
    Mark,
    MarkEcho,
    Media,
    Role,
    Start,
    State,
    Stop,
    Stream,
    StreamProtocolError,
)

SID = "stream-1"


def _pair() -> tuple[Stream, Stream]:
    """A Telnyx side and an app side, handshake done through each other's text."""
    telnyx = Stream(Role.TELNYX, stream_id=SID)
    app = Stream(Role.APP)
    assert [type(e) for e in app.receive(telnyx.send(Connected(auth_token="tok")))] == [
        protocol.ConnectedEvent
    ]
    assert app.state is State.AWAITING_START and telnyx.state is State.AWAITING_START
    events = app.receive(telnyx.send(Start(call_control_id="v3:c1", encoding="PCMA", from_number="+1555")))
    assert app.state is State.STREAMING and telnyx.state is State.STREAMING
    (start,) = events
    assert isinstance(start, protocol.StartEvent)
    return telnyx, app


def test_handshake_through_both_roles() -> None:
    _, app = _pair()
    assert app.stream_id == SID
    assert app.auth_token == "tok"
    assert app.start is not None and app.start.call_control_id == "v3:c1"
    assert app.start.media_format.encoding == "PCMA" and app.start.from_number == "+1555"


def test_start_without_connected_is_accepted() -> None:
    telnyx = Stream(Role.TELNYX, stream_id=SID)
    telnyx.send(Connected())
    app = Stream(Role.APP)
    app.receive(telnyx.send(Start(call_control_id="c")))
    assert app.state is State.STREAMING and app.auth_token is None


def test_handshake_bound_counts_skipped_messages() -> None:
    telnyx = Stream(Role.TELNYX, stream_id=SID)
    app = Stream(Role.APP, max_handshake_messages=3)
    app.receive(telnyx.send(Connected()))
    stray = protocol.build_inbound_media(b"\xff", stream_id=SID, sequence_number=1, chunk=1, timestamp=0)
    assert app.receive(stray) == []
    assert app.counters.handshake_skipped == 1
    with pytest.raises(StreamProtocolError, match="no start message within 3") as info:
        app.receive(stray)
    assert info.value.kind == "handshake"


def test_unknown_and_error_before_start_are_returned() -> None:
    app = Stream(Role.APP)
    (unknown,) = app.receive('{"event":"hello","streamSid":"MZ1"}')
    assert isinstance(unknown, protocol.UnknownEvent)
    (error,) = app.receive(protocol.build_error(code=100, title="t", detail="d"))
    assert isinstance(error, protocol.ErrorEvent)
    assert app.state is State.AWAITING_CONNECTED


def test_stop_before_start_stops() -> None:
    app = Stream(Role.APP)
    (stop,) = app.receive(protocol.build_stop(stream_id=SID, call_control_id="c", sequence_number=1))
    assert isinstance(stop, protocol.StopEvent) and app.state is State.STOPPED
    assert app.receive(protocol.build_connected()) == []  # after stop: ignored
    assert app.counters.ignored == 1


def test_malformed_and_oversized_messages() -> None:
    app = Stream(Role.APP, max_message_bytes=100)
    with pytest.raises(StreamProtocolError, match="not valid JSON") as info:
        app.receive("{nope")
    assert info.value.kind == "malformed"
    assert isinstance(info.value, protocol.ProtocolError)  # existing handlers still catch it
    with pytest.raises(StreamProtocolError, match="exceeds the limit") as info:
        app.receive("{" + " " * 200 + "}")
    assert info.value.kind == "size"


def test_receive_event_is_receive_without_the_list() -> None:
    telnyx, app = _pair()
    event = app.receive_event(telnyx.send(InboundMedia(b"\x07")))
    assert isinstance(event, protocol.MediaEvent) and event.payload == b"\x07"
    assert app.receive_event(telnyx.send(InboundMedia(b"\x08", track="outbound"))) is None
    resumed = Stream.streaming(Role.APP, stream_id=SID)  # the handshake was read elsewhere
    assert resumed.state is State.STREAMING
    assert resumed.send(Media(b"\x01")) == protocol.build_media(b"\x01")


def test_both_tracks_are_numbered_per_track_and_filtered_first() -> None:
    telnyx, app = _pair()
    for i in range(3):
        app.receive(telnyx.send(InboundMedia(bytes([i]))))
        out = telnyx.send(InboundMedia(bytes([i]), track="outbound"))
        assert isinstance(event := protocol.parse_event(out), protocol.MediaEvent)
        assert (event.chunk, event.timestamp) == (i + 1, 20 * i)  # its own chunks
        assert app.receive(out) == []
    assert app.counters.media_filtered == 3 and app.counters.media_out_of_order == 0


def test_media_flows_and_order_is_checked() -> None:
    telnyx, app = _pair()
    texts = [telnyx.send(InboundMedia(bytes([i]))) for i in range(4)]
    got = [e for t in texts for e in app.receive(t)]
    assert [e.payload for e in got if isinstance(e, protocol.MediaEvent)] == [
        b"\x00",
        b"\x01",
        b"\x02",
        b"\x03",
    ]
    first = protocol.parse_event(texts[0])
    assert isinstance(first, protocol.MediaEvent)
    assert (first.chunk, first.timestamp) == (1, 0)
    last = protocol.parse_event(texts[-1])
    assert isinstance(last, protocol.MediaEvent) and (last.chunk, last.timestamp) == (4, 60)
    assert app.counters.media_out_of_order == 0
    app.receive(texts[1])  # a late repeat: still delivered, counted
    assert app.counters.media_out_of_order == 1


def test_explicit_timestamps_are_kept() -> None:
    telnyx, app = _pair()
    (event,) = app.receive(telnyx.send(InboundMedia(b"\x01", timestamp=500)))
    assert isinstance(event, protocol.MediaEvent) and event.timestamp == 500


def test_only_the_callers_track_reaches_the_bot() -> None:
    telnyx, app = _pair()
    assert app.receive(telnyx.send(InboundMedia(b"\x01", track="outbound"))) == []
    assert app.counters.media_filtered == 1
    assert len(app.receive(telnyx.send(InboundMedia(b"\x02")))) == 1
    both = Stream(Role.APP, tracks=("inbound", "outbound"))
    both.receive(protocol.build_start(stream_id=SID, call_control_id="c"))
    out = protocol.build_inbound_media(
        b"x", stream_id=SID, sequence_number=2, chunk=1, timestamp=0, track="outbound"
    )
    assert len(both.receive(out)) == 1


def test_marks_are_pending_until_echoed() -> None:
    telnyx, app = _pair()
    for name in ("a", "b", "a"):
        events = telnyx.receive(app.send(Mark(name)))
        assert isinstance(events[0], protocol.MarkEvent)
    assert app.pending_marks == ("a", "a", "b")
    assert telnyx.pending_marks == ("a", "a", "b")
    (echo,) = app.receive(telnyx.send(MarkEcho("b")))
    assert isinstance(echo, protocol.MarkEvent) and echo.name == "b"
    app.receive(telnyx.send(MarkEcho("a")))
    assert app.pending_marks == ("a",) and telnyx.pending_marks == ("a",)


def test_echo_of_an_unknown_mark() -> None:
    telnyx, app = _pair()
    # Telnyx's side refuses to echo what it never received ...
    with pytest.raises(StreamProtocolError, match="never received") as info:
        telnyx.send(MarkEcho("ghost"))
    assert info.value.kind == "mark"
    # ... and the app side drops (and counts) an echo it never asked for.
    assert app.receive(protocol.build_mark_echo("ghost", stream_id=SID, sequence_number=9)) == []
    assert app.counters.unexpected_marks == 1


def test_app_sends_media_and_clear() -> None:
    telnyx, app = _pair()
    (media,) = telnyx.receive(app.send(Media(b"\x01\x02")))
    assert isinstance(media, protocol.MediaEvent) and media.payload == b"\x01\x02"
    (clear,) = telnyx.receive(app.send(Clear()))
    assert isinstance(clear, protocol.ClearEvent)


def test_dtmf_error_and_stop() -> None:
    telnyx, app = _pair()
    (dtmf,) = app.receive(telnyx.send(DTMF("5")))
    assert isinstance(dtmf, protocol.DTMFEvent) and dtmf.digit == "5"
    (error,) = app.receive(telnyx.send(Error(code=100003, title="Malformed frame")))
    assert isinstance(error, protocol.ErrorEvent) and error.code == "100003"
    assert app.state is State.STREAMING  # an error report does not end the stream
    (stop,) = app.receive(telnyx.send(Stop()))
    assert isinstance(stop, protocol.StopEvent) and stop.call_control_id == "v3:c1"
    assert app.state is State.STOPPED and telnyx.state is State.STOPPED
    assert app.receive(telnyx_media(9)) == []
    with pytest.raises(StreamProtocolError, match="stopped") as info:
        app.send(Media(b"x"))
    assert info.value.kind == "state"
    with pytest.raises(StreamProtocolError, match="stopped"):
        telnyx.send(InboundMedia(b"x"))


def telnyx_media(seq: int) -> str:
    return protocol.build_inbound_media(b"\x00", stream_id=SID, sequence_number=seq, chunk=seq, timestamp=0)


def test_repeats_while_streaming_are_ignored() -> None:
    _, app = _pair()
    assert app.receive(protocol.build_connected()) == []
    assert app.receive(protocol.build_start(stream_id=SID, call_control_id="c")) == []
    assert app.counters.ignored == 2
    assert app.start is not None and app.start.call_control_id == "v3:c1"


def test_message_of_another_stream() -> None:
    _, app = _pair()
    with pytest.raises(StreamProtocolError, match="stream 'other'") as info:
        app.receive(
            protocol.build_inbound_media(b"x", stream_id="other", sequence_number=5, chunk=5, timestamp=0)
        )
    assert info.value.kind == "stream_id"


def test_role_violations() -> None:
    telnyx, app = _pair()
    with pytest.raises(StreamProtocolError, match="sent by Telnyx") as info:
        app.send(DTMF("1"))
    assert info.value.kind == "role"
    with pytest.raises(StreamProtocolError, match="sent by the application"):
        telnyx.send(Media(b"x"))
    with pytest.raises(StreamProtocolError, match="sent by the application, not by Telnyx"):
        app.receive(protocol.build_clear())
    with pytest.raises(StreamProtocolError, match="'dtmf' is sent by Telnyx"):
        telnyx.receive(protocol.build_dtmf("1", stream_id=SID, sequence_number=1))


def test_send_out_of_state() -> None:
    app = Stream(Role.APP)
    with pytest.raises(StreamProtocolError, match="before the stream started"):
        app.send(Media(b"x"))
    telnyx = Stream(Role.TELNYX, stream_id=SID)
    with pytest.raises(StreamProtocolError, match="cannot send start while awaiting_connected"):
        telnyx.send(Start(call_control_id="c"))
    with pytest.raises(StreamProtocolError, match="before start"):
        telnyx.send(InboundMedia(b"x"))
    telnyx.send(Connected())
    with pytest.raises(StreamProtocolError, match="sent once"):
        telnyx.send(Connected())
    assert protocol.parse_event(telnyx.send(Error(code=1, title="early")))  # errors may come any time


def test_close_ends_everything() -> None:
    telnyx, app = _pair()
    app.close()
    telnyx.close()
    assert app.state is State.CLOSED
    with pytest.raises(StreamProtocolError, match="closed"):
        app.receive(protocol.build_connected())
    with pytest.raises(StreamProtocolError, match="closed"):
        telnyx.send(DTMF("1"))
