"""Bad input gets a clear error and loses nothing - over real sockets.

The bot runs under a real uvicorn server (:class:`BackgroundServer` +
:func:`create_canned_bot_app`). The misbehaving side is a raw ``websockets`` client that
speaks the Telnyx protocol through the builders and then sends whatever the test wants;
well-behaved concurrent calls are :class:`SimulatedCaller`.

The rule: a single malformed message is dropped, counted, logged once per call per kind,
and the call carries on; sustained garbage closes only that call (1007); an oversized
message closes it (1009); a silent socket is closed (1001); an unsupported encoding is
refused at once (1008); media after ``stop`` is ignored; other calls on the same server
are unaffected.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from callpipe.audio import StreamResampler, get_codec
from callpipe.server.background import BackgroundServer
from callpipe.sim.bots import CannedBotCall, CannedBotConfig, create_canned_bot_app
from callpipe.sim.caller import CallerTurn, SimulatedCaller
from callpipe.telnyx import protocol
from tests.conftest import tone

GOING_AWAY = 1001
INVALID_DATA = 1007
POLICY_VIOLATION = 1008
TOO_BIG = 1009
MAX_TEXT = 64 * 1024
MAX_BAD_PER_SEC = 20  # FastAPIWebsocketParams.max_bad_messages_per_sec (the canned bot's default)

# One message of each kind of malformed input. Every one must be dropped on its own.
MALFORMED: dict[str, str | bytes] = {
    "not JSON": "this is not json",
    "truncated JSON": '{"event":"media","media":{"payload":"',
    "not an object": "[1, 2, 3]",
    "no event": '{"stream_id":"abc"}',
    "event not a string": '{"event": 42}',
    "bad base64": '{"event":"media","media":{"payload":"@@@ not base64 @@@"}}',
    "payload not a string": '{"event":"media","media":{"payload":12345}}',
    "media missing": '{"event":"media","stream_id":"abc"}',
    "chunk not a number": '{"event":"media","media":{"payload":"AAAA","chunk":"abc"}}',
    "dtmf digit not a string": '{"event":"dtmf","dtmf":{"digit":5}}',
    "binary garbage": b'{"event": \xff\xfe}',
    "unknown event": '{"event":"some_future_event","data":{"x":1}}',
}


# ----------------------------------------------------------------------------- helpers


async def _wait_for(condition: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    # Polling, also for ``CannedBotCall.finished``: that asyncio.Event is set on the server's
    # loop (another thread), so awaiting it here would not wake up until a timeout fired.
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not met within {timeout}s")
        await asyncio.sleep(0.01)


def _to_rate(pcm: bytes, in_rate: int, out_rate: int) -> bytes:
    if in_rate == out_rate:
        return pcm
    resampler = StreamResampler(in_rate, out_rate)
    return resampler.process(pcm) + resampler.flush()


class RawCall:
    """The Telnyx side of a call, by hand: nothing is paced, checked or echoed."""

    def __init__(self, url: str, *, encoding: str = "PCMU", sample_rate: int = 8000) -> None:
        self.url = url
        self.codec = get_codec(encoding, sample_rate)
        self.encoding = encoding
        self.sample_rate = sample_rate
        self.frame_bytes = self.codec.payload_bytes(20)
        self.stream_id = str(uuid.uuid4())
        self.call_control_id = f"v3:raw-{self.stream_id[:12]}"
        self.sent = 0  # messages after the handshake
        self.media_received: list[float] = []
        self.closed = asyncio.Event()
        self._seq = 0
        self._chunk = 0
        self._ws: ClientConnection | None = None
        self._receiver: asyncio.Task[None] | None = None

    @property
    def ws(self) -> ClientConnection:
        assert self._ws is not None
        return self._ws

    async def __aenter__(self) -> RawCall:
        self._ws = await websockets.connect(self.url, open_timeout=5, close_timeout=2, max_size=2**22)
        self._receiver = asyncio.create_task(self._receive())
        return self

    async def __aexit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(), 3)
        assert self._receiver is not None
        self._receiver.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._receiver

    async def _receive(self) -> None:
        try:
            async for message in self.ws:
                event = protocol.parse_event(message)
                if isinstance(event, protocol.MediaEvent):
                    self.media_received.append(time.monotonic())
        except websockets.ConnectionClosed:
            pass
        finally:
            self.closed.set()

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    async def handshake(self, *, encoding: str | None = None) -> None:
        await asyncio.wait_for(self.ws.send(protocol.build_connected()), 2)
        start = protocol.build_start(
            stream_id=self.stream_id,
            call_control_id=self.call_control_id,
            encoding=encoding or self.encoding,
            sample_rate=self.sample_rate,
            sequence_number=self._next_seq(),
        )
        await asyncio.wait_for(self.ws.send(start), 2)

    async def send(self, *messages: str | bytes) -> None:
        for message in messages:
            await asyncio.wait_for(self.ws.send(message), 2)
            self.sent += 1

    def media(self, payload: bytes) -> str:
        self._chunk += 1
        return protocol.build_inbound_media(
            payload,
            stream_id=self.stream_id,
            sequence_number=self._next_seq(),
            chunk=self._chunk,
            timestamp=self._chunk * 20,
        )

    def stop(self) -> str:
        return protocol.build_stop(
            stream_id=self.stream_id, call_control_id=self.call_control_id, sequence_number=self._next_seq()
        )

    def frames(self, pcm: bytes) -> list[bytes]:
        """``pcm`` (at the call's rate) as 20 ms payloads in the call's encoding."""
        frame_pcm = 2 * self.sample_rate // 50
        pcm += bytes((-len(pcm)) % frame_pcm)
        encoded = self.codec.encode(pcm)
        size = self.frame_bytes
        return [encoded[i : i + size] for i in range(0, len(encoded), size)]

    async def say(self, pcm_8k: bytes, *, silence_secs: float = 0.6) -> None:
        """Speak 8 kHz PCM, then ``silence_secs`` of silence (sent as fast as the socket takes it)."""
        pcm = _to_rate(pcm_8k, 8000, self.sample_rate)
        pcm += bytes(2 * int(silence_secs * self.sample_rate))
        await self.send(*(self.media(frame) for frame in self.frames(pcm)))

    async def wait_for_reply(self, after: int = 0, timeout: float = 5.0) -> None:
        """Wait until more than ``after`` bot media messages have arrived; fail if closed first."""
        deadline = time.monotonic() + timeout
        while len(self.media_received) <= after:
            if self.closed.is_set():
                raise AssertionError(
                    f"the bot closed the call ({self.ws.close_code} {self.ws.close_reason!r}) instead of answering"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"no reply from the bot within {timeout}s")
            await asyncio.sleep(0.01)

    async def wait_closed(self, timeout: float = 3.0) -> tuple[int | None, str]:
        try:
            await asyncio.wait_for(self.closed.wait(), timeout)
        except TimeoutError:
            raise AssertionError(f"the bot did not close the call within {timeout}s") from None
        return self.ws.close_code, self.ws.close_reason or ""


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)  # list.append is atomic: safe from the server thread


@pytest.fixture()
def callpipe_log() -> Iterator[list[logging.LogRecord]]:
    """Every record of the ``callpipe`` loggers at WARNING or above, from any thread."""
    handler = _Records()
    logger = logging.getLogger("callpipe")
    old_level = logger.level
    if logger.getEffectiveLevel() > logging.WARNING:
        logger.setLevel(logging.WARNING)
    logger.addHandler(handler)
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def _dropped(records: list[logging.LogRecord]) -> list[str]:
    return [
        r.getMessage()
        for r in records
        if r.name == "callpipe.transports" and r.getMessage().startswith("dropped a malformed message")
    ]


def _closing(records: list[logging.LogRecord]) -> list[str]:
    return [
        r.getMessage()
        for r in records
        if r.name == "callpipe.transports" and r.getMessage().startswith("closing the call's stream")
    ]


def _config(**overrides: Any) -> CannedBotConfig:
    settings: dict[str, Any] = {"reply": tone(0.4, freq=500), "greeting": None}
    settings.update(overrides)
    return CannedBotConfig(**settings)


async def _the_call(calls: list[CannedBotCall], stream_id: str, timeout: float = 3.0) -> CannedBotCall:
    found: list[CannedBotCall] = []

    def check() -> bool:
        found[:] = [c for c in calls if c.call_data["stream_id"] == stream_id]
        return bool(found)

    await _wait_for(check, timeout, f"the bot's call for stream {stream_id}")
    return found[0]


@contextlib.asynccontextmanager
async def _started_call(
    config: CannedBotConfig, **raw_options: Any
) -> AsyncIterator[tuple[RawCall, CannedBotCall]]:
    """A canned bot on a real server and a raw call that has done its handshake (15 s bound)."""
    app, calls = create_canned_bot_app(config)
    async with asyncio.timeout(15):
        with BackgroundServer(app) as server:
            async with RawCall(server.ws_url + "/ws", **raw_options) as raw:
                await raw.handshake()
                yield raw, await _the_call(calls, raw.stream_id)


# ------------------------------------------------------------------ single bad messages


async def test_each_kind_of_malformed_message_is_dropped_counted_logged_once_and_the_call_goes_on(
    speech_8k: bytes, callpipe_log: list[logging.LogRecord]
) -> None:
    async with _started_call(_config()) as (raw, call):
        # Every kind twice, in two rounds more than a second apart (each round is
        # under the per-second limit, so this is glitches, not sustained garbage).
        await raw.send(*MALFORMED.values())
        await asyncio.sleep(1.1)
        await raw.send(*MALFORMED.values())
        await raw.say(speech_8k)
        await raw.wait_for_reply()
        await _wait_for(lambda: call.responder.turns == 1, 2, "one answered turn")
        inp = call.transport.input()
        # Nothing was skipped or lost (the speech's trailing silence may still be on its way
        # in when the reply comes: the bot answers at the VAD's end of speech).
        await _wait_for(lambda: inp.messages_received == raw.sent, 3, f"all {raw.sent} messages received")
        assert inp.messages_received == raw.sent
        assert inp._guard.total == 2 * len(MALFORMED)
        assert not raw.closed.is_set() and not call.finished.is_set()
        await raw.send(raw.stop())
        await _wait_for(call.finished.is_set, 3, "the bot's call to end")

    dropped = _dropped(callpipe_log)
    # Each kind logged once although each was sent twice (kinds that read alike may share a line).
    assert 8 <= len(dropped) <= len(MALFORMED), "\n".join(dropped)
    assert all(n == 1 for n in collections.Counter(dropped).values()), dropped
    assert all("the call carries on" in line for line in dropped)
    # The log says what was wrong.
    text = "\n".join(dropped)
    for hint in (
        "not valid JSON",
        "truncated",
        "Expected `object`, got `array`",
        "missing required field `event`",
        "invalid base64 audio payload",
        "Expected `str` (base64 audio), got `int`",
        "missing required field `media`",
        "unknown event 'some_future_event'",
    ):
        assert hint in text, (hint, dropped)
    assert _closing(callpipe_log) == []


async def test_odd_length_l16_audio_is_dropped_and_the_call_goes_on(
    speech_8k: bytes, callpipe_log: list[logging.LogRecord]
) -> None:
    async with _started_call(_config(), encoding="L16", sample_rate=16000) as (raw, call):
        odd = raw.media(bytes(641))  # 320.5 samples
        await raw.send(raw.media(bytes(640)), odd, odd, raw.media(bytes(640)))
        await raw.say(speech_8k)
        await raw.wait_for_reply()
        await _wait_for(lambda: call.responder.turns == 1, 2, "one answered turn")
        # The reply can come before the caller's last frames are read: wait for them too.
        inp = call.transport.input()
        await _wait_for(lambda: inp.messages_received == raw.sent, 3, f"all {raw.sent} messages received")
        assert inp._guard.total == 2
        assert not call.finished.is_set()

    dropped = _dropped(callpipe_log)
    assert len(dropped) == 1, dropped
    assert "undecodable audio" in dropped[0] and "641 bytes" in dropped[0]


async def test_a_burst_of_unknown_events_never_closes_the_call(
    speech_8k: bytes, callpipe_log: list[logging.LogRecord]
) -> None:
    """Unknown events are protocol additions, not garbage: counted and logged once, never fatal."""
    async with _started_call(_config()) as (raw, call):
        unknown = '{"event":"media_stats","stream_id":"' + raw.stream_id + '","stats":{"jitter":3}}'
        await raw.send(*[unknown] * (3 * MAX_BAD_PER_SEC))
        await raw.say(speech_8k)
        await raw.wait_for_reply()
        assert call.transport.input()._guard.total == 3 * MAX_BAD_PER_SEC
        assert not call.finished.is_set()
    assert len(_dropped(callpipe_log)) == 1


async def test_unknown_events_do_not_use_up_the_malformed_message_budget(speech_8k: bytes) -> None:
    async with _started_call(_config()) as (raw, call):
        unknown = '{"event":"media_stats","stats":{"jitter":3}}'
        await raw.send(*[unknown] * (MAX_BAD_PER_SEC + 5))
        await raw.send("one glitch, not json")
        with contextlib.suppress(websockets.ConnectionClosed):
            await raw.say(speech_8k)
        await raw.wait_for_reply()  # fails: closed with 1007 instead
        assert call.responder.turns == 1


async def test_varying_details_of_one_kind_are_still_logged_once(
    speech_8k: bytes, callpipe_log: list[logging.LogRecord]
) -> None:
    async with _started_call(_config(), encoding="L16", sample_rate=16000) as (raw, call):
        # Three malformed-JSON messages, three odd-length L16 payloads.
        await raw.send("x", "xx not json", "xxxx not json either")
        await raw.send(*(raw.media(bytes(n)) for n in (1, 321, 641)))
        await raw.say(speech_8k)
        await raw.wait_for_reply()
        assert call.transport.input()._guard.total == 6
    dropped = _dropped(callpipe_log)
    assert sum("not valid JSON" in line for line in dropped) == 1, dropped
    assert sum("undecodable audio" in line for line in dropped) == 1, dropped


# ------------------------------------------------------------------ calls that get closed


async def test_sustained_garbage_closes_the_call_with_1007_and_a_reason(
    callpipe_log: list[logging.LogRecord],
) -> None:
    async with _started_call(_config()) as (raw, call):
        with contextlib.suppress(websockets.ConnectionClosed):
            await raw.send(*["garbage"] * (2 * MAX_BAD_PER_SEC))
        code, reason = await raw.wait_closed()
        await _wait_for(call.finished.is_set, 3, "the bot's call to end")
    assert code == INVALID_DATA
    assert f"more than {MAX_BAD_PER_SEC} malformed messages per second" in reason
    assert "not valid JSON" in reason  # says what the garbage was
    assert len(reason.encode()) <= 123
    # Closed on the first message over the limit; the rest were never read.
    assert call.transport.input()._guard.total == MAX_BAD_PER_SEC + 1
    assert call.transport.input().messages_received == MAX_BAD_PER_SEC + 1
    assert len(_dropped(callpipe_log)) == 1
    closing = _closing(callpipe_log)
    assert len(closing) == 1 and "(1007)" in closing[0]


async def test_garbage_over_the_rate_across_a_window_boundary_still_closes() -> None:
    async with _started_call(_config()) as (raw, call):
        t0 = time.monotonic()
        await raw.send("garbage")  # opens the guard's window
        await asyncio.sleep(0.6)
        t1 = time.monotonic()
        with contextlib.suppress(websockets.ConnectionClosed):
            await raw.send(*["garbage"] * (MAX_BAD_PER_SEC - 1))
            await asyncio.sleep(t0 + 1.4 - time.monotonic())
            await raw.send(*["garbage"] * MAX_BAD_PER_SEC)
        # 2 * MAX_BAD_PER_SEC - 1 bad messages within well under a second.
        assert time.monotonic() - t1 < 1.0
        code, _ = await raw.wait_closed(timeout=1.0)
        assert code == INVALID_DATA
        await _wait_for(call.finished.is_set, 3, "the bot's call to end")


@pytest.mark.parametrize("kind", ["text", "binary"])
async def test_a_message_over_64_kib_closes_the_call_with_1009(
    kind: str, callpipe_log: list[logging.LogRecord]
) -> None:
    async with _started_call(_config()) as (raw, call):
        # Exactly at the limit: a valid dtmf message padded to 64 KiB is accepted.
        head = '{"event":"dtmf","dtmf":{"digit":"1"},"pad":"'
        at_limit = head + "x" * (MAX_TEXT - len(head) - 2) + '"}'
        assert len(at_limit) == MAX_TEXT
        await raw.send(at_limit)
        await _wait_for(lambda: call.responder.dtmf == ["1"], 2, "the padded dtmf")
        over = head + "x" * (MAX_TEXT - len(head) - 1) + '"}'
        assert len(over) == MAX_TEXT + 1
        await raw.send(over if kind == "text" else over.encode())
        code, reason = await raw.wait_closed()
        await _wait_for(call.finished.is_set, 3, "the bot's call to end")
    assert code == TOO_BIG
    assert reason.startswith("oversized message") and str(MAX_TEXT + 1) in reason
    assert call.transport.input()._guard.total == 0  # not counted as a glitch
    assert _dropped(callpipe_log) == []
    assert len(_closing(callpipe_log)) == 1


async def test_the_64_kib_cap_counts_bytes_not_characters() -> None:
    app, calls = create_canned_bot_app(_config())
    async with asyncio.timeout(15):
        with BackgroundServer(app) as server:
            async with RawCall(server.ws_url + "/ws") as raw:
                await raw.handshake()
                await _the_call(calls, raw.stream_id)
                message = '{"event":"dtmf","dtmf":{"digit":"1"},"pad":"' + "€" * 40_000 + '"}'
                assert len(message.encode()) > 115 * 1024 and len(message) < MAX_TEXT
                await raw.send(message)
                code, _ = await raw.wait_closed(timeout=1.5)
                assert code == TOO_BIG


async def test_a_media_payload_over_one_second_closes_the_call_with_1009(speech_8k: bytes) -> None:
    async with _started_call(_config()) as (raw, call):
        one_second = raw.codec.encode(bytes(2 * 8000))
        assert len(one_second) == 8000
        await raw.send(raw.media(one_second))  # exactly 1 s: accepted
        # That second of audio is ahead of real time; let real time catch up with it, or
        # the speech that follows would run past the flood guard's 3 s allowance.
        await asyncio.sleep(1.0)
        await raw.say(speech_8k)
        await raw.wait_for_reply()
        assert call.transport.input()._guard.total == 0
        await raw.send(raw.media(one_second + b"\xff"))
        code, reason = await raw.wait_closed()
        await _wait_for(call.finished.is_set, 3, "the bot's call to end")
    assert code == TOO_BIG
    assert reason == "media payload of 8001 bytes is over 1 s"


async def test_a_silent_socket_is_closed_with_1001() -> None:
    async with _started_call(_config(receive_timeout_secs=0.5)) as (raw, call):
        # Traffic keeps it open well past the timeout...
        silence = raw.media(bytes(160))
        for _ in range(10):
            await raw.send(silence)
            await asyncio.sleep(0.1)
        assert not raw.closed.is_set()
        # ...then the socket goes quiet.
        quiet_since = time.monotonic()
        code, reason = await raw.wait_closed(timeout=3)
        waited = time.monotonic() - quiet_since
        await _wait_for(call.finished.is_set, 3, "the bot's call to end")
    assert code == GOING_AWAY
    assert reason.startswith("no message from the caller's stream for")
    # receive_timeout_secs plus at most one watchdog period (timeout / 2), with a margin.
    assert 0.45 <= waited < 1.5, waited


async def test_an_unsupported_encoding_is_refused_at_once_with_1008() -> None:
    app, calls = create_canned_bot_app(_config())
    async with asyncio.timeout(15):
        with BackgroundServer(app) as server:
            async with RawCall(server.ws_url + "/ws") as raw:
                started = time.monotonic()
                await raw.handshake(encoding="OPUS")
                code, reason = await raw.wait_closed(timeout=2)
                refused_in = time.monotonic() - started
    assert code == POLICY_VIOLATION
    assert "unsupported encoding 'OPUS'" in reason
    assert refused_in < 0.5
    assert calls == []  # no pipeline was built


async def test_media_after_stop_is_ignored(speech_8k: bytes) -> None:
    async with _started_call(_config()) as (raw, call):
        silence = raw.media(bytes(160))
        await raw.send(*[silence] * 5, raw.stop())
        pcm = speech_8k + bytes(2 * 4800)
        with contextlib.suppress(websockets.ConnectionClosed):
            await raw.send(*(raw.media(frame) for frame in raw.frames(pcm)))
        code, _ = await raw.wait_closed()
        await _wait_for(call.finished.is_set, 3, "the bot's call to end")
    assert code == 1000
    assert call.transport.input().messages_received == 6  # 5 media + stop, nothing after
    assert call.responder.turns == 0
    assert raw.media_received == []
    assert call.transport.input()._guard.total == 0


# --------------------------------------------------------------- other calls unaffected


async def test_misbehaving_calls_do_not_disturb_a_concurrent_call(speech_8k: bytes) -> None:
    """While one well-behaved call talks, other calls on the same server are flooded,
    oversized, silent, refused and glitchy; the good call hears everything on time, no gaps."""
    config = CannedBotConfig(
        reply=tone(1.0, freq=500), greeting=tone(0.8, freq=300), receive_timeout_secs=1.0
    )
    app, calls = create_canned_bot_app(config)
    url_holder: list[str] = []
    outcomes: dict[str, tuple[int | None, str]] = {}

    async def flood(delay: float) -> None:
        await asyncio.sleep(delay)
        async with RawCall(url_holder[0]) as raw:
            await raw.handshake()
            with contextlib.suppress(websockets.ConnectionClosed):
                await raw.send(*["garbage"] * (3 * MAX_BAD_PER_SEC))
            outcomes["flood"] = await raw.wait_closed()

    async def oversized_text(delay: float) -> None:
        await asyncio.sleep(delay)
        async with RawCall(url_holder[0]) as raw:
            await raw.handshake()
            await raw.send("x" * (MAX_TEXT + 10))
            outcomes["oversized text"] = await raw.wait_closed()

    async def oversized_media(delay: float) -> None:
        await asyncio.sleep(delay)
        async with RawCall(url_holder[0]) as raw:
            await raw.handshake()
            await raw.send(raw.media(bytes(16000)))
            outcomes["oversized media"] = await raw.wait_closed()

    async def silent(delay: float) -> None:
        await asyncio.sleep(delay)
        async with RawCall(url_holder[0]) as raw:
            await raw.handshake()
            outcomes["silent"] = await raw.wait_closed(timeout=4)

    async def refused(delay: float) -> None:
        await asyncio.sleep(delay)
        async with RawCall(url_holder[0]) as raw:
            await raw.handshake(encoding="SPEEX")
            outcomes["refused"] = await raw.wait_closed()

    async def glitchy(delay: float) -> None:
        await asyncio.sleep(delay)
        async with RawCall(url_holder[0]) as raw:
            await raw.handshake()
            await raw.send(*MALFORMED.values())
            await raw.say(speech_8k)
            call = await _the_call(calls, raw.stream_id)
            await _wait_for(lambda: call.responder.turns == 1, 5, "the glitchy call's turn")
            await raw.wait_for_reply(after=len(raw.media_received), timeout=3)
            await raw.send(raw.stop())
            outcomes["glitchy"] = await raw.wait_closed()

    async with asyncio.timeout(30):
        with BackgroundServer(app) as server:
            url_holder.append(server.ws_url + "/ws")
            caller = SimulatedCaller(url_holder[0], max_call_secs=20)
            good = asyncio.create_task(
                caller.run(
                    [CallerTurn(audio=speech_8k, text="one"), CallerTurn(audio=speech_8k, text="two")],
                    hang_up_after_secs=0.3,
                )
            )
            # During the greeting, the first turn, the first answer and the second turn.
            bad = [
                flood(0.2),
                oversized_text(0.5),
                silent(0.7),
                refused(1.0),
                glitchy(1.3),
                oversized_media(2.5),
                flood(3.5),
                oversized_text(4.5),
            ]
            results = await asyncio.gather(*bad, return_exceptions=True)
            result = await good
            for entry in list(calls):
                await _wait_for(entry.finished.is_set, 3, "every bot call to end")

    assert [r for r in results if r is not None] == []
    assert outcomes["flood"][0] == INVALID_DATA
    assert outcomes["oversized text"][0] == TOO_BIG
    assert outcomes["oversized media"][0] == TOO_BIG
    assert outcomes["silent"][0] == GOING_AWAY
    assert outcomes["refused"][0] == POLICY_VIOLATION
    assert outcomes["glitchy"][0] == 1000
    # The good call: greeting on time, both turns answered promptly, no gaps, all heard.
    good_call = next(c for c in calls if c.call_data["stream_id"] == caller.stream_id)
    assert result.errors == []
    assert result.greeting_latency is not None and result.greeting_latency < 0.3
    assert good_call.responder.turns == 2
    assert len(result.turns) == 2
    for turn in result.turns:
        assert turn.response_latency is not None and turn.response_latency < 0.5, turn
    assert result.gaps == []
    assert result.clears == []
    assert result.bot_audio_secs == pytest.approx(0.8 + 2 * 1.0, abs=0.1)
    assert good_call.transport.input()._guard.total == 0
    assert result.closed_by == "caller"
    # Seven raw calls got a pipeline (the refused one did not), plus the good call.
    assert len(calls) == 8


async def test_both_tracks_the_bot_hears_only_the_caller(speech_8k: bytes) -> None:
    # stream_track=both_tracks: Telnyx also streams what the call plays ("outbound").
    async with _started_call(_config()) as (raw, call):
        pcm = speech_8k + bytes(2 * 4800)
        outbound = []
        for frame in raw.frames(pcm):
            raw._chunk += 1
            outbound.append(
                protocol.build_inbound_media(
                    frame,
                    stream_id=raw.stream_id,
                    sequence_number=raw._next_seq(),
                    chunk=raw._chunk,
                    timestamp=raw._chunk * 20,
                    track="outbound",
                )
            )
        await raw.send(*outbound)
        await asyncio.sleep(0.5)
        assert call.responder.turns == 0 and raw.media_received == []
        await raw.say(speech_8k)  # the caller's own track
        await raw.wait_for_reply()
        await _wait_for(lambda: call.responder.turns == 1, 2, "one answered turn")
        inp = call.transport.input()
        await _wait_for(lambda: inp.messages_received == raw.sent, 3, f"all {raw.sent} messages received")
        assert inp._guard.total == 0


async def test_reorder_window_takes_shuffled_duplicated_and_lost_frames(speech_8k: bytes) -> None:
    async with _started_call(_config(media_reorder_frames=3)) as (raw, call):
        texts = [raw.media(frame) for frame in raw.frames(speech_8k + bytes(2 * 4800))]
        # Neighbours swapped every 7th frame, every 5th sent twice, one frame lost.
        for i in range(1, len(texts) - 1, 7):
            texts[i], texts[i + 1] = texts[i + 1], texts[i]
        sent = [t for i, t in enumerate(texts) if i != 40 for t in ([t, t] if i % 5 == 0 else [t])]
        await raw.send(*sent)
        await raw.wait_for_reply()
        await _wait_for(lambda: call.responder.turns == 1, 2, "one answered turn")
        reorder = call.transport.input().reorder
        assert reorder is not None
        counters = reorder.counters
        assert counters.reordered >= len(range(1, len(texts) - 1, 7))
        assert counters.duplicates == len(range(0, len(texts), 5)) - (40 % 5 == 0)
        assert counters.gaps == 1 and counters.missing == 1 and counters.late == 0
        assert call.transport.input()._guard.total == 0
