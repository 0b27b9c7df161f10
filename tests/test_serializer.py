"""TelnyxFrameSerializer: every codec and rate in both directions, errors, and hang-up.

Direction names follow Telnyx: ``outbound_encoding`` is what Telnyx sends *us* (decoded
by :meth:`deserialize`), ``inbound_encoding`` is what we send back (:meth:`serialize`).
The hang-up tests run against the fake Telnyx REST API on a real local uvicorn.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pytest

from callpipe.audio import Codec, G722Encoder, alaw_encode, get_codec, ulaw_encode
from callpipe.pipeline.frames import (
    CancelFrame,
    EndFrame,
    InputAudioRawFrame,
    InputDTMFFrame,
    InterruptionFrame,
    OutputAudioRawFrame,
    StartFrame,
    TextFrame,
    TransportMessageFrame,
)
from callpipe.server.background import BackgroundServer
from callpipe.sim.fake_api import FakeTelnyxState, create_fake_telnyx_app
from callpipe.telnyx import protocol
from callpipe.telnyx.api import TelnyxClient
from callpipe.transports.serializers import MAX_MESSAGE_CHARS, TelnyxFrameSerializer

SID = "stream-1"
KEY = "k"
TONE = 1000.0  # Hz: well inside the telephony band of every codec
AMP = 8000.0
FRAMES = 50  # 1 s of 20 ms frames
# The streaming resampler holds back a constant amount of audio (VR mode: 10-30 ms
# depending on the ratio); anything up to this is accepted, more would be lost audio.
MAX_LATENCY_MS = 40


@dataclass(frozen=True)
class Wire:
    """One Telnyx encoding at one wire rate (plus L16 byte order)."""

    encoding: str
    rate: int
    byteorder: str = "big"

    @property
    def id(self) -> str:
        suffix = "-le" if self.byteorder == "little" else ""
        return f"{self.encoding}-{self.rate}{suffix}"


WIRES = [
    Wire("PCMU", 8000),
    Wire("PCMA", 8000),
    Wire("L16", 8000),
    Wire("L16", 16000),
    Wire("L16", 8000, "little"),
    Wire("L16", 16000, "little"),
    Wire("G722", 16000),
]


def _serializer(wire: Wire, **params: object) -> TelnyxFrameSerializer:
    return TelnyxFrameSerializer(
        stream_id=SID,
        outbound_encoding=wire.encoding,
        inbound_encoding=wire.encoding,
        params=TelnyxFrameSerializer.InputParams(
            telnyx_sample_rate=wire.rate if wire.encoding == "L16" else None,
            l16_byteorder=wire.byteorder,  # type: ignore[arg-type]
            auto_hang_up=False,
            **params,  # type: ignore[arg-type]
        ),
    )


def _codec(wire: Wire) -> Codec:
    rate = wire.rate if wire.encoding == "L16" else None
    return get_codec(wire.encoding, rate, l16_byteorder=wire.byteorder)  # type: ignore[arg-type]


def _sine(rate: int, n: int, freq: float = TONE, amp: float = AMP) -> npt.NDArray[np.int16]:
    t = np.arange(n) / rate
    return np.round(amp * np.sin(2 * np.pi * freq * t)).astype("<i2")


def _pcm(data: bytes) -> npt.NDArray[np.float64]:
    return np.frombuffer(data, dtype="<i2").astype(np.float64)


def _tone_fit(y: npt.NDArray[np.float64], rate: int, skip: int) -> tuple[float, float]:
    """Least-squares fit of a TONE sinusoid (any phase) to ``y[skip:]``: (amplitude, SNR dB).

    Phase-free, so it is indifferent to codec/resampler delay, but a wrong frequency,
    gain, byte order or a glitch between frames all show up as a low SNR.
    """
    seg = y[skip:]
    t = (np.arange(seg.size) + skip) / rate
    basis = np.stack([np.sin(2 * np.pi * TONE * t), np.cos(2 * np.pi * TONE * t)], axis=1)
    coef, *_ = np.linalg.lstsq(basis, seg, rcond=None)
    fitted = basis @ coef
    snr = 10 * np.log10(np.sum(fitted**2) / np.sum((seg - fitted) ** 2))
    return float(np.hypot(*coef)), float(snr)


def _peak_hz(y: npt.NDArray[np.float64], rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(y * np.hanning(y.size)))
    return float(np.argmax(spectrum) * rate / y.size)


def _media(payload: bytes, i: int) -> str:
    return protocol.build_inbound_media(
        payload, stream_id=SID, sequence_number=i + 2, chunk=i + 1, timestamp=20 * i
    )


def _payload(message: str | bytes | None) -> bytes:
    assert isinstance(message, str)
    data = json.loads(message)
    assert data["event"] == "media"
    assert set(data) == {"event", "media"}
    assert set(data["media"]) == {"payload"}
    return base64.b64decode(data["media"]["payload"], validate=True)


# ------------------------------------------------------------ Telnyx -> us (decode)


@pytest.mark.parametrize("pipeline_rate", [8000, 16000])
@pytest.mark.parametrize("wire", WIRES, ids=lambda w: w.id)
async def test_decode_path(wire: Wire, pipeline_rate: int) -> None:
    ser = _serializer(wire)
    await ser.setup(StartFrame(audio_in_sample_rate=pipeline_rate, audio_out_sample_rate=24000))
    assert ser.pipeline_in_rate == pipeline_rate
    codec = _codec(wire)
    assert ser.wire_in_rate == codec.sample_rate == wire.rate
    n = wire.rate // 50
    x = _sine(wire.rate, 2 * FRAMES * n)
    out: list[bytes] = []
    deficits: list[int] = []
    for i in range(2 * FRAMES):
        frame = await ser.deserialize(_media(codec.encode(x[i * n : (i + 1) * n].tobytes()), i))
        assert isinstance(frame, InputAudioRawFrame)
        assert frame.sample_rate == pipeline_rate
        assert frame.num_channels == 1
        assert len(frame.audio) % 2 == 0
        out.append(frame.audio)
        if i + 1 in (FRAMES, 2 * FRAMES):
            produced = sum(len(a) for a in out) // 2
            deficits.append((i + 1) * pipeline_rate // 50 - produced)

    if pipeline_rate == wire.rate:
        # No resampling: every 20 ms in is exactly 20 ms out, at once.
        assert all(len(a) == 2 * pipeline_rate // 50 for a in out)
        assert deficits == [0, 0]
    else:
        # Resampling: a constant latency, then 20 ms out per 20 ms in (no drift, no loss).
        assert 0 < deficits[0] <= MAX_LATENCY_MS * pipeline_rate // 1000
        assert deficits[1] == deficits[0]
        assert all(len(a) == 2 * pipeline_rate // 50 for a in out[10:])

    y = _pcm(b"".join(out))
    assert abs(_peak_hz(y, pipeline_rate) - TONE) <= 2.0
    amp, snr = _tone_fit(y, pipeline_rate, skip=pipeline_rate // 10)
    assert amp == pytest.approx(AMP, rel=0.03)
    assert snr > 35.0, snr  # G.711 ~45-55 dB, G.722 ~47 dB, L16 > 80 dB


@pytest.mark.parametrize("wire", WIRES, ids=lambda w: w.id)
async def test_decode_is_exact_without_resampling(wire: Wire) -> None:
    ser = _serializer(wire)
    await ser.setup(StartFrame(audio_in_sample_rate=wire.rate, audio_out_sample_rate=wire.rate))
    n = wire.rate // 50
    x = _sine(wire.rate, n)
    if wire.encoding == "L16":
        # Built by hand (not with our codec) so a byte-order bug cannot cancel itself out.
        payload = x.astype(">i2" if wire.byteorder == "big" else "<i2").tobytes()
        frame = await ser.deserialize(_media(payload, 0))
        assert isinstance(frame, InputAudioRawFrame)
        assert frame.audio == x.tobytes()
    else:
        payload = _codec(wire).encode(x.tobytes())
        frame = await ser.deserialize(_media(payload, 0))
        assert isinstance(frame, InputAudioRawFrame)
        assert frame.audio == _codec(wire).decode(payload)


async def test_decode_l16_byte_order_matters() -> None:
    samples = np.array([1, 256, -2, 1000], dtype=np.int16)
    big = _serializer(Wire("L16", 16000))
    little = _serializer(Wire("L16", 16000, "little"))
    assert big.decode_media(samples.astype(">i2").tobytes()) == samples.astype("<i2").tobytes()
    assert little.decode_media(samples.astype("<i2").tobytes()) == samples.astype("<i2").tobytes()
    assert big.decode_media(samples.astype("<i2").tobytes()) != samples.astype("<i2").tobytes()


async def test_params_sample_rate_overrides_start_frame() -> None:
    ser = _serializer(Wire("PCMU", 8000), sample_rate=8000)
    await ser.setup(StartFrame(audio_in_sample_rate=16000, audio_out_sample_rate=24000))
    frame = await ser.deserialize(_media(bytes([0xFF]) * 160, 0))
    assert isinstance(frame, InputAudioRawFrame)
    assert frame.sample_rate == 8000
    assert len(frame.audio) == 320


async def test_default_input_rate_is_the_wire_rate_before_setup() -> None:
    ser = _serializer(Wire("G722", 16000))
    frame = await ser.deserialize(_media(bytes(160), 0))
    assert isinstance(frame, InputAudioRawFrame)
    assert frame.sample_rate == 16000
    assert len(frame.audio) == 640


# ------------------------------------------------------------ us -> Telnyx (encode)


@pytest.mark.parametrize("frame_rate", [8000, 16000, 24000])
@pytest.mark.parametrize("wire", WIRES, ids=lambda w: w.id)
async def test_encode_path(wire: Wire, frame_rate: int) -> None:
    ser = _serializer(wire)
    codec = _codec(wire)
    assert ser.wire_out_rate == wire.rate
    n = frame_rate // 50
    x = _sine(frame_rate, 2 * FRAMES * n)
    payloads: list[bytes] = []
    deficits: list[int] = []
    for i in range(2 * FRAMES):
        message = await ser.serialize(
            OutputAudioRawFrame(audio=x[i * n : (i + 1) * n].tobytes(), sample_rate=frame_rate)
        )
        # While the resampler fills up it may have nothing to send yet: then no message.
        payloads.append(b"" if message is None else _payload(message))
        if i + 1 in (FRAMES, 2 * FRAMES):
            produced = len(codec.decode(b"".join(payloads))) // 2
            deficits.append((i + 1) * wire.rate // 50 - produced)
    assert all(p for p in payloads[10:])

    if frame_rate == wire.rate:
        assert all(len(p) == codec.payload_bytes(20) for p in payloads)
        assert deficits == [0, 0]
    else:
        assert 0 < deficits[0] <= MAX_LATENCY_MS * wire.rate // 1000
        assert deficits[1] == deficits[0]
        assert all(len(p) == codec.payload_bytes(20) for p in payloads[10:])

    y = _pcm(_codec(wire).decode(b"".join(payloads)))  # a fresh decoder: G.722 is stateful
    assert abs(_peak_hz(y, wire.rate) - TONE) <= 2.0
    amp, snr = _tone_fit(y, wire.rate, skip=wire.rate // 10)
    assert amp == pytest.approx(AMP, rel=0.03)
    assert snr > 35.0, snr


@pytest.mark.parametrize(
    ("encoding", "encode"), [("PCMU", ulaw_encode), ("PCMA", alaw_encode)], ids=["PCMU", "PCMA"]
)
async def test_g711_payload_is_bit_exact_without_resampling(
    encoding: str, encode: Callable[[bytes], bytes]
) -> None:
    ser = _serializer(Wire(encoding, 8000))
    rng = np.random.default_rng(7)
    for _ in range(5):
        pcm = rng.integers(-32768, 32767, 160, dtype=np.int16).astype("<i2").tobytes()
        payload = _payload(await ser.serialize(OutputAudioRawFrame(audio=pcm, sample_rate=8000)))
        assert payload == encode(pcm)


@pytest.mark.parametrize("wire", [w for w in WIRES if w.encoding == "L16"], ids=lambda w: w.id)
async def test_l16_payload_is_exact_without_resampling(wire: Wire) -> None:
    ser = _serializer(wire)
    x = _sine(wire.rate, wire.rate // 50)
    payload = _payload(await ser.serialize(OutputAudioRawFrame(audio=x.tobytes(), sample_rate=wire.rate)))
    assert payload == x.astype(">i2" if wire.byteorder == "big" else "<i2").tobytes()


async def test_g722_payload_matches_one_shot_encoding() -> None:
    ser = _serializer(Wire("G722", 16000))
    x = _sine(16000, 320 * 10)
    chunks = [
        _payload(await ser.serialize(OutputAudioRawFrame(audio=x[i : i + 320].tobytes(), sample_rate=16000)))
        for i in range(0, x.size, 320)
    ]
    assert all(len(c) == 160 for c in chunks)
    assert b"".join(chunks) == G722Encoder().encode(x.tobytes())


async def test_reset_output_drops_buffered_audio() -> None:
    ser = _serializer(Wire("PCMU", 8000))
    frame = OutputAudioRawFrame(audio=_sine(24000, 480).tobytes(), sample_rate=24000)
    for _ in range(5):
        await ser.serialize(frame)
    ser.reset_output()
    # After a reset the resampler starts over: the first frame is held back again.
    fresh = _serializer(Wire("PCMU", 8000))
    assert await ser.serialize(frame) == await fresh.serialize(frame)


# ----------------------------------------------------------------- other messages


async def test_interruption_is_clear() -> None:
    ser = _serializer(Wire("PCMU", 8000))
    message = await ser.serialize(InterruptionFrame())
    assert isinstance(message, str)
    assert json.loads(message) == {"event": "clear"}


@pytest.mark.parametrize("digit", ["5", "#", "*", "A"])
async def test_dtmf_message_gives_input_dtmf_frame(digit: str) -> None:
    ser = _serializer(Wire("PCMU", 8000))
    frame = await ser.deserialize(protocol.build_dtmf(digit, stream_id=SID, sequence_number=3))
    assert isinstance(frame, InputDTMFFrame)
    assert frame.button == digit


@pytest.mark.parametrize(
    "message",
    [
        protocol.build_connected(auth_token="tok"),
        protocol.build_start(stream_id=SID, call_control_id="v3:abc"),
        protocol.build_mark_echo("m1", stream_id=SID, sequence_number=4),
        protocol.build_stop(stream_id=SID, call_control_id="v3:abc", sequence_number=9),
        protocol.build_error(code=100002, title="Unknown Error", detail="x", stream_id=SID),
        '{"event":"something_new","stream_id":"s"}',
    ],
    ids=["connected", "start", "mark", "stop", "error", "unknown"],
)
async def test_non_audio_messages_deserialize_to_none(message: str) -> None:
    ser = _serializer(Wire("PCMU", 8000))
    assert await ser.deserialize(message) is None
    assert await ser.deserialize(message.encode()) is None


async def test_transport_message_frame_is_json() -> None:
    ser = _serializer(Wire("PCMU", 8000))
    body = {"event": "mark", "mark": {"name": "turn-1"}, "n": [1, 2.5, None, True]}
    message = await ser.serialize(TransportMessageFrame(message=body))
    assert isinstance(message, str)
    assert json.loads(message) == body


async def test_frames_without_wire_form_serialize_to_none() -> None:
    ser = _serializer(Wire("PCMU", 8000))
    assert await ser.serialize(TextFrame("hello")) is None
    assert await ser.serialize(EndFrame()) is None  # auto_hang_up=False: nothing to send
    assert await ser.serialize(OutputAudioRawFrame(audio=b"", sample_rate=8000)) is None


# --------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "kwargs",
    [
        {"outbound_encoding": "OPUS"},
        {"inbound_encoding": "AMR-WB"},
        {"outbound_encoding": "PCMU", "inbound_encoding": "MP3"},
        {"params": TelnyxFrameSerializer.InputParams(inbound_encoding="SPEEX", auto_hang_up=False)},
        {
            "outbound_encoding": "L16",
            "params": TelnyxFrameSerializer.InputParams(telnyx_sample_rate=44100, auto_hang_up=False),
        },
    ],
    ids=["outbound-opus", "inbound-amr-wb", "inbound-mp3", "params-speex", "l16-44k"],
)
def test_unsupported_encoding_fails_at_construction(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=r"unsupported encoding|does not support"):
        TelnyxFrameSerializer(stream_id=SID, **kwargs)  # type: ignore[arg-type]


def test_encoding_names_are_case_insensitive() -> None:
    ser = TelnyxFrameSerializer(
        SID, "pcma", "g722", params=TelnyxFrameSerializer.InputParams(auto_hang_up=False)
    )
    assert (ser.outbound_encoding, ser.inbound_encoding) == ("PCMA", "G722")
    assert (ser.wire_in_rate, ser.wire_out_rate) == (8000, 16000)


@pytest.mark.parametrize("rate", [8000, 16000])
async def test_odd_length_l16_payload_is_dropped(rate: int) -> None:
    start = StartFrame(audio_in_sample_rate=16000 if rate == 8000 else 8000)
    ser = _serializer(Wire("L16", rate))
    await ser.setup(start)
    with pytest.raises(ValueError, match="odd length"):
        ser.decode_media(b"\x01" * 319)
    # The fast path raises (the transport counts it as bad input); Pipecat's deserialize
    # drops the message, as Pipecat's does.
    assert await ser.deserialize(_media(b"\x01" * 319, 0)) is None
    # The failure left no half sample behind: the next good payload decodes exactly as
    # it would on a fresh serializer.
    fresh = _serializer(Wire("L16", rate))
    await fresh.setup(start)
    good = _sine(rate, 3 * rate // 50).astype(">i2").tobytes()
    assert ser.decode_media(good) == fresh.decode_media(good)


async def test_oversize_message_is_a_protocol_error() -> None:
    ser = _serializer(Wire("PCMU", 8000))
    message = _media(b"\xff" * (MAX_MESSAGE_CHARS // 4 * 3 + 3), 0)
    assert len(message) > MAX_MESSAGE_CHARS
    with pytest.raises(protocol.ProtocolError, match="exceeds the limit"):
        ser.parse(message)
    with pytest.raises(protocol.ProtocolError):
        await ser.deserialize(message)
    # Just under the limit is fine.
    ok = _media(b"\xff" * 40_000, 0)
    assert len(ok) < MAX_MESSAGE_CHARS
    assert isinstance(ser.parse(ok), protocol.MediaEvent)


@pytest.mark.parametrize(
    "bad", ["not json", "[]", '{"event":"media"}', '{"event":"media","media":{"payload":"@@"}}']
)
async def test_malformed_messages_are_protocol_errors(bad: str) -> None:
    ser = _serializer(Wire("PCMU", 8000))
    with pytest.raises(protocol.ProtocolError):
        await ser.deserialize(bad)


# ------------------------------------------------------------- auto hang-up rules


def test_auto_hang_up_true_needs_api_key() -> None:
    with pytest.raises(ValueError, match="api_key"):
        TelnyxFrameSerializer(
            SID, call_control_id="v3:abc", params=TelnyxFrameSerializer.InputParams(auto_hang_up=True)
        )


def test_auto_hang_up_true_needs_call_control_id() -> None:
    with pytest.raises(ValueError, match="call_control_id"):
        TelnyxFrameSerializer(SID, api_key=KEY, params=TelnyxFrameSerializer.InputParams(auto_hang_up=True))


@pytest.mark.parametrize(
    "kwargs", [{}, {"api_key": KEY}, {"call_control_id": "v3:abc"}], ids=["nothing", "key-only", "ccid-only"]
)
def test_no_credentials_means_no_hang_up_and_one_warning(
    kwargs: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="callpipe.telnyx"):
        ser = TelnyxFrameSerializer(SID, **kwargs)  # type: ignore[arg-type]
    assert ser.auto_hang_up is False
    warnings = [r for r in caplog.records if r.name == "callpipe.telnyx" and r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "hung up" in warnings[0].getMessage()


def test_explicit_false_is_silent(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="callpipe.telnyx"):
        ser = TelnyxFrameSerializer(SID, params=TelnyxFrameSerializer.InputParams(auto_hang_up=False))
    assert ser.auto_hang_up is False
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_key_and_call_control_id_enable_hang_up(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="callpipe.telnyx"):
        ser = TelnyxFrameSerializer(SID, call_control_id="v3:abc", api_key=KEY)
        explicit = TelnyxFrameSerializer(
            SID,
            call_control_id="v3:abc",
            api_key=KEY,
            params=TelnyxFrameSerializer.InputParams(auto_hang_up=True),
        )
        off = TelnyxFrameSerializer(
            SID,
            call_control_id="v3:abc",
            api_key=KEY,
            params=TelnyxFrameSerializer.InputParams(auto_hang_up=False),
        )
    assert ser.auto_hang_up is True
    assert explicit.auto_hang_up is True
    assert off.auto_hang_up is False
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


# ----------------------------------------------------- hang-up via a real server


@pytest.fixture(scope="module")
def _fake() -> Iterator[tuple[BackgroundServer, FakeTelnyxState]]:
    app = create_fake_telnyx_app(api_key=KEY)
    with BackgroundServer(app) as srv:
        yield srv, app.state.telnyx


@pytest.fixture
def server(_fake: tuple[BackgroundServer, FakeTelnyxState]) -> BackgroundServer:
    _fake[1].reset()
    return _fake[0]


@pytest.fixture
def fake(_fake: tuple[BackgroundServer, FakeTelnyxState], server: BackgroundServer) -> FakeTelnyxState:
    return _fake[1]


async def _dial(server: BackgroundServer) -> str:
    async with TelnyxClient(KEY, base_url=server.base_url + "/v2") as client:
        data = await client.dial(to="+15550000001", from_="+15550000002", connection_id="conn")
    ccid: str = data["call_control_id"]
    return ccid


def _hang_up_serializer(
    server: BackgroundServer, ccid: str, api_key: str = KEY, **params: object
) -> TelnyxFrameSerializer:
    return TelnyxFrameSerializer(
        stream_id=SID,
        call_control_id=ccid,
        api_key=api_key,
        params=TelnyxFrameSerializer.InputParams(api_base_url=server.base_url + "/v2", **params),  # type: ignore[arg-type]
    )


async def test_end_frame_hangs_up_once(server: BackgroundServer, fake: FakeTelnyxState) -> None:
    ccid = await _dial(server)
    ser = _hang_up_serializer(server, ccid)
    assert ser.auto_hang_up is True
    assert fake.calls[ccid].is_alive

    assert await ser.serialize(EndFrame()) is None
    hangups = fake.requests_to("/v2/calls/*/actions/hangup")
    assert len(hangups) == 1
    request = hangups[0]
    assert request.method == "POST"
    assert request.path == f"/v2/calls/{ccid}/actions/hangup"
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.status_code == 200
    assert not fake.calls[ccid].is_alive

    # Cancel after end (and a second end): no second request.
    assert await ser.serialize(CancelFrame()) is None
    assert await ser.serialize(EndFrame()) is None
    await ser.hang_up()
    assert len(fake.requests_to("/v2/calls/*/actions/hangup")) == 1


async def test_concurrent_end_and_cancel_hang_up_once(
    server: BackgroundServer, fake: FakeTelnyxState
) -> None:
    ccid = await _dial(server)
    ser = _hang_up_serializer(server, ccid)
    await asyncio.gather(ser.serialize(EndFrame()), ser.serialize(CancelFrame()), ser.hang_up())
    assert len(fake.requests_to("/v2/calls/*/actions/hangup")) == 1
    assert not fake.calls[ccid].is_alive


async def test_cancel_frame_hangs_up(server: BackgroundServer, fake: FakeTelnyxState) -> None:
    ccid = await _dial(server)
    ser = _hang_up_serializer(server, ccid)
    await ser.serialize(CancelFrame())
    assert [r.path for r in fake.requests_to("/v2/calls/*/actions/hangup")] == [
        f"/v2/calls/{ccid}/actions/hangup"
    ]


async def test_auto_hang_up_false_sends_nothing(server: BackgroundServer, fake: FakeTelnyxState) -> None:
    ccid = await _dial(server)
    ser = _hang_up_serializer(server, ccid, auto_hang_up=False)
    await ser.serialize(EndFrame())
    await ser.serialize(CancelFrame())
    assert fake.requests_to("/v2/calls/*/actions/hangup") == []
    assert fake.calls[ccid].is_alive


@pytest.mark.parametrize("ended_how", ["unknown-id", "callee-hung-up"])
async def test_call_already_ended_is_fine(
    ended_how: str, server: BackgroundServer, fake: FakeTelnyxState, caplog: pytest.LogCaptureFixture
) -> None:
    if ended_how == "unknown-id":
        ccid = "v3:never-issued-by-the-fake"
    else:
        ccid = await _dial(server)
        fake.end_call(ccid)
    ser = _hang_up_serializer(server, ccid)
    with caplog.at_level(logging.INFO, logger="callpipe.telnyx"):
        assert await ser.serialize(EndFrame()) is None  # no exception
    hangups = fake.requests_to("/v2/calls/*/actions/hangup")
    assert len(hangups) == 1
    assert hangups[0].status_code == 422
    records = [r for r in caplog.records if r.name == "callpipe.telnyx"]
    assert any("already ended" in r.getMessage() for r in records)
    assert not [r for r in records if r.levelno >= logging.ERROR]
    await ser.serialize(CancelFrame())
    assert len(fake.requests_to("/v2/calls/*/actions/hangup")) == 1


async def test_wrong_key_is_logged_not_raised(
    server: BackgroundServer, fake: FakeTelnyxState, caplog: pytest.LogCaptureFixture
) -> None:
    ccid = await _dial(server)
    ser = _hang_up_serializer(server, ccid, api_key="wrong-key")
    with caplog.at_level(logging.INFO, logger="callpipe.telnyx"):
        assert await ser.serialize(EndFrame()) is None
    hangups = fake.requests_to("/v2/calls/*/actions/hangup")
    assert len(hangups) == 1  # 401 is not retried
    assert hangups[0].status_code == 401
    errors = [r for r in caplog.records if r.name == "callpipe.telnyx" and r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert ccid in errors[0].getMessage()
    assert "wrong-key" not in caplog.text  # the key never reaches the log
    assert fake.calls[ccid].is_alive


async def test_hang_up_without_key_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    ser = TelnyxFrameSerializer(SID, call_control_id="v3:abc")  # auto_hang_up resolves to False
    with caplog.at_level(logging.INFO, logger="callpipe.telnyx"):
        await ser.hang_up()  # called directly: must not raise (TelnyxClient("") would)
    errors = [r for r in caplog.records if r.name == "callpipe.telnyx" and r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "v3:abc" in errors[0].getMessage()
