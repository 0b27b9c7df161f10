"""Voice activity detection with Silero VAD v5 (ONNX), batched across the calls of a process.

One process serves hundreds of calls, so the pieces are split by what they cost:

* :class:`SileroVADModel` - the ONNX session, loaded once per process
  (:meth:`SileroVADModel.shared`). Stateless: the RNN state travels with each call.
* :class:`SileroVADAnalyzer` - one per call. Holds only that call's RNN state
  (2x128 floats), the last few samples of context and a partial-window byte buffer,
  so creating one is practically free.
* :class:`VADBatcher` - one per event loop. Collects the full windows that all the
  loop's analyzers produce within a few milliseconds and runs them through the model
  as one batch: at 8 kHz ~31 µs per window at batch 50 instead of ~88 µs unbatched
  (16 kHz: ~54 vs ~112 µs).

The model's input format is described in :mod:`callpipe.audio.vad.model`; the
modules: ``model`` (the session), ``analyzer`` (per call), ``batcher`` (per loop),
``volume`` (the volume gate), ``params`` (the value types).

Volume: each window's RMS level in dBFS is mapped linearly from [-60 dBFS, -20 dBFS]
to [0, 1] (clipped), then smoothed with a fast-attack / slow-release exponential
moving average (see :data:`VOLUME_FLOOR_DBFS`, :data:`VOLUME_CEIL_DBFS`). With the
default ``min_volume`` 0.6 the gate opens at a smoothed level of -36 dBFS: telephone
speech (-30..-20 dBFS RMS, i.e. 0.75..1.0) passes; line noise and silence (below
-50 dBFS, i.e. under 0.25) do not.

Threading: the analyzers and batcher of one event loop must be used from that loop's
thread. The model itself is thread-safe (onnxruntime's ``run`` is).
"""

from callpipe.audio.vad.analyzer import SileroVADAnalyzer
from callpipe.audio.vad.batcher import VADBatcher
from callpipe.audio.vad.model import MODEL_PATH, SUPPORTED_SAMPLE_RATES, SileroVADModel
from callpipe.audio.vad.params import VADEvent, VADParams, VADState
from callpipe.audio.vad.volume import VOLUME_CEIL_DBFS, VOLUME_FLOOR_DBFS, volume_from_dbfs

__all__ = [
    "MODEL_PATH",
    "SUPPORTED_SAMPLE_RATES",
    "VOLUME_CEIL_DBFS",
    "VOLUME_FLOOR_DBFS",
    "SileroVADAnalyzer",
    "SileroVADModel",
    "VADBatcher",
    "VADEvent",
    "VADParams",
    "VADState",
    "volume_from_dbfs",
]
