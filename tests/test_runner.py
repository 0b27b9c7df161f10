"""parse_telephony_websocket over a real WebSocket (uvicorn server, ``websockets`` client).

The server endpoint stores what ``parse_telephony_websocket`` returned or raised under the
``x-test-id`` header of the connection; the test waits for that entry, so there is no
race with the moment the client sees the socket close.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import websockets
from fastapi import FastAPI, WebSocket
from websockets.asyncio.client import ClientConnection

from callpipe.runner import (
    RunnerArguments,
    TelephonyHandshakeError,
    WebSocketRunnerArguments,
    parse_telephony_websocket,
)
from callpipe.server.background import BackgroundServer
from callpipe.telnyx import protocol

POLICY_VIOLATION = 1008

TWILIO_CONNECTED = {"event": "connected", "protocol": "Call", "version": "1.0.0"}
TWILIO_START = {
    "event": "start",
    "sequenceNumber": "1",
    "start": {
        "accountSid": "AC0123456789abcdef0123456789abcdef",
        "streamSid": "MZ0123456789abcdef0123456789abcdef",
        "callSid": "CA0123456789abcdef0123456789abcdef",
        "tracks": ["inbound"],
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
    },
    "streamSid": "MZ0123456789abcdef0123456789abcdef",
}
PLIVO_START = {
    "event": "start",
    "sequenceNumber": 0,
    "start": {
        "callId": "b5e0d7a4-5e1c-4b5e-9c1d-2f3e4a5b6c7d",
        "streamId": "20170ada-f610-433b-8758-c02a2aab3662",
        "accountId": "MAXXXXXXXXXXXXXXXXXX",
        "tracks": ["inbound"],
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000},
    },
    "extra_headers": "{}",
}


class Results:
    """Outcomes of the server endpoint, keyed by test id; written on the server thread."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._items: dict[str, Any] = {}

    def put(self, key: str, value: Any) -> None:
        with self._cond:
            self._items[key] = value
            self._cond.notify_all()

    def wait(self, key: str, timeout: float = 5.0) -> Any:
        with self._cond:
            if not self._cond.wait_for(lambda: key in self._items, timeout):
                raise TimeoutError(f"the endpoint stored no result for {key!r}")
            return self._items.pop(key)


def _app(results: Results) -> FastAPI:
    app = FastAPI()

    @app.websocket("/ws")
    async def ws(websocket: WebSocket) -> None:
        key = websocket.headers.get("x-test-id", "")
        timeout = float(websocket.headers.get("x-handshake-timeout", "5"))
        try:
            result = await parse_telephony_websocket(websocket, timeout=timeout)
        except Exception as exc:
            results.put(key, exc)
            return
        results.put(key, result)
        await websocket.send_text("accepted")
        await websocket.close(code=1000)

    return app


@pytest.fixture(scope="module")
def _server() -> Iterator[tuple[BackgroundServer, Results]]:
    results = Results()
    with BackgroundServer(_app(results)) as srv:
        yield srv, results


_ids = itertools.count(1)


class Peer:
    """A test's view of the server: open a stream, then read the endpoint's outcome."""

    def __init__(self, server: BackgroundServer, results: Results) -> None:
        self.server = server
        self.results = results
        self.key = f"t{next(_ids)}"

    def connect(self, path: str = "/ws", *, timeout: float = 5.0) -> Any:
        return websockets.connect(
            self.server.ws_url + path,
            additional_headers={"x-test-id": self.key, "x-handshake-timeout": str(timeout)},
            open_timeout=5,
            close_timeout=2,
        )

    async def outcome(self) -> Any:
        return await asyncio.to_thread(self.results.wait, self.key)


@pytest.fixture
def peer(_server: tuple[BackgroundServer, Results]) -> Peer:
    return Peer(*_server)


async def _closed(ws: ClientConnection, within: float = 3.0) -> tuple[int | None, str | None]:
    """Wait for the server to close ``ws``; return its close code and reason."""
    async with asyncio.timeout(within):
        with pytest.raises(websockets.ConnectionClosed):
            while True:
                await ws.recv()
    return ws.close_code, ws.close_reason


def _start(**overrides: Any) -> str:
    fields: dict[str, Any] = {
        "stream_id": "32de0dea-53cb-4b21-89a4-9eb16d4f1d00",
        "call_control_id": "v3:call-control-id",
        "call_session_id": "sess-1",
        "encoding": "PCMU",
        "sample_rate": 8000,
        "user_id": "user-9",
        "from_number": "+15551230001",
        "to_number": "+15551230002",
        "tags": ["vip", "en"],
        "client_state": "eyJjYW1wYWlnbiI6MX0=",
        "custom_parameters": {"agent": "sales", "lang": "en"},
    }
    fields.update(overrides)
    return protocol.build_start(**fields)


# ------------------------------------------------------------------- happy paths


async def test_connected_then_start(peer: Peer) -> None:
    async with peer.connect("/ws?campaign_id=c-7&user_id=u%2B1") as ws:
        await ws.send(protocol.build_connected(auth_token="secret-token"))
        await ws.send(_start())
        assert await ws.recv() == "accepted"
    transport, call_data = await peer.outcome()
    assert transport == "telnyx"
    assert call_data == {
        "stream_id": "32de0dea-53cb-4b21-89a4-9eb16d4f1d00",
        "call_control_id": "v3:call-control-id",
        "call_id": "v3:call-control-id",  # Pipecat's name for it
        "call_session_id": "sess-1",
        "outbound_encoding": "PCMU",
        "sample_rate": 8000,
        "channels": 1,
        "from": "+15551230001",
        "to": "+15551230002",
        "custom_parameters": {"agent": "sales", "lang": "en"},
        "client_state": "eyJjYW1wYWlnbiI6MX0=",
        "tags": ["vip", "en"],
        "user_id": "user-9",
        "auth_token": "secret-token",
        "query_params": {"campaign_id": "c-7", "user_id": "u+1"},
    }


async def test_start_without_connected(peer: Peer) -> None:
    async with peer.connect() as ws:
        await ws.send(_start(encoding="PCMA"))
        assert await ws.recv() == "accepted"
    transport, call_data = await peer.outcome()
    assert transport == "telnyx"
    assert call_data["outbound_encoding"] == "PCMA"
    assert call_data["auth_token"] is None
    assert call_data["query_params"] == {}


async def test_connected_without_auth_token(peer: Peer) -> None:
    async with peer.connect() as ws:
        await ws.send(protocol.build_connected())
        await ws.send(_start())
        assert await ws.recv() == "accepted"
    _, call_data = await peer.outcome()
    assert call_data["auth_token"] is None


@pytest.mark.parametrize(
    ("encoding", "rate", "expected"),
    [("G722", 16000, "G722"), ("L16", 16000, "L16"), ("L16", 8000, "L16"), ("pcmu", 8000, "PCMU")],
    ids=["g722", "l16-16k", "l16-8k", "lowercase-pcmu"],
)
async def test_other_encodings(peer: Peer, encoding: str, rate: int, expected: str) -> None:
    async with peer.connect() as ws:
        await ws.send(protocol.build_connected())
        await ws.send(_start(encoding=encoding, sample_rate=rate))
        assert await ws.recv() == "accepted"
    _, call_data = await peer.outcome()
    assert call_data["outbound_encoding"] == expected
    assert call_data["sample_rate"] == rate


async def test_binary_frames_are_read_too(peer: Peer) -> None:
    async with peer.connect() as ws:
        await ws.send(protocol.build_connected().encode())
        await ws.send(_start().encode())
        assert await ws.recv() == "accepted"
    transport, _ = await peer.outcome()
    assert transport == "telnyx"


async def test_stray_media_before_start_is_skipped(peer: Peer) -> None:
    media = protocol.build_inbound_media(
        b"\xff" * 160, stream_id="s", sequence_number=1, chunk=1, timestamp=0
    )
    async with peer.connect() as ws:
        await ws.send(media)
        await ws.send(_start())
        assert await ws.recv() == "accepted"
    transport, _ = await peer.outcome()
    assert transport == "telnyx"


# ------------------------------------------------------------------- refusals


async def _refused(peer: Peer, ws: ClientConnection) -> tuple[TelephonyHandshakeError, str]:
    code, reason = await _closed(ws)
    assert code == POLICY_VIOLATION
    assert reason
    exc = await peer.outcome()
    assert isinstance(exc, TelephonyHandshakeError)
    assert isinstance(exc, ValueError)
    return exc, reason


async def test_twilio_handshake_is_refused(peer: Peer) -> None:
    async with peer.connect() as ws:
        await ws.send(json.dumps(TWILIO_CONNECTED))
        await ws.send(json.dumps(TWILIO_START))
        exc, reason = await _refused(peer, ws)
    assert "unsupported provider" in str(exc)
    assert "Twilio" in str(exc)
    assert "unsupported provider" in reason
    assert "Twilio" in reason


async def test_plivo_start_is_refused(peer: Peer) -> None:
    async with peer.connect() as ws:
        await ws.send(json.dumps(PLIVO_START))
        exc, reason = await _refused(peer, ws)
    assert "unsupported provider" in str(exc)
    assert "Plivo" in str(exc)
    assert "Plivo" in reason


@pytest.mark.parametrize("garbage", ["{not json", "", "[1, 2, 3]", '{"no_event": true}', '"start"'])
async def test_garbage_is_refused(peer: Peer, garbage: str) -> None:
    async with peer.connect() as ws:
        await ws.send(garbage)
        exc, reason = await _refused(peer, ws)
    assert "invalid handshake message" in str(exc)
    assert "invalid handshake message" in reason


async def test_start_missing_call_control_id_is_refused(peer: Peer) -> None:
    bad = {"event": "start", "stream_id": "s", "start": {"media_format": {"encoding": "PCMU"}}}
    async with peer.connect() as ws:
        await ws.send(json.dumps(bad))
        exc, _ = await _refused(peer, ws)
    assert "call_control_id" in str(exc)


@pytest.mark.parametrize("encoding", ["OPUS", "AMR-WB"])
async def test_unsupported_encoding_is_refused_at_once(peer: Peer, encoding: str) -> None:
    async with peer.connect(timeout=5.0) as ws:
        started = time.monotonic()
        await ws.send(protocol.build_connected())
        await ws.send(_start(encoding=encoding, sample_rate=16000))
        exc, reason = await _refused(peer, ws)
        assert time.monotonic() - started < 2.0  # not after the 5 s timeout
    assert f"unsupported encoding {encoding!r}" in str(exc)
    assert encoding in reason


@pytest.mark.parametrize("encoding", ["Ä" * 70, "X" * 300], ids=["non-ascii", "long-ascii"])
async def test_close_reason_fits_the_frame(peer: Peer, encoding: str) -> None:
    # RFC 6455: at most 123 bytes of UTF-8. Over that the close frame is invalid and the
    # client sees 1006 (abnormal closure) instead of 1008 with a reason.
    async with peer.connect() as ws:
        await ws.send(_start(encoding=encoding))
        exc, reason = await _refused(peer, ws)
    assert len(reason.encode()) <= 123
    assert reason.startswith("unsupported encoding")
    assert encoding.upper() in str(exc)


async def test_silence_is_refused_after_the_timeout(peer: Peer) -> None:
    async with peer.connect(timeout=0.5) as ws:
        started = time.monotonic()
        exc, reason = await _refused(peer, ws)
        elapsed = time.monotonic() - started
    assert 0.4 <= elapsed < 1.5, elapsed
    assert "no valid start message" in str(exc)
    assert "no valid start message" in reason


async def test_slow_trickle_is_bounded_by_the_timeout(peer: Peer) -> None:
    # The timeout covers the whole handshake, not each message.
    async with peer.connect(timeout=0.5) as ws:
        started = time.monotonic()
        await ws.send(protocol.build_connected())
        await asyncio.sleep(0.3)
        await ws.send(protocol.build_connected())
        exc, _ = await _refused(peer, ws)
        elapsed = time.monotonic() - started
    assert elapsed < 1.2, elapsed
    assert "no valid start message" in str(exc)


async def test_too_many_messages_without_start_are_refused(peer: Peer) -> None:
    async with peer.connect(timeout=5.0) as ws:
        started = time.monotonic()
        for i in range(3):
            await ws.send(
                protocol.build_inbound_media(
                    b"\xff" * 160, stream_id="s", sequence_number=i + 1, chunk=i + 1, timestamp=20 * i
                )
            )
        exc, reason = await _refused(peer, ws)
        assert time.monotonic() - started < 2.0  # the message bound, not the 5 s timeout
    assert "no valid start message" in str(exc)
    assert "3 messages" in reason


async def test_start_after_max_messages_is_too_late(peer: Peer) -> None:
    async with peer.connect() as ws:
        for _ in range(3):
            await ws.send(protocol.build_connected())
        await ws.send(_start())
        exc, _ = await _refused(peer, ws)
    assert "no valid start message" in str(exc)


async def test_client_disconnect_before_start(peer: Peer) -> None:
    async with peer.connect() as ws:
        await ws.send(protocol.build_connected())
    exc = await peer.outcome()
    assert isinstance(exc, TelephonyHandshakeError)
    assert "closed before its start message" in str(exc)


# ------------------------------------------------------------ runner arguments


def test_runner_arguments_defaults() -> None:
    websocket: Any = object()
    args = RunnerArguments(websocket=websocket)
    assert args.websocket is websocket
    assert args.body == {}
    assert args.call_data == {}
    assert args.direction == "inbound"
    other = RunnerArguments(websocket=websocket)
    assert other.body is not args.body  # no shared mutable default
    assert other.call_data is not args.call_data


def test_websocket_runner_arguments_is_the_same_class() -> None:
    assert WebSocketRunnerArguments is RunnerArguments
    args = WebSocketRunnerArguments(websocket=None, body={"to": "+1555"}, direction="outbound")  # type: ignore[arg-type]
    assert isinstance(args, RunnerArguments)
    assert (args.body, args.direction) == ({"to": "+1555"}, "outbound")


def test_runner_arguments_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        RunnerArguments(object())  # type: ignore[misc]
