"""Telephony audio: G.711, L16 and G.722 codecs, streaming resampling.

PCM throughout is mono 16-bit signed little-endian (``int16``). Everything here is
built for the per-frame hot path: whole-buffer numpy/C operations, no per-sample Python.
"""

from callpipe.audio.codecs import (
    SUPPORTED_ENCODINGS,
    ByteOrder,
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
from callpipe.audio.g722 import G722_BIT_RATE, G722_SAMPLE_RATE, G722Decoder, G722Encoder
from callpipe.audio.resample import DEFAULT_QUALITY, ResampleQuality, StreamResampler

__all__ = [
    "DEFAULT_QUALITY",
    "G722_BIT_RATE",
    "G722_SAMPLE_RATE",
    "SUPPORTED_ENCODINGS",
    "ByteOrder",
    "Codec",
    "G722Decoder",
    "G722Encoder",
    "ResampleQuality",
    "StreamResampler",
    "alaw_decode",
    "alaw_decode_array",
    "alaw_encode",
    "alaw_encode_array",
    "get_codec",
    "l16_decode",
    "l16_encode",
    "ulaw_decode",
    "ulaw_decode_array",
    "ulaw_encode",
    "ulaw_encode_array",
]
