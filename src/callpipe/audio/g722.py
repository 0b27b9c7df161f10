"""G.722 wideband codec (64 kbit/s, 16 kHz PCM16LE) on top of the ``G722`` package.

``G722`` wraps the public-domain libg722, a bit-exact ITU-T G.722 implementation.
Things about its Python binding that this wrapper exists to get right:

* ``encode`` wants int16 *samples*. A plain ``bytes`` object is taken as a sequence of
  0..255 integers (one "sample" per byte), so we always pass an int16 array, which the
  binding reads in place through the buffer protocol (no copy).
* In 16 kHz mode the encoder consumes samples in pairs (QMF band split). An odd
  sample count makes it read one sample past the end of the buffer, so we keep a
  trailing odd sample and prepend it to the next chunk; that way the output of
  chunked encoding equals that of encoding the whole signal in one go.
* ``decode`` accepts only ``bytes`` and returns ``array.array('h')`` (or a numpy
  array if the optional G722-numpy backend is installed), 2 samples per byte.

Each G722 object carries ADPCM state, so every call direction needs its own
:class:`G722Encoder` / :class:`G722Decoder`.
"""

from __future__ import annotations

from typing import Any, Final

import G722
import numpy as np
import numpy.typing as npt

__all__ = ["G722_BIT_RATE", "G722_SAMPLE_RATE", "G722Decoder", "G722Encoder"]

G722_SAMPLE_RATE: Final = 16000
G722_BIT_RATE: Final = 64000

_PCM_DTYPE: Final = np.dtype("<i2")
_NO_SAMPLES: Final = np.zeros(0, dtype=np.int16)


def _new_state() -> Any:
    return G722.G722(G722_SAMPLE_RATE, G722_BIT_RATE)


class G722Encoder:
    """Stateful G.722 encoder for one call direction: 16 kHz PCM16LE in, 64 kbit/s out.

    Output is one byte per two input samples (20 ms = 320 samples -> 160 bytes).
    """

    __slots__ = ("_pending", "_state")

    def __init__(self) -> None:
        """Create an encoder with fresh ADPCM state."""
        self._state = _new_state()
        # A leftover odd sample from the previous call (0 or 1 samples).
        self._pending: npt.NDArray[np.int16] = _NO_SAMPLES

    def encode(self, pcm: bytes) -> bytes:
        """Encode PCM16LE bytes. Raises ValueError on an odd byte count.

        An odd *sample* count is fine: the last sample is held for the next call.
        """
        if len(pcm) & 1:
            raise ValueError(
                f"G722Encoder.encode: PCM16 input must be whole 2-byte samples, got {len(pcm)} bytes"
            )
        return self.encode_array(np.frombuffer(pcm, dtype=_PCM_DTYPE))

    def encode_array(self, samples: npt.NDArray[np.int16]) -> bytes:
        """Encode a 1-D int16 sample array (an odd trailing sample is held for the next call)."""
        if samples.dtype.kind != "i" or samples.dtype.itemsize != 2 or samples.ndim != 1:
            raise TypeError(f"expected a 1-D int16 array, got {samples.ndim}-D {samples.dtype}")
        if self._pending.size:
            samples = np.concatenate((self._pending, samples))
            self._pending = _NO_SAMPLES
        if samples.size & 1:
            self._pending = samples[-1:].copy()
            samples = samples[:-1]
        if not samples.size:
            return b""
        if not (samples.flags.c_contiguous and samples.dtype.isnative):
            # The binding reads the buffer in place; other layouts would hit its slow path.
            samples = np.ascontiguousarray(samples, dtype=np.int16)
        out: bytes = self._state.encode(samples)
        return out

    def flush(self) -> bytes:
        """Encode a held odd sample padded with one zero sample (b"" if none is pending)."""
        if not self._pending.size:
            return b""
        return self.encode_array(np.zeros(1, dtype=np.int16))


class G722Decoder:
    """Stateful G.722 decoder for one call direction: 64 kbit/s in, 16 kHz PCM16LE out.

    Output is two samples (4 bytes) per input byte (160 bytes -> 320 samples).
    """

    __slots__ = ("_state",)

    def __init__(self) -> None:
        """Create a decoder with fresh ADPCM state."""
        self._state = _new_state()

    def decode_array(self, data: bytes) -> npt.NDArray[np.int16]:
        """Decode G.722 bytes to an int16 sample array (a view of the decoder's output, no copy)."""
        if type(data) is not bytes:
            data = bytes(data)  # the binding insists on an exact bytes object
        return np.frombuffer(self._state.decode(data), dtype=np.int16)

    def decode(self, data: bytes) -> bytes:
        """Decode G.722 bytes to PCM16LE bytes."""
        # astype is a no-op on little-endian hosts; it only matters on big-endian ones.
        return self.decode_array(data).astype(_PCM_DTYPE, copy=False).tobytes()
