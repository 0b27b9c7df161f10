"""G.711 / L16 codecs and the codec registry.

G.711 is checked exhaustively against CPython's ``audioop`` (the reference the
telephony world has used for decades): all 256 codes decode and all 65,536 int16
inputs encode bit-exactly, for both laws.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import pytest

from callpipe.audio import (
    SUPPORTED_ENCODINGS,
    Codec,
    alaw_decode,
    alaw_decode_array,
    alaw_encode,
    alaw_encode_array,
    get_codec,
    l16_decode,
    l16_encode,
    ulaw_decode,
    ulaw_decode_array,
    ulaw_encode,
    ulaw_encode_array,
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop  # stdlib up to 3.12; the audioop-lts package on 3.13+

Codec_fn = Callable[[bytes], bytes]
U8 = npt.NDArray[np.uint8]
I16 = npt.NDArray[np.int16]

ALL_CODES = bytes(range(256))
ALL_SAMPLES = np.arange(65536, dtype=np.uint16).view(np.int16)  # every int16 value once
ALL_PCM = ALL_SAMPLES.astype("<i2").tobytes()


# ----------------------------------------------------------------------------- G.711


@pytest.mark.parametrize(
    ("decode", "decode_array", "reference"),
    [
        (ulaw_decode, ulaw_decode_array, audioop.ulaw2lin),
        (alaw_decode, alaw_decode_array, audioop.alaw2lin),
    ],
    ids=["ulaw", "alaw"],
)
def test_g711_decode_all_codes_bit_exact(
    decode: Callable[[bytes], bytes],
    decode_array: Callable[[U8], I16],
    reference: Callable[[bytes, int], bytes],
) -> None:
    expected = reference(ALL_CODES, 2)
    assert decode(ALL_CODES) == expected
    arr = decode_array(np.frombuffer(ALL_CODES, dtype=np.uint8))
    assert arr.dtype == np.int16
    assert arr.tobytes() == expected


@pytest.mark.parametrize(
    ("encode", "encode_array", "reference"),
    [
        (ulaw_encode, ulaw_encode_array, audioop.lin2ulaw),
        (alaw_encode, alaw_encode_array, audioop.lin2alaw),
    ],
    ids=["ulaw", "alaw"],
)
def test_g711_encode_all_samples_bit_exact(
    encode: Callable[[bytes], bytes],
    encode_array: Callable[[I16], U8],
    reference: Callable[[bytes, int], bytes],
) -> None:
    expected = reference(ALL_PCM, 2)
    assert len(expected) == 65536
    assert encode(ALL_PCM) == expected
    arr = encode_array(ALL_SAMPLES)
    assert arr.dtype == np.uint8
    assert arr.tobytes() == expected
    # Byte order of the array must not matter, only the values.
    assert encode_array(ALL_SAMPLES.astype(">i2")).tobytes() == expected


@pytest.mark.parametrize(
    ("encode", "decode"), [(ulaw_encode, ulaw_decode), (alaw_encode, alaw_decode)], ids=["ulaw", "alaw"]
)
def test_g711_code_roundtrip_is_identity(encode: Codec_fn, decode: Codec_fn) -> None:
    # decode -> encode must give back every code. Only μ-law 0x7F/0xFF (+0 and -0)
    # collapse: both decode to 0, which encodes as 0xFF.
    back = encode(decode(ALL_CODES))
    diff = [c for c in range(256) if back[c] != c]
    assert diff in ([], [0x7F])


@pytest.mark.parametrize("encode", [ulaw_encode, alaw_encode, l16_encode, l16_decode])
def test_odd_length_pcm_rejected(encode: Codec_fn) -> None:
    with pytest.raises(ValueError, match=r"odd length|whole 2-byte"):
        encode(b"\x00\x01\x02")


@pytest.mark.parametrize("fn", [ulaw_encode, alaw_encode, ulaw_decode, alaw_decode, l16_encode, l16_decode])
def test_empty_input(fn: Codec_fn) -> None:
    assert fn(b"") == b""


def test_g711_array_dtype_checks() -> None:
    with pytest.raises(TypeError):
        ulaw_encode_array(np.zeros(4, dtype=np.int32))
    with pytest.raises(TypeError):
        alaw_decode_array(np.zeros(4, dtype=np.int64))


def test_g711_accepts_buffer_types() -> None:
    pcm = ALL_PCM[:320]
    assert ulaw_encode(bytearray(pcm)) == ulaw_encode(pcm)  # type: ignore[arg-type]
    assert alaw_encode(memoryview(pcm)) == alaw_encode(pcm)  # type: ignore[arg-type]
    assert ulaw_decode(memoryview(ALL_CODES)) == ulaw_decode(ALL_CODES)  # type: ignore[arg-type]
    assert alaw_decode(bytearray(ALL_CODES)) == alaw_decode(ALL_CODES)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- L16


def test_l16_big_endian_default() -> None:
    samples = np.array([0x1234, -2, 32767, -32768, 0], dtype=np.int16)
    wire = samples.astype(">i2").tobytes()
    assert wire[:2] == b"\x12\x34"  # network order on the wire
    pcm = l16_decode(wire)
    assert pcm == samples.astype("<i2").tobytes()
    assert l16_encode(pcm) == wire
    assert l16_encode(l16_decode(ALL_PCM)) == ALL_PCM


def test_l16_little_endian_is_passthrough() -> None:
    pcm = ALL_PCM[:640]
    assert l16_decode(pcm, "little") is pcm
    assert l16_encode(pcm, byteorder="little") is pcm


def test_l16_bad_byteorder() -> None:
    with pytest.raises(ValueError, match="byteorder"):
        l16_decode(b"\x00\x00", "network")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- registry


@pytest.mark.parametrize(
    ("name", "rate", "expected_rate"),
    [
        ("PCMU", None, 8000),
        ("pcmu", 8000, 8000),
        ("PCMA", None, 8000),
        ("L16", None, 16000),
        ("l16", 8000, 8000),
        ("L16", 16000, 16000),
        ("G722", None, 16000),
        ("g722", 16000, 16000),
        ("G722", 8000, 16000),  # RFC 3551's 8000 Hz RTP clock for G.722
    ],
)
def test_get_codec_names_and_rates(name: str, rate: int | None, expected_rate: int) -> None:
    codec = get_codec(name, rate)
    assert isinstance(codec, Codec)
    assert codec.name == name.upper()
    assert codec.sample_rate == expected_rate


def test_get_codec_unknown_name_lists_supported() -> None:
    with pytest.raises(ValueError) as exc:
        get_codec("OPUS")
    for name in SUPPORTED_ENCODINGS:
        assert name in str(exc.value)


@pytest.mark.parametrize(
    ("name", "rate"), [("PCMU", 16000), ("PCMA", 48000), ("L16", 24000), ("G722", 48000)]
)
def test_get_codec_bad_rate(name: str, rate: int) -> None:
    with pytest.raises(ValueError, match="sample_rate"):
        get_codec(name, rate)


def test_codec_dispatch_matches_functions() -> None:
    pcm = ALL_PCM[:320]
    pcmu, pcma, l16 = get_codec("PCMU"), get_codec("PCMA"), get_codec("L16", 8000)
    assert pcmu.encode(pcm) == ulaw_encode(pcm)
    assert pcmu.decode(ALL_CODES) == ulaw_decode(ALL_CODES)
    assert pcma.encode(pcm) == alaw_encode(pcm)
    assert pcma.decode(ALL_CODES) == alaw_decode(ALL_CODES)
    assert l16.encode(pcm) == l16_encode(pcm, "big")
    assert l16.decode(pcm) == l16_decode(pcm, "big")
    little = get_codec("L16", l16_byteorder="little")
    assert little.decode(pcm) is pcm
    assert not pcmu.stateful and get_codec("G722").stateful


@pytest.mark.parametrize(
    ("name", "rate", "size"), [("PCMU", 8000, 160), ("L16", 16000, 640), ("G722", 16000, 160)]
)
def test_payload_bytes(name: str, rate: int, size: int) -> None:
    assert get_codec(name, rate).payload_bytes() == size
    assert get_codec(name, rate).payload_bytes(40) == 2 * size


def test_g722_codec_instances_have_independent_state() -> None:
    rng = np.random.default_rng(7)
    pcm = (rng.standard_normal(3200) * 3000).astype("<i2").tobytes()
    a, b = get_codec("G722"), get_codec("G722")
    first = a.encode(pcm)
    # A second instance (new call) starts from fresh state: same input, same output,
    # even though `a` has already advanced.
    assert b.encode(pcm) == first
    assert a.encode(pcm) != first
    assert a.new_instance().encode(pcm) == first
    # The codec really is G.722: 2 samples per byte, and it decodes back to 16 kHz PCM.
    assert len(first) == len(pcm) // 4
    assert len(get_codec("G722").decode(first)) == len(pcm)
