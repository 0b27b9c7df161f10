"""Streaming sample-rate conversion of PCM16LE audio with libsoxr (``soxr`` package).

One :class:`StreamResampler` per call direction. Its filter state carries across
:meth:`~StreamResampler.process` calls and is only dropped when you explicitly call
:meth:`~StreamResampler.flush` (end of stream) or :meth:`~StreamResampler.reset`
(e.g. barge-in). It is never reset on a gap in the input, unlike Pipecat
(pipecat#5769), which causes clicks and a fresh filter warm-up mid-call. If you need
the output to stay time-aligned across a gap, feed silence for it.

soxr runs with float32 I/O even though our audio is int16. With ``dtype="int16"``,
python-soxr leaves libsoxr's default TPDF dither enabled, with a random seed. The output
is then non-deterministic, digital silence comes back as ±1 LSB noise, and chunked
output differs from one-shot output by up to 2 LSB. The float32 path is deterministic
and bit-identical whatever the chunking. We round and clip to int16 ourselves, which
costs about 1 µs per 20 ms frame.
"""

from __future__ import annotations

from typing import Any, Final, Literal, get_args

import numpy as np
import numpy.typing as npt
import soxr

__all__ = ["DEFAULT_QUALITY", "ResampleQuality", "StreamResampler"]

ResampleQuality = Literal["VR", "QQ", "LQ", "MQ", "HQ", "VHQ"]
"""soxr quality recipes, plus ``"VR"``: libsoxr's variable-rate engine used at a fixed ratio."""

# Why "VR". Measured with soxr 1.1 / libsoxr on x86-64, feeding 20 ms frames. Latency is
# the audio still held inside the resampler. soxr compensates the filter's group delay,
# so this is the real added delay. Latency figures are mean (min-max); µs/frame is the
# soxr call alone.
#
#   quality  8k->16k latency   24k->8k latency   µs/frame 8k->16k / 24k->8k   response
#   LQ       34 ms (4-61)      22 ms (5-40)      3.5 / 3.7                    -7.9 dB at 3.4 kHz (muffled)
#   MQ       64 ms (11-118)    43 ms (10-75)     3.4 / 3.8                    flat to 3.6 kHz, ~120 dB rejection
#   HQ       63 ms (12-115)    44 ms (13-73)     3.4 / 4.0                    flat to 3.6 kHz, ~137 dB rejection
#   VHQ      64 ms (17-110)    87 ms (18-152)    4.1 / 4.2                    flat to 3.6 kHz, ~150 dB rejection
#   VR       30 ms (constant)  25 ms (constant)  10.6 / 27                    flat to 3.6 kHz, >110 dB rejection
#
# In fixed-rate mode, latency is dominated by libsoxr's DFT block size, not by the quality
# setting. Output arrives in ~100 ms bursts, which makes VAD/STT timing jittery and
# delays end-of-turn detection; MQ buys nothing over HQ. VR is the only setting with
# both a full telephony passband and low, constant latency. It costs 3-7x the CPU:
# bench/bench_audio.py measures StreamResampler end to end at ~13 µs (8k->16k) and
# ~30 µs (24k->8k) per frame, against ~6 µs for HQ. That is still <0.15 % of a core per
# direction, and we pay it for latency. Pass quality="HQ" where CPU matters more than
# latency. In VR mode libsoxr ignores the precision recipe, and its output is
# bit-identical under any chunking, as in the fixed-rate modes.
DEFAULT_QUALITY: Final[ResampleQuality] = "VR"

_QUALITIES: Final = frozenset(get_args(ResampleQuality))
_PCM_DTYPE: Final = np.dtype("<i2")
_EMPTY_F32: Final = np.zeros(0, dtype=np.float32)
_I16_MIN: Final = np.float32(-32768)
_I16_MAX: Final = np.float32(32767)


class StreamResampler:
    """Stateful resampler for one mono PCM16LE stream (one call direction).

    ``in_rate == out_rate`` is a pass-through that returns its input unchanged (no copy).
    Byte input may split a sample: a trailing odd byte is carried into the next call.
    """

    __slots__ = ("_carry", "_stream", "in_rate", "out_rate", "quality")

    def __init__(self, in_rate: int, out_rate: int, quality: ResampleQuality = DEFAULT_QUALITY) -> None:
        """Create a resampler from ``in_rate`` to ``out_rate`` Hz (see :data:`DEFAULT_QUALITY`)."""
        if in_rate <= 0 or out_rate <= 0:
            raise ValueError(f"sample rates must be positive, got {in_rate} -> {out_rate}")
        if quality not in _QUALITIES:
            raise ValueError(f"quality must be one of {sorted(_QUALITIES)}, got {quality!r}")
        self.in_rate = in_rate
        self.out_rate = out_rate
        self.quality: ResampleQuality = quality
        self._carry = b""  # half a sample left over from the previous process() call
        self._stream: Any = None if in_rate == out_rate else self._new_stream()

    def _new_stream(self) -> Any:
        if self.quality == "VR":
            # vr=True is python-soxr's switch for libsoxr's SOXR_VR engine (soxr >= 1.1). We never
            # change the ratio, so the "experimental" set_io_ratio() caveat does not apply.
            try:
                return soxr.ResampleStream(self.in_rate, self.out_rate, 1, dtype="float32", vr=True)
            except TypeError as exc:  # older python-soxr: no vr parameter
                raise RuntimeError(
                    "quality='VR' needs soxr>=1.1 (ResampleStream(vr=...)); upgrade soxr or pass quality='HQ'"
                ) from exc
        return soxr.ResampleStream(self.in_rate, self.out_rate, 1, dtype="float32", quality=self.quality)

    @property
    def is_passthrough(self) -> bool:
        """True when input and output rates match and audio is passed through untouched."""
        return self._stream is None

    def _run(self, samples: npt.NDArray[np.float32], last: bool) -> npt.NDArray[np.float32]:
        y: npt.NDArray[np.float32] = self._stream.resample_chunk(samples, last=last)
        np.rint(y, out=y)
        # The filter's overshoot can exceed int16. maximum/minimum rather than np.clip:
        # np.clip's Python-level wrapper costs ~1 µs more per frame.
        np.maximum(y, _I16_MIN, out=y)
        np.minimum(y, _I16_MAX, out=y)
        return y

    def process(self, pcm: bytes) -> bytes:
        """Resample a chunk of PCM16LE bytes; returns whatever output is ready (may be b"")."""
        if self._carry:
            pcm = self._carry + pcm
            self._carry = b""
        if len(pcm) & 1:
            self._carry = pcm[-1:]
            if self._stream is None:
                return pcm[:-1]
        elif self._stream is None:
            return pcm
        n = len(pcm) >> 1
        if not n:
            return b""
        samples = np.frombuffer(pcm, dtype=_PCM_DTYPE, count=n)  # view, the odd byte excluded
        # int16 -> float32 without rescaling: soxr is linear and float I/O never clips.
        return self._run(samples.astype(np.float32), last=False).astype(_PCM_DTYPE).tobytes()

    def process_array(self, samples: npt.NDArray[np.int16]) -> npt.NDArray[np.int16]:
        """Resample a 1-D int16 array; returns the ready output (possibly empty).

        Do not switch to this while :meth:`process` holds an odd byte (raises RuntimeError).
        """
        if samples.dtype.kind != "i" or samples.dtype.itemsize != 2 or samples.ndim != 1:
            raise TypeError(f"expected a 1-D int16 array, got {samples.ndim}-D {samples.dtype}")
        if self._carry:
            raise RuntimeError("process_array() called while process() holds half a sample")
        if self._stream is None:
            return samples
        if not samples.size:
            return np.zeros(0, dtype=np.int16)
        return self._run(samples.astype(np.float32), last=False).astype(np.int16)

    def flush_array(self) -> npt.NDArray[np.int16]:
        """End the stream: return the remaining output and reset for a new stream."""
        self._carry = b""  # half a sample cannot be resampled; nothing sensible to emit
        if self._stream is None:
            return np.zeros(0, dtype=np.int16)
        out = self._run(_EMPTY_F32, last=True).astype(np.int16)
        self._stream.clear()
        return out

    def flush(self) -> bytes:
        """End the stream: return the remaining output as PCM16LE and reset for a new stream."""
        return self.flush_array().astype(_PCM_DTYPE, copy=False).tobytes()

    def reset(self) -> None:
        """Drop all buffered audio and filter state (e.g. on barge-in), without output."""
        self._carry = b""
        if self._stream is not None:
            self._stream.clear()

    def __repr__(self) -> str:
        return f"StreamResampler({self.in_rate}, {self.out_rate}, quality={self.quality!r})"
