"""Each window's volume: its RMS level in dBFS mapped to 0..1, and how the analyzer smooths it.

See the package docstring (:mod:`callpipe.audio.vad`) for why the gate sits at -36 dBFS.
"""

from __future__ import annotations

import math
from typing import Final

import numpy as np
import numpy.typing as npt

from callpipe.audio.vad.model import Float32Array

__all__ = [
    "VOLUME_ATTACK",
    "VOLUME_CEIL_DBFS",
    "VOLUME_FLOOR_DBFS",
    "VOLUME_RELEASE",
    "volume_from_dbfs",
    "window_volumes",
]

# Volume mapping: 0 at -60 dBFS, 1 at -20 dBFS, linear in dB in between.
VOLUME_FLOOR_DBFS: Final = -60.0
VOLUME_CEIL_DBFS: Final = -20.0
# Smoothing of the per-window volume: a louder window moves the level 80% of the way
# at once (onsets are not delayed), a quieter one only 25% (a single quiet window inside
# a word does not drop the gate; after speech the level falls from 0.9 to below 0.6 in
# ~3 windows, which adds at most ~0.1 s to a stop, well within stop_secs).
VOLUME_ATTACK: Final = 0.8
VOLUME_RELEASE: Final = 0.25
_MIN_POWER: Final = np.float32(1e-12)  # -120 dBFS: keeps log10 finite on digital silence


def volume_from_dbfs(dbfs: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Map an RMS level in dBFS to the 0..1 volume scale (before smoothing)."""
    span = VOLUME_CEIL_DBFS - VOLUME_FLOOR_DBFS
    return np.clip((np.asarray(dbfs, dtype=np.float64) - VOLUME_FLOOR_DBFS) / span, 0.0, 1.0)


def window_volumes(windows: Float32Array, context: int) -> list[float]:
    """Unsmoothed, unclipped volume of each row of ``windows`` (context samples excluded).

    Clipping to [0, 1] happens per window in ``_advance``: on Python floats that is
    cheaper than another numpy call for the usual small batches.
    """
    samples = windows[:, context:]
    # Mean power in dBFS is 10*log10(sum/n); fold the 1/n and the dB -> 0..1 mapping into
    # one scale and offset, and work in place: fewer numpy calls per batch.
    sum_sq = np.einsum("ij,ij->i", samples, samples)
    np.maximum(sum_sq, _MIN_POWER * samples.shape[1], out=sum_sq)
    np.log10(sum_sq, out=sum_sq)
    scale = 10.0 / (VOLUME_CEIL_DBFS - VOLUME_FLOOR_DBFS)
    sum_sq *= scale
    sum_sq += -(VOLUME_FLOOR_DBFS + 10.0 * math.log10(samples.shape[1])) / (
        VOLUME_CEIL_DBFS - VOLUME_FLOOR_DBFS
    )
    return sum_sq.tolist()  # type: ignore[no-any-return]
