"""One Telnyx media stream's lifecycle, sans-I/O, in the style of h11's ``Connection``.

A :class:`Stream` is made per WebSocket with a :class:`Role`: ``Role.APP`` is callpipe's
bot server (it receives what Telnyx sends and sends ``media``/``mark``/``clear``);
``Role.TELNYX`` is Telnyx's side (the simulator: it sends ``connected``/``start``/media/
``dtmf``/mark echoes/``error``/``stop`` and receives the bot's messages). Text goes in
through :meth:`Stream.receive` and comes out as events (the typed events of
:mod:`callpipe.telnyx.protocol`); events go in through :meth:`Stream.send` and come out
as text. Nothing here touches a socket or a clock.

States::

    AWAITING_CONNECTED --connected--> AWAITING_START --start--> STREAMING --stop--> STOPPED
            |                                                                         |
            +---------------------------- close() (any state) ------------------------+--> CLOSED

``start`` without ``connected`` first is accepted on receive (some peers skip it). The
handshake is bounded: more than ``max_handshake_messages`` messages without a ``start``
is an error. While streaming the machine keeps the marks sent and not yet echoed
(:attr:`Stream.pending_marks`), counts media that arrive out of order (by
``sequence_number`` and ``chunk``), and lets only the tracks in ``tracks`` through
(with ``stream_track=both_tracks`` Telnyx also sends the ``outbound`` track, which the
bot must not hear). Every violation raises :class:`StreamProtocolError`.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from callpipe.telnyx import protocol

__all__ = [
    "CALLER_TRACK",
    "DTMF",
    "Clear",
    "Connected",
    "Error",
    "InboundMedia",
    "Mark",
    "MarkEcho",
    "Media",
    "Role",
    "SendEvent",
    "Start",
    "State",
    "Stop",
    "Stream",
    "StreamCounters",
    "StreamProtocolError",
]


# The caller's audio; with ``stream_track=both_tracks`` Telnyx also sends ``outbound``.
CALLER_TRACK = "inbound"


class StreamProtocolError(protocol.ProtocolError):
    """A message or an action that breaks the stream protocol in the current state.

    ``kind`` says which rule: ``malformed`` (not a valid message), ``handshake`` (no
    ``start`` within the bounds), ``state`` (not allowed in this state), ``role`` (the
    other side's message), ``stream_id`` (a message of another stream) or ``mark`` (an
    echo of a mark never sent) or ``size`` (a message over ``max_message_bytes``).
    """

    def __init__(self, message: str, *, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


class Role(enum.Enum):
    """Which end of the stream this object plays."""

    APP = "app"
    TELNYX = "telnyx"


class State(enum.Enum):
    """Where the stream is in its lifecycle."""

    AWAITING_CONNECTED = "awaiting_connected"
    AWAITING_START = "awaiting_start"
    STREAMING = "streaming"
    STOPPED = "stopped"
    CLOSED = "closed"


# ----------------------------------------------------------------- events to send
# The application side sends these three.


@dataclass(frozen=True, slots=True)
class Media:
    """Play ``payload`` (encoded audio) to the caller."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class Mark:
    """Ask Telnyx to echo ``name`` once the audio sent before it has played."""

    name: str


@dataclass(frozen=True, slots=True)
class Clear:
    """Drop the audio queued for playback (barge-in)."""


# Telnyx's side (the simulator) sends these; sequence numbers, chunks and timestamps are
# assigned by the machine.


@dataclass(frozen=True, slots=True)
class Connected:
    """The first message: the WebSocket is up."""

    version: str = "1.0.0"
    auth_token: str | None = None


@dataclass(frozen=True, slots=True)
class Start:
    """The stream starts (the stream id is the :class:`Stream`'s)."""

    call_control_id: str
    encoding: str = "PCMU"
    sample_rate: int = 8000
    channels: int = 1
    call_session_id: str = ""
    user_id: str = ""
    from_number: str = ""
    to_number: str = ""
    client_state: str | None = None
    custom_parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class InboundMedia:
    """A frame of call audio; ``timestamp`` (ms) defaults to 20 ms after the last one."""

    payload: bytes
    track: str = "inbound"
    timestamp: int | None = None


@dataclass(frozen=True, slots=True)
class DTMF:
    """The caller pressed ``digit``."""

    digit: str


@dataclass(frozen=True, slots=True)
class MarkEcho:
    """The audio before mark ``name`` has played (or was cleared)."""

    name: str


@dataclass(frozen=True, slots=True)
class Error:
    """A streaming error reported to the application."""

    code: int | str
    title: str
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Stop:
    """The stream ends."""


SendEvent: TypeAlias = (
    Media | Mark | Clear | Connected | Start | InboundMedia | DTMF | MarkEcho | Error | Stop
)

_APP_SENDS = (Media, Mark, Clear)
# Enum members and classes as module globals: looked up on every media message.
_MediaEvent = protocol.MediaEvent
_TELNYX_SENDS = (Connected, Start, InboundMedia, DTMF, MarkEcho, Error, Stop)


_APP = Role.APP
_CLOSED = State.CLOSED
_STOPPED = State.STOPPED
_STREAMING = State.STREAMING


@dataclass(slots=True)
class StreamCounters:
    """What the machine skipped or noticed (for logs and metrics)."""

    handshake_skipped: int = 0  # messages before start that carried nothing for the handshake
    media_filtered: int = 0  # media of a track the bot must not hear
    media_out_of_order: int = 0  # media whose sequence number or chunk went backwards
    unexpected_marks: int = 0  # echoes of marks never sent (or already echoed)
    ignored: int = 0  # repeats (connected/start while streaming) and messages after stop


class Stream:
    """One Telnyx media stream, as seen from ``role``; see the module docstring."""

    def __init__(
        self,
        role: Role,
        *,
        stream_id: str = "",
        tracks: Iterable[str] = (CALLER_TRACK,),
        max_handshake_messages: int = 3,
        max_message_bytes: int | None = 64 * 1024,
    ) -> None:
        self.role = role
        self.state = State.AWAITING_CONNECTED
        self.stream_id = stream_id
        self.tracks = frozenset(tracks)
        self.max_handshake_messages = max_handshake_messages
        self.max_message_bytes = max_message_bytes
        self.counters = StreamCounters()
        self.auth_token: str | None = None
        self.start: protocol.StartEvent | None = None
        self._pending: dict[str, int] = {}  # mark name -> how many are outstanding (ordered)
        self._handshake_messages = 0
        self._last_media_seq = -1
        self._last_chunk = -1
        self._seq = 0  # Telnyx side: the last sequence number sent
        self._tracks_sent: dict[str, tuple[int, int]] = {}  # track -> last (chunk, timestamp)
        self._call_control_id = ""  # Telnyx side: from the start sent, repeated in stop

    @classmethod
    def streaming(
        cls,
        role: Role,
        *,
        stream_id: str,
        start: protocol.StartEvent | None = None,
        tracks: Iterable[str] = (CALLER_TRACK,),
        max_message_bytes: int | None = 64 * 1024,
    ) -> Stream:
        """A stream whose handshake was read elsewhere (it starts in ``STREAMING``)."""
        stream = cls(role, stream_id=stream_id, tracks=tracks, max_message_bytes=max_message_bytes)
        stream.state = State.STREAMING
        stream.start = start
        return stream

    # ------------------------------------------------------------------ state

    @property
    def pending_marks(self) -> tuple[str, ...]:
        """Marks sent (or, on Telnyx's side, received) and not yet echoed, oldest first."""
        return tuple(name for name, n in self._pending.items() for _ in range(n))

    def close(self) -> None:
        """The socket is gone: nothing more is sent or received."""
        self.state = State.CLOSED

    def _fail(self, message: str, kind: str) -> StreamProtocolError:
        return StreamProtocolError(message, kind=kind)

    # ---------------------------------------------------------------- receive

    def receive(self, text: str | bytes) -> list[protocol.Event]:
        """Feed one WebSocket message; return the events it carries (often one, maybe none)."""
        event = self.receive_event(text)
        return [] if event is None else [event]

    def receive_event(self, text: str | bytes) -> protocol.Event | None:
        """Like :meth:`receive`, for the hot path: a message carries at most one event.

        ``None`` when the message carries nothing for the caller (a filtered track, an
        unexpected mark echo, a repeat, anything after ``stop``). No list is allocated.
        """
        state = self.state
        if state is _CLOSED:
            raise self._fail("the stream is closed", "state")
        try:
            event = protocol.parse_event(text, max_length=self.max_message_bytes)
        except protocol.MessageTooLarge as exc:
            raise self._fail(str(exc), "size") from None
        except protocol.ProtocolError as exc:
            raise self._fail(str(exc), "malformed") from None
        if self.role is _APP:
            if state is _STREAMING and type(event) is _MediaEvent:
                # Every 20 ms of every call comes here: the common case first.
                sid = event.stream_id
                if sid and sid != self.stream_id and self.stream_id:
                    raise self._fail(f"message of stream {sid!r} on stream {self.stream_id!r}", "stream_id")
                return self._media(event)
            if state is _STOPPED:
                self.counters.ignored += 1
                return None
            return self._app_receive(event)
        if state is _STOPPED:
            self.counters.ignored += 1
            return None
        return self._telnyx_receive(event)

    def _check_stream_id(self, event: protocol.Event) -> None:
        sid = getattr(event, "stream_id", "")
        if sid and self.stream_id and sid != self.stream_id:
            raise self._fail(f"message of stream {sid!r} on stream {self.stream_id!r}", "stream_id")

    def _app_receive(self, event: protocol.Event) -> protocol.Event | None:
        if self.state is not State.STREAMING:
            return self._handshake(event)
        self._check_stream_id(event)
        if isinstance(event, protocol.MediaEvent):
            return self._media(event)
        if isinstance(event, protocol.MarkEvent):
            if not self._take_mark(event.name):
                self.counters.unexpected_marks += 1
                return None
            return event
        if isinstance(event, protocol.StopEvent):
            self.state = State.STOPPED
            return event
        if isinstance(event, (protocol.ConnectedEvent, protocol.StartEvent)):
            self.counters.ignored += 1
            return None
        if isinstance(event, protocol.ClearEvent):
            raise self._fail("'clear' is sent by the application, not by Telnyx", "role")
        return event  # dtmf, error, unknown

    def _handshake(self, event: protocol.Event) -> protocol.Event | None:
        self._handshake_messages += 1
        if isinstance(event, protocol.StartEvent):
            self._check_stream_id(event)
            self.stream_id = event.stream_id
            self.start = event
            self.state = State.STREAMING
            return event
        if isinstance(event, protocol.ConnectedEvent) and self.state is State.AWAITING_CONNECTED:
            self.auth_token = event.auth_token
            self.state = State.AWAITING_START
            result: protocol.Event | None = event
        elif isinstance(event, (protocol.UnknownEvent, protocol.ErrorEvent, protocol.StopEvent)):
            # The caller decides: another provider's handshake, an early error or stop.
            result = event
            if isinstance(event, protocol.StopEvent):
                self.state = State.STOPPED
        else:
            # Media or a stray mark before start: skipped, within the bounds.
            self.counters.handshake_skipped += 1
            result = None
        if self._handshake_messages >= self.max_handshake_messages and self.state is not State.STOPPED:
            raise self._fail(f"no start message within {self.max_handshake_messages} messages", "handshake")
        return result

    def _media(self, event: protocol.MediaEvent) -> protocol.Event | None:
        media = event.media
        if media.track not in self.tracks:
            # Before the order checks: chunks are numbered per track (both_tracks).
            self.counters.media_filtered += 1
            return None
        seq, chunk = event.sequence_number, media.chunk
        late = False
        if seq is not None:
            if seq <= self._last_media_seq:
                late = True
            else:
                self._last_media_seq = seq
        if chunk is not None:
            if chunk <= self._last_chunk:
                late = True
            else:
                self._last_chunk = chunk
        if late:
            self.counters.media_out_of_order += 1
        return event

    def _telnyx_receive(self, event: protocol.Event) -> protocol.Event | None:
        if isinstance(event, protocol.MarkEvent):
            self._pending[event.name] = self._pending.get(event.name, 0) + 1
            return event
        if isinstance(event, (protocol.MediaEvent, protocol.ClearEvent, protocol.UnknownEvent)):
            return event
        name = type(event).__name__.removesuffix("Event").lower()
        raise self._fail(f"{name!r} is sent by Telnyx, not by the application", "role")

    def _take_mark(self, name: str) -> bool:
        n = self._pending.get(name, 0)
        if n == 0:
            return False
        if n == 1:
            del self._pending[name]
        else:
            self._pending[name] = n - 1
        return True

    # ------------------------------------------------------------------- send

    def send(self, event: SendEvent) -> str:
        """Turn ``event`` into the text to write on the socket, checking it is allowed now."""
        if type(event) is Media and self.state is _STREAMING and self.role is _APP:
            return protocol.build_media(event.payload)  # every 20 ms chunk of bot audio
        if self.state in (State.CLOSED, State.STOPPED):
            raise self._fail(f"cannot send {type(event).__name__} on a {self.state.value} stream", "state")
        if self.role is Role.APP:
            if not isinstance(event, _APP_SENDS):
                raise self._fail(f"{type(event).__name__} is sent by Telnyx, not by the application", "role")
            return self._app_send(event)
        if not isinstance(event, _TELNYX_SENDS):
            raise self._fail(f"{type(event).__name__} is sent by the application, not by Telnyx", "role")
        return self._telnyx_send(event)

    def _app_send(self, event: Media | Mark | Clear) -> str:
        if self.state is not State.STREAMING:
            raise self._fail(f"cannot send {type(event).__name__} before the stream started", "state")
        if isinstance(event, Media):
            return protocol.build_media(event.payload)
        if isinstance(event, Mark):
            self._pending[event.name] = self._pending.get(event.name, 0) + 1
            return protocol.build_mark(event.name)
        return protocol.build_clear()

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _telnyx_send(self, event: SendEvent) -> str:
        if isinstance(event, Connected):
            if self.state is not State.AWAITING_CONNECTED:
                raise self._fail("'connected' is sent once, first", "state")
            self.state = State.AWAITING_START
            return protocol.build_connected(event.version, event.auth_token)
        if isinstance(event, Start):
            if self.state is not State.AWAITING_START:
                raise self._fail(f"cannot send start while {self.state.value}", "state")
            self.state = State.STREAMING
            self._call_control_id = event.call_control_id
            return protocol.build_start(
                stream_id=self.stream_id,
                call_control_id=event.call_control_id,
                encoding=event.encoding,
                sample_rate=event.sample_rate,
                channels=event.channels,
                sequence_number=self._next_seq(),
                call_session_id=event.call_session_id,
                user_id=event.user_id,
                from_number=event.from_number,
                to_number=event.to_number,
                client_state=event.client_state,
                custom_parameters=event.custom_parameters,
            )
        if isinstance(event, Error):
            return protocol.build_error(
                code=event.code,
                title=event.title,
                detail=event.detail,
                stream_id=self.stream_id,
                sequence_number=self._next_seq(),
            )
        if self.state is not State.STREAMING:
            raise self._fail(f"cannot send {type(event).__name__} before start", "state")
        return self._telnyx_send_streaming(event)

    def _telnyx_send_streaming(self, event: SendEvent) -> str:
        if isinstance(event, InboundMedia):
            # Assumption: with both_tracks, each track has its own chunks and timestamps
            # (the sequence number counts every message).
            chunk, timestamp = self._tracks_sent.get(event.track, (0, -20))
            chunk += 1
            timestamp = timestamp + 20 if event.timestamp is None else event.timestamp
            self._tracks_sent[event.track] = (chunk, timestamp)
            return protocol.build_inbound_media(
                event.payload,
                stream_id=self.stream_id,
                sequence_number=self._next_seq(),
                chunk=chunk,
                timestamp=timestamp,
                track=event.track,
            )
        if isinstance(event, DTMF):
            return protocol.build_dtmf(
                event.digit, stream_id=self.stream_id, sequence_number=self._next_seq()
            )
        if isinstance(event, MarkEcho):
            if not self._take_mark(event.name):
                raise self._fail(f"mark {event.name!r} was never received", "mark")
            return protocol.build_mark_echo(
                event.name, stream_id=self.stream_id, sequence_number=self._next_seq()
            )
        assert isinstance(event, Stop)
        self.state = State.STOPPED
        return protocol.build_stop(
            stream_id=self.stream_id, call_control_id=self._call_control_id, sequence_number=self._next_seq()
        )
