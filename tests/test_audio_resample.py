"""StreamResampler: streaming == one-shot, continuity, lengths, pitch, edge cases.

Tolerance: streamed output must equal the one-shot reference EXACTLY (0 LSB). We run
soxr with float32 I/O (no dither) and its output does not depend on how the input is
chunked, so any difference means we dropped, duplicated or misaligned samples.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator

import numpy as np
import numpy.typing as npt
import pytest
import soxr

from callpipe.audio import DEFAULT_QUALITY, StreamResampler

RATES = (8000, 16000, 24000, 48000)
PAIRS = [(a, b) for a, b in itertools.permutations(RATES, 2)]
QUALITIES = (DEFAULT_QUALITY, "HQ")


def _signal(rate: int, seconds: float = 0.5, seed: int = 0) -> npt.NDArray[np.int16]:
    """440 Hz tone + a little noise, near full scale so clipping paths are exercised."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(rate * seconds)) / rate
    x = 20000 * np.sin(2 * np.pi * 440 * t) + 2000 * rng.standard_normal(t.size)
    return np.clip(x, -32768, 32767).astype(np.int16)


def _reference(x: npt.NDArray[np.int16], in_rate: int, out_rate: int, quality: str) -> npt.NDArray[np.int16]:
    """Whole signal through one soxr call (last=True), rounded and clipped to int16."""
    if quality == "VR":
        stream = soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32", vr=True)
        y = stream.resample_chunk(x.astype(np.float32), last=True)
    else:
        y = soxr.resample(x.astype(np.float32), in_rate, out_rate, quality=quality)
    out: npt.NDArray[np.int16] = np.clip(np.rint(y), -32768, 32767).astype(np.int16)
    return out


def _stream_bytes(rs: StreamResampler, pcm: bytes, sizes: Iterable[int]) -> npt.NDArray[np.int16]:
    out, i = [], 0
    for n in sizes:
        if i >= len(pcm):
            break
        out.append(rs.process(pcm[i : i + n]))
        i += n
    assert i >= len(pcm)
    out.append(rs.flush())
    return np.frombuffer(b"".join(out), dtype="<i2")


def _irregular_sizes(seed: int, max_bytes: int) -> Iterator[int]:
    rng = np.random.default_rng(seed)
    while True:  # any byte count 1..max, odd counts included, plus the occasional empty chunk
        yield int(rng.integers(0, max_bytes + 1))


@pytest.mark.parametrize("quality", QUALITIES)
@pytest.mark.parametrize(("in_rate", "out_rate"), PAIRS)
def test_streaming_equals_one_shot(in_rate: int, out_rate: int, quality: str) -> None:
    x = _signal(in_rate)
    ref = _reference(x, in_rate, out_rate, quality)
    assert ref.size == x.size * out_rate // in_rate  # one-shot gives the exact length

    pcm = x.astype("<i2").tobytes()
    frame = in_rate // 50 * 2  # 20 ms in bytes
    rs = StreamResampler(in_rate, out_rate, quality)  # type: ignore[arg-type]
    got = _stream_bytes(rs, pcm, itertools.repeat(frame))
    np.testing.assert_array_equal(got, ref)

    # Irregular chunks, including odd byte counts (split samples carried across calls).
    # The same instance is reused: flush() must leave it ready for a new stream.
    got = _stream_bytes(rs, pcm, _irregular_sizes(in_rate + out_rate, 3 * frame))
    np.testing.assert_array_equal(got, ref)

    # Array API, ragged chunks.
    rs = StreamResampler(in_rate, out_rate, quality)  # type: ignore[arg-type]
    parts = [rs.process_array(c) for c in np.array_split(x, 37)]
    got = np.concatenate([*parts, rs.flush_array()])
    assert got.dtype == np.int16
    np.testing.assert_array_equal(got, ref)

    # No clicks at chunk boundaries: the streamed signal is no rougher than the one-shot one.
    assert np.abs(np.diff(got.astype(np.int32))).max() <= np.abs(np.diff(ref.astype(np.int32))).max()


@pytest.mark.parametrize(("in_rate", "out_rate"), PAIRS)
def test_pitch_preserved(in_rate: int, out_rate: int) -> None:
    rs = StreamResampler(in_rate, out_rate)
    x = _signal(in_rate, seconds=1.0)
    frame = in_rate // 50
    y = np.concatenate(
        [*(rs.process_array(x[i : i + frame]) for i in range(0, x.size, frame)), rs.flush_array()]
    )
    assert y.size == out_rate  # 1 s in, 1 s out
    spectrum = np.abs(np.fft.rfft(y * np.hanning(y.size)))
    peak_hz = np.argmax(spectrum) * out_rate / y.size  # 1 Hz bins
    assert abs(peak_hz - 440) <= 1
    # Level preserved too (amplitude 20000 -> RMS ~14142, plus the noise).
    assert 13500 < np.sqrt(np.mean(y.astype(np.float64) ** 2)) < 15000


@pytest.mark.parametrize(
    ("in_rate", "out_rate"), [(22050, 16000), (44100, 8000), (16000, 22050), (8000, 44100)]
)
def test_other_rates_length(in_rate: int, out_rate: int) -> None:
    x = _signal(in_rate, seconds=1.0)
    rs = StreamResampler(in_rate, out_rate)
    out = rs.process_array(x)
    out = np.concatenate([out, rs.flush_array()])
    assert abs(out.size - out_rate) <= 1


def test_steady_state_latency_of_default() -> None:
    # Guards the reason for DEFAULT_QUALITY: with 20 ms frames, the audio held inside the
    # resampler stays small and constant (no bursty output). Measured: 30 ms for 8k->16k,
    # 25 ms for 24k->8k. Fixed-rate "HQ" swings between ~12 and ~115 ms.
    for in_rate, out_rate in [(8000, 16000), (24000, 8000)]:
        rs = StreamResampler(in_rate, out_rate)
        frame = in_rate // 50
        x = _signal(in_rate, seconds=1.0)
        produced, held_ms = 0, []
        for i in range(0, x.size, frame):
            produced += rs.process_array(x[i : i + frame]).size
            held_ms.append(((i + frame) * out_rate / in_rate - produced) / out_rate * 1000)
        assert max(held_ms[10:]) <= 35.0, (in_rate, out_rate, max(held_ms[10:]))


def test_identity_is_passthrough_without_copy() -> None:
    rs = StreamResampler(16000, 16000)
    assert rs.is_passthrough
    pcm = _signal(16000, 0.02).tobytes()
    assert rs.process(pcm) is pcm
    arr = _signal(16000, 0.02)
    assert rs.process_array(arr) is arr
    # Odd bytes are carried even on the pass-through path.
    assert rs.process(b"\x01") == b""
    assert rs.process(b"\x02\x03\x04\x05") == b"\x01\x02\x03\x04"
    assert rs.process(b"\x06") == b"\x05\x06"
    assert rs.flush() == b""


def test_silence_stays_digital_silence() -> None:
    # With soxr's int16 I/O, TPDF dither would turn silence into ±1 LSB noise.
    rs = StreamResampler(8000, 16000)
    out = b"".join(rs.process(bytes(320)) for _ in range(50)) + rs.flush()
    assert len(out) == 50 * 640
    assert not any(out)


def test_full_scale_clips_instead_of_wrapping() -> None:
    # A full-scale square wave makes the filter overshoot beyond int16; it must saturate.
    x = np.tile(np.array([32767] * 20 + [-32768] * 20, dtype=np.int16), 200)
    rs = StreamResampler(8000, 16000)
    y = np.concatenate([rs.process_array(x), rs.flush_array()])
    ref = _reference(x, 8000, 16000, DEFAULT_QUALITY)
    np.testing.assert_array_equal(y, ref)
    assert y.max() == 32767 and y.min() == -32768
    # Wrap-around would put large negative values in the positive half-periods.
    periods = y[800:-800].reshape(-1, 80)  # 40 samples high + 40 low at 16 kHz
    assert (periods[:, 8:32] > 20000).all()
    assert (periods[:, 48:72] < -20000).all()


def test_reset_and_flush_restart_cleanly() -> None:
    x = _signal(8000, 0.3)
    fresh = StreamResampler(8000, 16000)
    expected = fresh.process_array(x)

    rs = StreamResampler(8000, 16000)
    rs.process_array(_signal(8000, 0.2, seed=9))
    rs.reset()  # explicit, e.g. on barge-in
    np.testing.assert_array_equal(rs.process_array(x), expected)

    rs.flush()
    np.testing.assert_array_equal(rs.process_array(x), expected)


def test_state_kept_across_calls() -> None:
    # No silent reset between calls: two halves in sequence equal the whole.
    x = _signal(24000, 0.4)
    a = StreamResampler(24000, 8000)
    whole = np.concatenate([a.process_array(x), a.flush_array()])
    b = StreamResampler(24000, 8000)
    halves = np.concatenate([b.process_array(x[:4801]), b.process_array(x[4801:]), b.flush_array()])
    np.testing.assert_array_equal(halves, whole)


def test_argument_validation() -> None:
    with pytest.raises(ValueError):
        StreamResampler(0, 8000)
    with pytest.raises(ValueError, match="quality"):
        StreamResampler(8000, 16000, "ultra")  # type: ignore[arg-type]
    rs = StreamResampler(8000, 16000)
    with pytest.raises(TypeError):
        rs.process_array(np.zeros(10, dtype=np.float32))
    rs.process(b"\x00")
    with pytest.raises(RuntimeError):
        rs.process_array(np.zeros(10, dtype=np.int16))
