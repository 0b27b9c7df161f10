"""Telnyx Media Streaming over WebSocket: the wire protocol, sans-I/O.

Nothing here touches a socket or an event loop. Text goes in, typed events come out
(:func:`parse_event`); values go in, text comes out (``build_*``). Both roles are covered,
like h11 does for HTTP: the *application* side (callpipe's bot server) parses what Telnyx
sends and builds ``media``/``mark``/``clear``; the *Telnyx* side (callpipe's simulator)
builds ``connected``/``start``/``media``/``dtmf``/``mark``/``error``/``stop`` and parses
what the application sends.

Message shapes follow Telnyx's "Stream call media over WebSocket" reference. Telnyx sends
``sequence_number``, ``media.chunk`` and ``media.timestamp`` as JSON *strings*; they are
exposed here as ``int`` (a numeric string or a number is accepted on input) and built as
strings, exactly as Telnyx sends them.

Parsing runs for every 20 ms frame of every call, so it is done by one pre-built
``msgspec`` decoder over a tagged union: the JSON parse, the field validation and the
base64 decoding of ``media.payload`` happen in one C pass (about 0.5 µs per media
message; see docs/benchmarks.md).
"""

from __future__ import annotations

import base64
from typing import Any, Final, TypeAlias

import msgspec

__all__ = [
    "ClearEvent",
    "ConnectedEvent",
    "DTMFEvent",
    "ErrorEvent",
    "Event",
    "MarkEvent",
    "MediaEvent",
    "MediaFormat",
    "MessageTooLarge",
    "ProtocolError",
    "StartEvent",
    "StopEvent",
    "UnknownEvent",
    "build_clear",
    "build_connected",
    "build_dtmf",
    "build_error",
    "build_inbound_media",
    "build_mark",
    "build_mark_echo",
    "build_media",
    "build_start",
    "build_stop",
    "parse_event",
]


class ProtocolError(ValueError):
    """A message that does not follow the Telnyx media-stream protocol.

    The message says what was wrong and where (for example
    ``invalid base64 at $.media.payload``).
    """


class MessageTooLarge(ProtocolError):
    """A message over the size limit, refused before any parsing work."""


# --------------------------------------------------------------------------- wire types
# Every struct ignores unknown fields (msgspec's default), so additions on Telnyx's side
# never break a call.


class MediaFormat(msgspec.Struct, frozen=True):
    """The audio format of a stream, from ``start.media_format``."""

    encoding: str
    sample_rate: int = 8000
    channels: int = 1


class _StartInfo(msgspec.Struct, frozen=True, rename={"from_": "from"}):
    call_control_id: str
    media_format: MediaFormat
    call_session_id: str = ""
    user_id: str = ""
    from_: str = ""
    to: str = ""
    tags: list[str] = msgspec.field(default_factory=list)
    client_state: str | None = None
    custom_parameters: dict[str, Any] = msgspec.field(default_factory=dict)


class _MediaInfo(msgspec.Struct, frozen=True):
    payload: bytes
    track: str = "inbound"
    chunk: int | None = None
    timestamp: int | None = None


class _StopInfo(msgspec.Struct, frozen=True):
    call_control_id: str = ""
    user_id: str = ""


class _DTMFInfo(msgspec.Struct, frozen=True):
    digit: str


class _MarkInfo(msgspec.Struct, frozen=True):
    name: str


class _ErrorInfo(msgspec.Struct, frozen=True):
    code: int | str | None = None
    title: str = ""
    detail: str = ""


# ------------------------------------------------------------------------------ events


class ConnectedEvent(
    msgspec.Struct,
    frozen=True,
    tag_field="event",
    tag="connected",
    rename={"auth_token": "x-telnyx-streaming-auth-token"},
):
    """First message on a stream: the WebSocket is up.

    ``auth_token`` carries ``x-telnyx-streaming-auth-token`` when the stream was started
    with a ``stream_auth_token``.
    """

    version: str = ""
    auth_token: str | None = None


class StartEvent(msgspec.Struct, frozen=True, tag_field="event", tag="start"):
    """The stream starts: identifies the call and its audio format."""

    stream_id: str
    start: _StartInfo
    sequence_number: int | None = None

    @property
    def call_control_id(self) -> str:
        """The Call Control id used for REST commands (hang-up, transfer, ...)."""
        return self.start.call_control_id

    @property
    def call_session_id(self) -> str:
        """The call session id."""
        return self.start.call_session_id

    @property
    def user_id(self) -> str:
        """The Telnyx user (account) id."""
        return self.start.user_id

    @property
    def from_number(self) -> str:
        """The caller's number (``start.from``)."""
        return self.start.from_

    @property
    def to_number(self) -> str:
        """The dialled number (``start.to``)."""
        return self.start.to

    @property
    def tags(self) -> list[str]:
        """Tags attached to the call."""
        return self.start.tags

    @property
    def client_state(self) -> str | None:
        """The call's ``client_state`` (base64, as set by whoever created the call)."""
        return self.start.client_state

    @property
    def custom_parameters(self) -> dict[str, Any]:
        """Custom parameters of the stream (TeXML ``<Parameter>`` / ``custom_parameters``)."""
        return self.start.custom_parameters

    @property
    def media_format(self) -> MediaFormat:
        """Encoding, sample rate and channel count of the audio Telnyx sends."""
        return self.start.media_format


class MediaEvent(msgspec.Struct, frozen=True, tag_field="event", tag="media"):
    """A chunk of call audio; ``payload`` is the raw RTP payload (base64 already decoded)."""

    media: _MediaInfo
    stream_id: str = ""
    sequence_number: int | None = None

    @property
    def payload(self) -> bytes:
        """The encoded audio bytes (no RTP header)."""
        return self.media.payload

    @property
    def track(self) -> str:
        """``inbound`` (the caller) or ``outbound`` (what the call plays)."""
        return self.media.track

    @property
    def chunk(self) -> int | None:
        """The chunk counter Telnyx assigns."""
        return self.media.chunk

    @property
    def timestamp(self) -> int | None:
        """The media timestamp in milliseconds from the start of the stream."""
        return self.media.timestamp


class StopEvent(msgspec.Struct, frozen=True, tag_field="event", tag="stop"):
    """The stream is over (the call ended or streaming was stopped)."""

    stream_id: str = ""
    sequence_number: int | None = None
    stop: _StopInfo = _StopInfo()

    @property
    def call_control_id(self) -> str:
        """The Call Control id of the call whose stream stopped."""
        return self.stop.call_control_id


class DTMFEvent(msgspec.Struct, frozen=True, tag_field="event", tag="dtmf"):
    """The caller pressed a key."""

    dtmf: _DTMFInfo
    stream_id: str = ""
    sequence_number: int | None = None
    occurred_at: str = ""

    @property
    def digit(self) -> str:
        """The key: ``0``-``9``, ``*``, ``#`` or ``A``-``D``."""
        return self.dtmf.digit


class MarkEvent(msgspec.Struct, frozen=True, tag_field="event", tag="mark"):
    """A mark we sent came back: the audio before it has been played (or was cleared)."""

    mark: _MarkInfo
    stream_id: str = ""
    sequence_number: int | None = None

    @property
    def name(self) -> str:
        """The mark's name, as we sent it."""
        return self.mark.name


class ErrorEvent(msgspec.Struct, frozen=True, tag_field="event", tag="error"):
    """Telnyx reports a streaming error (for example a malformed message we sent)."""

    stream_id: str = ""
    sequence_number: int | None = None
    payload: _ErrorInfo | None = None
    # Some Telnyx examples nest the details under ``error`` instead of ``payload``.
    error: _ErrorInfo | None = None

    @property
    def _info(self) -> _ErrorInfo:
        return self.payload or self.error or _ErrorInfo()

    @property
    def code(self) -> str:
        """The error code as a string (Telnyx sends numbers or strings)."""
        code = self._info.code
        return "" if code is None else str(code)

    @property
    def title(self) -> str:
        """A short title of the error."""
        return self._info.title

    @property
    def detail(self) -> str:
        """A longer description of the error."""
        return self._info.detail


class ClearEvent(msgspec.Struct, frozen=True, tag_field="event", tag="clear"):
    """The application asks Telnyx to drop queued audio (barge-in). Sent, never received."""

    stream_id: str = ""


class UnknownEvent(msgspec.Struct, frozen=True):
    """A well-formed message whose ``event`` this module does not know.

    Returned instead of raising, so a protocol addition on Telnyx's side never ends a call.
    """

    event: str
    data: dict[str, Any]


Event: TypeAlias = (
    ConnectedEvent
    | StartEvent
    | MediaEvent
    | StopEvent
    | DTMFEvent
    | MarkEvent
    | ErrorEvent
    | ClearEvent
    | UnknownEvent
)

_KnownEvent: TypeAlias = (
    ConnectedEvent | StartEvent | MediaEvent | StopEvent | DTMFEvent | MarkEvent | ErrorEvent | ClearEvent
)

# strict=False lets "4" decode into an int field: Telnyx sends numbers as strings.
_decoder: Final[msgspec.json.Decoder[_KnownEvent]] = msgspec.json.Decoder(_KnownEvent, strict=False)
_any_decoder: Final[msgspec.json.Decoder[Any]] = msgspec.json.Decoder()
_encoder: Final = msgspec.json.Encoder()


def parse_event(text: str | bytes, *, max_length: int | None = None) -> Event:
    """Parse one WebSocket text message into a typed event.

    Raises :class:`ProtocolError` with a readable reason for anything malformed: not
    JSON, not an object, no ``event``, a missing required field, a wrong type or bad
    base64. An unknown ``event`` name is not an error: it returns :class:`UnknownEvent`.
    ``max_length`` rejects an oversized message before any parsing work is done.
    """
    if max_length is not None:
        size = len(text)
        # A str's length counts characters; only non-ASCII text can be longer in bytes.
        if isinstance(text, str) and size * 4 > max_length and not text.isascii():
            size = len(text.encode())
        if size > max_length:
            raise MessageTooLarge(f"message of {size} bytes exceeds the limit of {max_length}")
    try:
        return _decoder.decode(text)
    except msgspec.ValidationError as exc:
        reason = str(exc)
        if reason.startswith("Invalid value") and reason.endswith("at `$.event`"):
            return _unknown_event(text)
        raise ProtocolError(_readable(reason)) from None
    except msgspec.DecodeError as exc:
        raise ProtocolError(f"not valid JSON: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"not valid UTF-8: {exc}") from None


def _unknown_event(text: str | bytes) -> UnknownEvent:
    data = _any_decoder.decode(text)
    return UnknownEvent(event=str(data["event"]), data=data)


def _readable(reason: str) -> str:
    # msgspec's messages are precise; make the base64 ones say what the field holds.
    if reason.startswith("Invalid base64"):
        return "invalid base64 audio payload" + reason[len("Invalid base64 encoded string") :]
    return reason.replace("Expected `bytes`", "Expected `str` (base64 audio)")


# ------------------------------------------------------- application -> Telnyx builders


def build_media(payload: bytes) -> str:
    """Build a ``media`` message that plays ``payload`` (encoded audio) to the caller."""
    # base64 output never needs JSON escaping, so plain concatenation is safe and fastest.
    return '{"event":"media","media":{"payload":"' + base64.b64encode(payload).decode("ascii") + '"}}'


def build_mark(name: str) -> str:
    """Build a ``mark`` message; Telnyx echoes it once the audio before it has played."""
    return _encoder.encode({"event": "mark", "mark": {"name": name}}).decode()


def build_clear() -> str:
    """Build a ``clear`` message: drop all audio queued for playback (barge-in)."""
    return '{"event":"clear"}'


# ------------------------------------------- Telnyx -> application builders (simulator)


def build_connected(version: str = "1.0.0", auth_token: str | None = None) -> str:
    """Build the ``connected`` message Telnyx sends first."""
    message: dict[str, Any] = {"event": "connected", "version": version}
    if auth_token is not None:
        message["x-telnyx-streaming-auth-token"] = auth_token
    return _encoder.encode(message).decode()


def build_start(
    *,
    stream_id: str,
    call_control_id: str,
    encoding: str = "PCMU",
    sample_rate: int = 8000,
    channels: int = 1,
    sequence_number: int = 1,
    call_session_id: str = "",
    user_id: str = "",
    from_number: str = "",
    to_number: str = "",
    tags: list[str] | None = None,
    client_state: str | None = None,
    custom_parameters: dict[str, Any] | None = None,
) -> str:
    """Build the ``start`` message that identifies the call and its media format."""
    start: dict[str, Any] = {
        "user_id": user_id,
        "call_control_id": call_control_id,
        "call_session_id": call_session_id,
        "from": from_number,
        "to": to_number,
        "tags": tags or [],
        "client_state": client_state,
        "custom_parameters": custom_parameters or {},
        "media_format": {"encoding": encoding, "sample_rate": sample_rate, "channels": channels},
    }
    message = {
        "event": "start",
        "sequence_number": str(sequence_number),
        "start": start,
        "stream_id": stream_id,
    }
    return _encoder.encode(message).decode()


def build_inbound_media(
    payload: bytes,
    *,
    stream_id: str,
    sequence_number: int,
    chunk: int,
    timestamp: int,
    track: str = "inbound",
) -> str:
    """Build a ``media`` message as Telnyx sends it (numbers as strings)."""
    b64 = base64.b64encode(payload).decode("ascii")
    sid = _encoder.encode(stream_id).decode()
    return (
        f'{{"event":"media","sequence_number":"{sequence_number:d}","media":{{"track":"{track}",'
        f'"chunk":"{chunk:d}","timestamp":"{timestamp:d}","payload":"{b64}"}},"stream_id":{sid}}}'
    )


def build_stop(*, stream_id: str, call_control_id: str, sequence_number: int, user_id: str = "") -> str:
    """Build the ``stop`` message Telnyx sends when the stream ends."""
    message = {
        "event": "stop",
        "sequence_number": str(sequence_number),
        "stop": {"user_id": user_id, "call_control_id": call_control_id},
        "stream_id": stream_id,
    }
    return _encoder.encode(message).decode()


def build_dtmf(digit: str, *, stream_id: str, sequence_number: int, occurred_at: str = "") -> str:
    """Build the ``dtmf`` message Telnyx sends when the caller presses a key."""
    message = {
        "event": "dtmf",
        "stream_id": stream_id,
        "occurred_at": occurred_at,
        "sequence_number": str(sequence_number),
        "dtmf": {"digit": digit},
    }
    return _encoder.encode(message).decode()


def build_mark_echo(name: str, *, stream_id: str, sequence_number: int) -> str:
    """Build the ``mark`` message Telnyx sends back once the marked audio has played."""
    message = {
        "event": "mark",
        "sequence_number": str(sequence_number),
        "stream_id": stream_id,
        "mark": {"name": name},
    }
    return _encoder.encode(message).decode()


def build_error(
    *, code: int | str, title: str, detail: str, stream_id: str = "", sequence_number: int | None = None
) -> str:
    """Build the ``error`` message Telnyx sends when streaming fails."""
    message: dict[str, Any] = {
        "event": "error",
        "stream_id": stream_id,
        "payload": {"code": code, "title": title, "detail": detail},
    }
    if sequence_number is not None:
        message["sequence_number"] = str(sequence_number)
    return _encoder.encode(message).decode()
