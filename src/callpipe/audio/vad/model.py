"""The Silero VAD v5 ONNX model and its input format.

Model facts (checked against Silero's reference ``OnnxWrapper``): a window is 256
samples at 8 kHz or 512 at 16 kHz (32 ms); the model input is that window preceded by
the last 32 (8 kHz) / 64 (16 kHz) samples of the stream's previous window (zeros for
the first window), as float32 in [-1, 1); ``state`` is float32 ``[2, batch, 128]``
and starts at zeros. Batching stacks independent streams along the batch axis, which
does not change any stream's result.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import ClassVar, Final

import numpy as np
import numpy.typing as npt
import onnxruntime

__all__ = [
    "CONTEXT_SAMPLES",
    "MODEL_PATH",
    "STATE_SIZE",
    "SUPPORTED_SAMPLE_RATES",
    "WINDOW_SAMPLES",
    "ZERO_STATE",
    "Float32Array",
    "SileroVADModel",
    "check_rate",
    "rows_to_float",
]

Float32Array = npt.NDArray[np.float32]

MODEL_PATH: Final = Path(__file__).resolve().parent.parent / "models" / "silero_vad.onnx"
SUPPORTED_SAMPLE_RATES: Final = (8000, 16000)
WINDOW_SAMPLES: Final = {8000: 256, 16000: 512}  # samples per 32 ms window
CONTEXT_SAMPLES: Final = {8000: 32, 16000: 64}  # samples of the previous window prepended
STATE_SIZE: Final = 128
_PCM_SCALE: Final = np.float32(1.0 / 32768.0)

ZERO_STATE: Final = np.zeros((2, STATE_SIZE), dtype=np.float32)
ZERO_STATE.flags.writeable = False  # shared by all fresh analyzers; states are replaced, never mutated


def check_rate(sample_rate: int) -> int:
    """Return ``sample_rate`` if the model supports it; raise ``ValueError`` otherwise."""
    if sample_rate not in WINDOW_SAMPLES:
        raise ValueError(f"Silero VAD supports 8000 and 16000 Hz, not {sample_rate!r}")
    return sample_rate


def rows_to_float(rows: list[bytes]) -> Float32Array:
    """Stack PCM16 rows of equal length into a float32 (rows, samples) array in [-1, 1)."""
    pcm = np.frombuffer(b"".join(rows), dtype="<i2").reshape(len(rows), -1)
    rows_f32: Float32Array = np.multiply(pcm, _PCM_SCALE, dtype=np.float32)
    return rows_f32


class SileroVADModel:
    """The Silero VAD ONNX session. Stateless and thread-safe; share it via :meth:`shared`."""

    load_count: ClassVar[int] = 0  # how many sessions this process created (tests, metrics)
    _shared: ClassVar[SileroVADModel | None] = None
    _shared_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, path: str | Path = MODEL_PATH) -> None:
        """Load the model. Prefer :meth:`shared`; this costs tens of milliseconds."""
        options = onnxruntime.SessionOptions()
        # One thread per inference: the process's parallelism comes from serving many
        # calls, and extra ORT threads only spin and contend at these tiny sizes.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self._session = onnxruntime.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._sr = {sr: np.array(sr, dtype=np.int64) for sr in SUPPORTED_SAMPLE_RATES}
        type(self).load_count += 1

    @classmethod
    def shared(cls) -> SileroVADModel:
        """The process-wide instance, loaded on first use (thread-safe)."""
        model = cls._shared
        if model is None:
            with cls._shared_lock:
                model = cls._shared
                if model is None:
                    model = cls._shared = cls()
        return model

    def infer(
        self, windows: Float32Array, state: Float32Array, sample_rate: int
    ) -> tuple[Float32Array, Float32Array]:
        """Run one batch: ``windows`` (B, context+window), ``state`` (2, B, 128).

        Returns the speech probabilities (B,) and the new state (2, B, 128).
        """
        rate = check_rate(sample_rate)
        width = CONTEXT_SAMPLES[rate] + WINDOW_SAMPLES[rate]
        if windows.ndim != 2 or windows.shape[1] != width:
            raise ValueError(f"windows must be (batch, {width}) at {rate} Hz, got {windows.shape}")
        if state.shape != (2, windows.shape[0], STATE_SIZE):
            raise ValueError(f"state must be (2, {windows.shape[0]}, {STATE_SIZE}), got {state.shape}")
        probs, new_state = self._session.run(
            ["output", "stateN"],
            {
                "input": np.ascontiguousarray(windows, dtype=np.float32),
                "state": np.ascontiguousarray(state, dtype=np.float32),
                "sr": self._sr[rate],
            },
        )
        return probs.reshape(-1), new_state
