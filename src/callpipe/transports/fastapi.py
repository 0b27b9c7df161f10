"""The FastAPI (Starlette) WebSocket transport for Telnyx media streams.

``transport.input()`` reads the call's WebSocket and pushes frames into the pipeline
(:mod:`callpipe.transports.input`); ``transport.output()`` takes the bot's frames at the
end of the pipeline and sends them (:mod:`callpipe.transports.output`); the settings are
:class:`~callpipe.transports.params.FastAPIWebsocketParams`. Both halves share the
call's :class:`~callpipe.telnyx.stream.Stream` (our side of the stream's state machine,
continued from the handshake ``parse_telephony_websocket`` read), so the stream's
lifecycle is kept in one place.

Events from outside the call's tasks (the shared VAD batcher and output clock, timers,
webhooks) reach the processors through the call's :class:`~callpipe.transports.inbox.CallInbox`
task, so processor code always runs in a task of its own call.
"""

from __future__ import annotations

import asyncio
import logging
import weakref

from starlette.websockets import WebSocket, WebSocketState

from callpipe.log import call_id
from callpipe.pipeline.frames import CancelTaskFrame, Frame
from callpipe.pipeline.processor import FrameDirection
from callpipe.telnyx.stream import Role, State, Stream
from callpipe.transports.base_transport import BaseTransport
from callpipe.transports.digits import DigitCollector
from callpipe.transports.inbox import CallInbox
from callpipe.transports.input import PAUSE_SECS, FastAPIWebsocketInputTransport
from callpipe.transports.output import FastAPIWebsocketOutputTransport
from callpipe.transports.params import (
    CLOSE_GOING_AWAY,
    CLOSE_INVALID_DATA,
    CLOSE_NORMAL,
    CLOSE_POLICY_VIOLATION,
    CLOSE_TOO_BIG,
    FastAPIWebsocketParams,
    fit_close_reason,
)
from callpipe.transports.serializers import MAX_MESSAGE_CHARS, TelnyxFrameSerializer

__all__ = [
    "CLOSE_GOING_AWAY",
    "CLOSE_INVALID_DATA",
    "CLOSE_NORMAL",
    "CLOSE_POLICY_VIOLATION",
    "CLOSE_TOO_BIG",
    "PAUSE_SECS",
    "FastAPIWebsocketInputTransport",
    "FastAPIWebsocketOutputTransport",
    "FastAPIWebsocketParams",
    "FastAPIWebsocketTransport",
    "fit_close_reason",
    "stream_of",
    "transport_for_call",
]

logger = logging.getLogger("callpipe.transports")


def stream_of(websocket: WebSocket, stream_id: str) -> Stream:
    """The call's stream machine: the handshake's (``parse_telephony_websocket`` keeps it on
    the socket), else a new one in ``STREAMING`` (the handshake was read some other way)."""
    stream = getattr(websocket.state, "callpipe_stream", None)
    if isinstance(stream, Stream) and stream.role is Role.APP and stream.state is State.STREAMING:
        stream.max_message_bytes = MAX_MESSAGE_CHARS
        return stream
    return Stream.streaming(Role.APP, stream_id=stream_id, max_message_bytes=MAX_MESSAGE_CHARS)


_live_transports: weakref.WeakValueDictionary[str, FastAPIWebsocketTransport] = weakref.WeakValueDictionary()


def transport_for_call(call_control_id: str) -> FastAPIWebsocketTransport | None:
    """The live transport of a call (for webhook events the server routes into its pipeline)."""
    return _live_transports.get(call_control_id)


class FastAPIWebsocketTransport(BaseTransport):
    """A call's WebSocket as a pair of processors: :meth:`input` and :meth:`output`.

    Events: ``on_client_connected(transport, websocket)`` once the pipeline starts, and
    ``on_client_disconnected(transport, websocket)`` when the caller's stream ends.
    """

    _count = 0

    def __init__(self, websocket: WebSocket, params: FastAPIWebsocketParams, name: str | None = None) -> None:
        super().__init__()
        FastAPIWebsocketTransport._count += 1
        self.name = name or f"FastAPIWebsocketTransport#{FastAPIWebsocketTransport._count}"
        if not isinstance(params.serializer, TelnyxFrameSerializer):
            raise TypeError("FastAPIWebsocketParams.serializer must be a TelnyxFrameSerializer")
        self.websocket = websocket
        self.params = params
        self.serializer: TelnyxFrameSerializer = params.serializer
        handshake = getattr(websocket.state, "callpipe_telephony", None) or {}
        self.serializer.use_call_sample_rate(
            handshake.get("sample_rate"), handshake.get("bidirectional_sampling_rate")
        )
        self.stream = stream_of(websocket, str(handshake.get("stream_id") or ""))
        self._closed = False
        self.call_id = call_id.get()
        for event in ("on_client_connected", "on_client_disconnected", "on_session_timeout"):
            self.register_event_handler(event)
        self.inbox = CallInbox(self.name)
        self.digits = DigitCollector()  # collect_digits (transports/digits.py)
        self._input = FastAPIWebsocketInputTransport(self)
        self._output = FastAPIWebsocketOutputTransport(self)
        if self.serializer.call_control_id:
            _live_transports[self.serializer.call_control_id] = self

    async def push_call_event(self, frame: Frame) -> None:
        """Push a frame that came from outside the stream (a webhook) into the pipeline.

        The frame enters through the call's inbox, so processors see it in the call's own
        task (not the webhook request's), in order with the call's other events.
        """
        self.inbox.post(self._input.push_frame(frame))

    async def end_from_outside(self, reason: str) -> None:
        """The call ended elsewhere (a ``call.hangup`` webhook): end this pipeline now.

        Direct, not through the inbox: upstream of the input is only the task itself (no
        processor code runs), and a hang-up must not wait behind a stuck processor.
        """
        await self._input.push_frame(CancelTaskFrame(reason=reason), FrameDirection.UPSTREAM)

    def input(self) -> FastAPIWebsocketInputTransport:
        """The processor that reads the call (first in the pipeline)."""
        return self._input

    def output(self) -> FastAPIWebsocketOutputTransport:
        """The processor that plays to the call (last in the pipeline, before aggregators)."""
        return self._output

    @property
    def output_processor(self) -> FastAPIWebsocketOutputTransport:
        """Same as :meth:`output`."""
        return self._output

    async def send_texts(self, messages: list[str]) -> None:
        """Send text messages in order; a closed socket ends sending quietly."""
        if self._closed:
            return
        try:
            for text in messages:
                await self.websocket.send({"type": "websocket.send", "text": text})
        except Exception as exc:  # the caller is gone; the input side ends the call
            logger.debug("send failed: %s", exc)
            self._closed = True

    def abort_connection(self) -> None:
        """Drop the TCP connection now, after a close frame was sent (a flooding peer).

        A graceful close waits for the peer's close frame, and until it comes the server
        parses (and inflates) every frame the peer had already sent: thousands per read
        for a flood, a stall for every call. Under uvicorn the ASGI ``receive`` is a
        method of its protocol object, which holds the asyncio transport; other servers
        keep the graceful close.
        """
        protocol_object = getattr(getattr(self.websocket, "_receive", None), "__self__", None)
        transport = getattr(protocol_object, "transport", None)
        if isinstance(transport, asyncio.BaseTransport) and hasattr(transport, "abort"):
            transport.abort()

    async def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        """Close the WebSocket once (with a close code and reason)."""
        if self._closed:
            return
        self._closed = True
        if self.websocket.client_state == WebSocketState.DISCONNECTED:
            return
        try:
            await self.websocket.close(code=code, reason=fit_close_reason(reason))
        except Exception as exc:
            logger.debug("close failed: %s", exc)
