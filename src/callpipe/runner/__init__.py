"""What a bot receives: :class:`RunnerArguments` and :func:`parse_telephony_websocket`.

Written so that a bot from Pipecat's Telnyx guide runs with only its imports changed::

    transport_type, call_data = await parse_telephony_websocket(websocket)
    serializer = TelnyxFrameSerializer(stream_id=call_data["stream_id"], ...)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import msgspec
from starlette.websockets import WebSocket, WebSocketState

from callpipe.audio import SUPPORTED_ENCODINGS
from callpipe.runner.types import CallData, RunnerArguments, TelnyxCallData, WebSocketRunnerArguments
from callpipe.telnyx import protocol
from callpipe.telnyx.stream import Role, State, Stream, StreamProtocolError
from callpipe.transports.params import fit_close_reason

if TYPE_CHECKING:
    from callpipe.transports.fastapi import FastAPIWebsocketTransport
    from callpipe.transports.serializers import TelnyxFrameSerializer

logger = logging.getLogger("callpipe.runner")

__all__ = [
    "CallData",
    "RunnerArguments",
    "TelephonyHandshakeError",
    "TelnyxCallData",
    "WebSocketRunnerArguments",
    "create_telnyx_transport",
    "create_transport",
    "parse_telephony_websocket",
]

# Close code for a handshake we refuse (RFC 6455 "policy violation").
CLOSE_POLICY_VIOLATION = 1008


class TelephonyHandshakeError(ValueError):
    """The WebSocket did not open like a Telnyx media stream; the socket has been closed."""


def _provider_of(message: Any) -> str | None:
    """Name the telephony provider a non-Telnyx handshake message comes from, if known."""
    if not isinstance(message, dict):
        return None
    start = message.get("start")
    if isinstance(start, dict):
        if "streamSid" in start or "callSid" in start or "streamSid" in message:
            return "Twilio"
        if "callId" in start or "streamId" in start:
            return "Plivo"
        if "stream_sid" in start or "call_sid" in start:
            return "Exotel"
    if "streamSid" in message:
        return "Twilio"
    if "stream_sid" in message:
        return "Exotel"
    return None


async def _refuse(websocket: WebSocket, reason: str) -> TelephonyHandshakeError:
    logger.warning("refusing stream: %s", reason)
    if websocket.client_state != WebSocketState.DISCONNECTED:
        try:
            await websocket.close(code=CLOSE_POLICY_VIOLATION, reason=fit_close_reason(reason))
        except Exception as exc:  # already gone: nothing more to tell the peer
            logger.debug("close failed: %s", exc)
    return TelephonyHandshakeError(reason)


async def parse_telephony_websocket(
    websocket: WebSocket, *, timeout: float = 5.0, max_messages: int = 3
) -> tuple[str, TelnyxCallData]:
    """Read Telnyx's ``connected`` and ``start`` messages; return ``("telnyx", call_data)``.

    ``call_data`` (a :class:`TelnyxCallData`: a dict that also answers Pipecat's
    attributes, ``call_data.from_number``) holds ``stream_id``, ``call_control_id`` (also
    as Pipecat's ``call_id``), ``call_session_id``,
    ``outbound_encoding`` (what Telnyx sends), ``sample_rate``, ``from``, ``to``,
    ``custom_parameters``, ``client_state``, ``tags``, ``user_id``, ``auth_token`` and
    ``query_params`` (the WebSocket URL's query string). The wait is bounded by
    ``timeout`` seconds and ``max_messages`` messages; on failure - a timeout, garbage,
    another provider's handshake, an unsupported encoding - the socket is closed with a
    reason and :class:`TelephonyHandshakeError` is raised.
    """
    cached = getattr(websocket.state, "callpipe_telephony", None)
    if cached is not None:
        # Already parsed (by `callpipe serve`): a bot written from Pipecat's guide calls
        # this again, and must get the same answer instead of waiting for a second start.
        return "telnyx", TelnyxCallData(cached)
    if websocket.client_state == WebSocketState.CONNECTING:
        await websocket.accept()
    stream = Stream(Role.APP, max_handshake_messages=max_messages)
    await _read_handshake(websocket, stream, timeout)
    if stream.start is None:
        raise await _refuse(
            websocket, f"no valid start message within {timeout:g}s / {max_messages} messages"
        )
    encoding = stream.start.media_format.encoding.upper()
    if encoding not in SUPPORTED_ENCODINGS:
        raise await _refuse(
            websocket,
            f"unsupported encoding {encoding!r} (supported: {', '.join(SUPPORTED_ENCODINGS)})",
        )
    call_data = _call_data_from_start(
        stream.start, encoding, auth_token=stream.auth_token, query_params=websocket.query_params
    )
    websocket.state.callpipe_telephony = call_data
    # The transport goes on with this machine: the stream's lifecycle is kept in one place.
    websocket.state.callpipe_stream = stream
    return "telnyx", TelnyxCallData(call_data)


async def _read_handshake(websocket: WebSocket, stream: Stream, timeout: float) -> None:
    """Feed ``stream`` messages until it streams, stops, times out or exceeds its handshake budget.

    Raises (after closing the socket) for a disconnect, a message that breaks the protocol,
    or another provider's handshake; the caller judges what ``stream.start`` holds then.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while stream.state is not State.STREAMING:
        remaining = deadline - loop.time()
        if remaining <= 0:
            return
        try:
            async with asyncio.timeout(remaining):
                message = await websocket.receive()
        except TimeoutError:
            return
        if message["type"] == "websocket.disconnect":
            raise TelephonyHandshakeError("the stream closed before its start message")
        data: str | bytes = message.get("text") or message.get("bytes") or b""
        try:
            events = stream.receive(data)
        except StreamProtocolError as exc:
            if exc.kind == "handshake":
                return
            raise await _refuse(websocket, _handshake_refusal(data, exc)) from None
        for event in events:
            if isinstance(event, protocol.UnknownEvent) and _provider_of(event.data) is not None:
                raise await _refuse(websocket, _other_provider(_provider_of(event.data)))
        if stream.state is State.STOPPED:
            return


def _call_data_from_start(
    event: protocol.StartEvent, encoding: str, *, auth_token: str | None, query_params: Mapping[str, str]
) -> TelnyxCallData:
    """What a bot learns about its call from the ``start`` message (and the socket's URL)."""
    return TelnyxCallData(
        {
            "stream_id": event.stream_id,
            "call_control_id": event.call_control_id,
            "call_id": event.call_control_id,
            "call_session_id": event.call_session_id,
            "outbound_encoding": encoding,
            "sample_rate": event.media_format.sample_rate,
            "channels": event.media_format.channels,
            "from": event.from_number,
            "to": event.to_number,
            "custom_parameters": dict(event.custom_parameters),
            "client_state": event.client_state,
            "tags": list(event.tags),
            "user_id": event.user_id,
            "auth_token": auth_token,
            "query_params": dict(query_params),
        }
    )


def _other_provider(provider: str | None) -> str:
    return f"unsupported provider: this looks like a {provider} stream; callpipe speaks Telnyx"


def _handshake_refusal(data: str | bytes, exc: StreamProtocolError) -> str:
    """Why a handshake message was refused: another provider's shape, else the protocol error."""
    try:
        raw = msgspec.json.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError):
        raw = None
    provider = _provider_of(raw)
    if provider is not None:
        return _other_provider(provider)
    return f"invalid handshake message: {exc}"


def _call_data_of(runner_args: RunnerArguments) -> TelnyxCallData:
    """The handshake: from ``runner_args``, else as already parsed on the socket, else a clear error."""
    if runner_args.call_data:
        return runner_args.call_data
    cached = getattr(runner_args.websocket.state, "callpipe_telephony", None)
    if cached:
        runner_args.call_data = TelnyxCallData(cached)
        return runner_args.call_data
    raise ValueError(
        "runner_args.call_data is empty: outside `callpipe serve` the handshake has not been read yet. "
        "Use `transport = await create_transport(runner_args, {...})`, or "
        "`await parse_telephony_websocket(runner_args.websocket)` before create_telnyx_transport()"
    )


def _telnyx_serializer(
    call_data: TelnyxCallData, *, inbound_encoding: str | None, api_key: str | None, api_base_url: str | None
) -> TelnyxFrameSerializer:
    import os

    from callpipe.transports.serializers import TelnyxFrameSerializer, TelnyxSerializerParams

    key = api_key if api_key is not None else os.environ.get("TELNYX_API_KEY") or None
    # What Telnyx takes back is what the stream was configured for (the server knows it:
    # ``bidirectional_codec``), else the call's own encoding.
    out_encoding = inbound_encoding or call_data.get("bidirectional_codec") or call_data["outbound_encoding"]
    return TelnyxFrameSerializer(
        stream_id=call_data["stream_id"],
        outbound_encoding=call_data["outbound_encoding"],
        inbound_encoding=out_encoding,
        call_control_id=call_data.get("call_control_id"),
        api_key=key,
        params=TelnyxSerializerParams(
            telnyx_sample_rate=call_data.get("sample_rate"),
            inbound_sample_rate=call_data.get("bidirectional_sampling_rate"),
            auto_hang_up=bool(key and call_data.get("call_control_id")),
            api_base_url=api_base_url or os.environ.get("TELNYX_API_BASE_URL") or None,
        ),
    )


def create_telnyx_transport(
    runner_args: RunnerArguments,
    *,
    vad_params: Any = None,
    vad: bool = True,
    inbound_encoding: str | None = None,
    api_key: str | None = None,
    api_base_url: str | None = None,
    **params: Any,
) -> FastAPIWebsocketTransport:
    """The call's :class:`FastAPIWebsocketTransport`, ready to use, in one call.

    The serializer is built from ``runner_args.call_data`` (or the handshake already parsed
    on the socket); audio goes back in the stream's bidirectional codec and rate (under
    ``callpipe serve``: ``call_data["bidirectional_codec"]``/``["bidirectional_sampling_rate"]``,
    what the TeXML or the dial asked Telnyx for), else in the call's own encoding, unless
    ``inbound_encoding`` says otherwise. ``TELNYX_API_KEY``
    (or ``api_key``) turns on hang-up through the REST API when the pipeline ends;
    ``TELNYX_API_BASE_URL`` points it elsewhere (the simulator). A Silero VAD is attached
    unless ``vad=False``. Other keyword arguments go to :class:`FastAPIWebsocketParams`.
    """
    from callpipe.audio.vad import SileroVADAnalyzer, VADParams
    from callpipe.transports.fastapi import FastAPIWebsocketParams, FastAPIWebsocketTransport

    serializer = _telnyx_serializer(
        _call_data_of(runner_args),
        inbound_encoding=inbound_encoding,
        api_key=api_key,
        api_base_url=api_base_url,
    )
    analyzer = SileroVADAnalyzer(params=vad_params or VADParams(stop_secs=0.2)) if vad else None
    return FastAPIWebsocketTransport(
        websocket=runner_args.websocket,
        params=FastAPIWebsocketParams(serializer=serializer, vad_analyzer=analyzer, **params),
    )


async def create_transport(
    runner_args: RunnerArguments, transport_params: Mapping[str, Callable[[], Any]]
) -> FastAPIWebsocketTransport:
    """Pipecat's ``create_transport``: the call's transport from a dict of params factories.

    ``transport_params["telnyx"]()`` gives the :class:`FastAPIWebsocketParams`; the Telnyx
    serializer is built for it (unless it has one) and ``add_wav_header`` is turned off.
    Works under ``callpipe serve`` (the handshake is already parsed) and in a server of
    your own (it is read here, and ``runner_args.call_data`` is filled in). Unlike
    :func:`create_telnyx_transport` no VAD is added: give it to the user aggregator, as
    Pipecat does, or to the params.
    """
    from callpipe.transports.fastapi import FastAPIWebsocketParams, FastAPIWebsocketTransport

    if not runner_args.call_data and not getattr(runner_args.websocket.state, "callpipe_telephony", None):
        _, runner_args.call_data = await parse_telephony_websocket(runner_args.websocket)
    call_data = _call_data_of(runner_args)
    runner_args.transport_type = "telnyx"
    factory = transport_params.get("telnyx")
    if factory is None:
        raise ValueError(
            "Missing transport params for 'telnyx': add a 'telnyx' key to the transport_params dict "
            f"(given: {', '.join(map(repr, transport_params)) or 'none'}; callpipe carries Telnyx calls only)"
        )
    params = factory()
    if not isinstance(params, FastAPIWebsocketParams):
        raise TypeError(
            f"transport_params['telnyx']() must return FastAPIWebsocketParams, not {type(params).__name__}"
        )
    params.add_wav_header = False
    if params.serializer is None:
        params.serializer = _telnyx_serializer(
            call_data, inbound_encoding=None, api_key=None, api_base_url=None
        )
    return FastAPIWebsocketTransport(websocket=runner_args.websocket, params=params)
