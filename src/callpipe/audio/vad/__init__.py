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

Model facts (checked against Silero's reference ``OnnxWrapper``): a window is 256
samples at 8 kHz or 512 at 16 kHz (32 ms); the model input is that window preceded by
the last 32 (8 kHz) / 64 (16 kHz) samples of the stream's previous window (zeros for
the first window), as float32 in [-1, 1); ``state`` is float32 ``[2, batch, 128]``
and starts at zeros. Batching stacks independent streams along the batch axis, which
does not change any stream's result.

Volume: each window's RMS level in dBFS is mapped linearly from [-60 dBFS, -20 dBFS]
to [0, 1] (clipped), then smoothed with a fast-attack / slow-release exponential
moving average (see :data:`VOLUME_FLOOR_DBFS`, :data:`VOLUME_CEIL_DBFS`). With the
default ``min_volume`` 0.6 the gate opens at a smoothed level of -36 dBFS: telephone
speech (-30..-20 dBFS RMS, i.e. 0.75..1.0) passes; line noise and silence (below
-50 dBFS, i.e. under 0.25) do not.

Threading: the analyzers and batcher of one event loop must be used from that loop's
thread. The model itself is thread-safe (onnxruntime's ``run`` is).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Final, Literal

import numpy as np
import numpy.typing as npt
import onnxruntime

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

logger = logging.getLogger(__name__)

Float32Array = npt.NDArray[np.float32]

MODEL_PATH: Final = Path(__file__).resolve().parent.parent / "models" / "silero_vad.onnx"
SUPPORTED_SAMPLE_RATES: Final = (8000, 16000)
_WINDOW: Final = {8000: 256, 16000: 512}  # samples per 32 ms window
_CONTEXT: Final = {8000: 32, 16000: 64}  # samples of the previous window prepended
_STATE_SIZE: Final = 128

# Volume mapping: 0 at -60 dBFS, 1 at -20 dBFS, linear in dB in between.
VOLUME_FLOOR_DBFS: Final = -60.0
VOLUME_CEIL_DBFS: Final = -20.0
# Smoothing of the per-window volume: a louder window moves the level 80% of the way
# at once (onsets are not delayed), a quieter one only 25% (a single quiet window inside
# a word does not drop the gate; after speech the level falls from 0.9 to below 0.6 in
# ~3 windows, which adds at most ~0.1 s to a stop, well within stop_secs).
_ATTACK: Final = 0.8
_RELEASE: Final = 0.25
_PCM_SCALE: Final = np.float32(1.0 / 32768.0)
_MIN_POWER: Final = np.float32(1e-12)  # -120 dBFS: keeps log10 finite on digital silence

_ZERO_STATE: Final = np.zeros((2, _STATE_SIZE), dtype=np.float32)
_ZERO_STATE.flags.writeable = False  # shared by all fresh analyzers; states are replaced, never mutated


def _check_rate(sample_rate: int) -> int:
    if sample_rate not in _WINDOW:
        raise ValueError(f"Silero VAD supports 8000 and 16000 Hz, not {sample_rate!r}")
    return sample_rate


def volume_from_dbfs(dbfs: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Map an RMS level in dBFS to the 0..1 volume scale (before smoothing)."""
    span = VOLUME_CEIL_DBFS - VOLUME_FLOOR_DBFS
    return np.clip((np.asarray(dbfs, dtype=np.float64) - VOLUME_FLOOR_DBFS) / span, 0.0, 1.0)


def _rows_to_float(rows: list[bytes]) -> Float32Array:
    """Stack PCM16 rows of equal length into a float32 (rows, samples) array in [-1, 1)."""
    pcm = np.frombuffer(b"".join(rows), dtype="<i2").reshape(len(rows), -1)
    rows_f32: Float32Array = np.multiply(pcm, _PCM_SCALE, dtype=np.float32)
    return rows_f32


def _window_volumes(windows: Float32Array, context: int) -> list[float]:
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


@dataclass(frozen=True, slots=True)
class VADParams:
    """VAD tuning: the same field names and defaults as Pipecat's ``VADParams``.

    The defaults are Pipecat's (``tests/test_pipecat_compat.py`` pins them): a bot ported
    from Pipecat that writes ``SileroVADAnalyzer()`` ends turns as quickly as it did there.

    ``confidence``: minimum speech probability of a window; ``start_secs``: speech
    needed before "started"; ``stop_secs``: non-speech needed before "stopped";
    ``min_volume``: minimum smoothed volume (0..1, see the module docstring).
    """

    confidence: float = 0.7
    start_secs: float = 0.2
    stop_secs: float = 0.2
    min_volume: float = 0.6

    def __post_init__(self) -> None:
        if not 0.0 <= self.confidence <= 1.0 or not 0.0 <= self.min_volume <= 1.0:
            raise ValueError("confidence and min_volume must be within [0, 1]")
        if self.start_secs < 0.0 or self.stop_secs < 0.0:
            raise ValueError("start_secs and stop_secs must not be negative")


class VADState(enum.Enum):
    """Where the per-call state machine is."""

    QUIET = 1
    STARTING = 2
    SPEAKING = 3
    STOPPING = 4


@dataclass(frozen=True, slots=True)
class VADEvent:
    """A speech start or stop.

    ``stream_time``: seconds of audio fed to the analyzer up to the end of the window
    that triggered the event. ``speech_time``: where the speech actually began
    ("started", about ``stream_time - start_secs``) or ended ("stopped", about
    ``stream_time - stop_secs``), at window (32 ms) resolution.

    With :meth:`SileroVADAnalyzer.set_pause_secs`, "paused" comes ``pause_secs`` into a
    silence that may become a stop (``speech_time``: where the speech ended), and
    "resumed" if speech comes back before the stop: a speech recognizer can start on the
    utterance during the stop window and drop the result on "resumed".
    """

    kind: Literal["started", "stopped", "paused", "resumed"]
    stream_time: float
    speech_time: float


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
        rate = _check_rate(sample_rate)
        width = _CONTEXT[rate] + _WINDOW[rate]
        if windows.ndim != 2 or windows.shape[1] != width:
            raise ValueError(f"windows must be (batch, {width}) at {rate} Hz, got {windows.shape}")
        if state.shape != (2, windows.shape[0], _STATE_SIZE):
            raise ValueError(f"state must be (2, {windows.shape[0]}, {_STATE_SIZE}), got {state.shape}")
        probs, new_state = self._session.run(
            ["output", "stateN"],
            {
                "input": np.ascontiguousarray(windows, dtype=np.float32),
                "state": np.ascontiguousarray(state, dtype=np.float32),
                "sr": self._sr[rate],
            },
        )
        return probs.reshape(-1), new_state


class SileroVADAnalyzer:
    """Per-call VAD: PCM in, "started"/"stopped" events out.

    Feed it with :meth:`push_audio` (batched through the loop's :class:`VADBatcher`,
    events go to the :meth:`set_listener` callback) or :meth:`analyze` (inline, returns
    the events); don't mix the two on one analyzer while windows are pending.
    """

    __slots__ = (
        "__weakref__",
        "_batcher",
        "_buffer",
        "_closed",
        "_confidence",
        "_context_bytes",
        "_epoch",
        "_listener",
        "_mark",
        "_params",
        "_pause_windows",
        "_paused",
        "_rnn_state",
        "_row_bytes",
        "_run",
        "_sample_rate",
        "_start_windows",
        "_state",
        "_stop_windows",
        "_volume",
        "_window_bytes",
        "_window_secs",
        "_windows",
    )

    def __init__(
        self,
        *,
        sample_rate: int | None = None,
        params: VADParams | None = None,
        batcher: VADBatcher | None = None,
    ) -> None:
        """Create the analyzer; cheap (no model work). ``batcher`` defaults to the running loop's."""
        self._params = params or VADParams()
        self._batcher = batcher
        self._listener: Callable[[VADEvent], None] | None = None
        self._closed = False
        # Raw PCM not yet processed, preceded by the context: the previous window's last
        # 32/64 samples (zeros at the start), so each model row is one contiguous slice.
        self._buffer = bytearray()
        self._sample_rate = 0
        self._row_bytes = 0  # context + window, in bytes; 0 until the sample rate is known
        self._window_bytes = 0  # the hop between rows
        self._context_bytes = 0
        self._window_secs = 0.0
        self._start_windows = self._stop_windows = 1
        self._pause_windows = 0  # 0: no "paused"/"resumed" events
        self._paused = False
        self._epoch = 0  # bumped by reset()/close(): windows queued before that are stale
        # Per-stream state (see _reset_stream): RNN state, state machine, smoothed volume.
        self._rnn_state: Float32Array = _ZERO_STATE
        self._confidence = 0.0
        self._state = VADState.QUIET
        self._volume = 0.0
        self._windows = 0  # windows processed: stream time = windows * window_secs
        self._run = 0  # consecutive windows counted in STARTING / STOPPING
        self._mark = 0.0  # stream time where STARTING / STOPPING began
        if sample_rate is not None:
            self.set_sample_rate(sample_rate)

    # -- configuration ---------------------------------------------------------------

    @property
    def sample_rate(self) -> int | None:
        """The call's sample rate, or ``None`` until :meth:`set_sample_rate`."""
        return self._sample_rate or None

    @property
    def params(self) -> VADParams:
        """The current parameters."""
        return self._params

    @property
    def state(self) -> VADState:
        """State after the last processed window."""
        return self._state

    @property
    def confidence(self) -> float:
        """Speech probability of the last processed window (diagnostics)."""
        return self._confidence

    @property
    def volume(self) -> float:
        """Smoothed volume (0..1) after the last processed window."""
        return self._volume

    def set_sample_rate(self, sample_rate: int) -> None:
        """Set the call's rate (8000 or 16000 Hz); a change resets the stream."""
        rate = _check_rate(sample_rate)
        if rate != self._sample_rate:
            self._sample_rate = rate
            self._window_bytes = 2 * _WINDOW[rate]
            self._context_bytes = 2 * _CONTEXT[rate]
            self._row_bytes = self._context_bytes + self._window_bytes
            self._window_secs = _WINDOW[rate] / rate
            self._update_window_counts()
            self.reset()

    def set_params(self, params: VADParams) -> None:
        """Replace the parameters; takes effect from the next window."""
        self._params = params
        self._update_window_counts()

    def set_pause_secs(self, pause_secs: float | None) -> None:
        """Emit "paused" after ``pause_secs`` of silence in a turn, and "resumed" (``None``: off)."""
        if pause_secs is None:
            self._pause_windows = 0
        elif self._window_secs:
            self._pause_windows = max(1, math.ceil(pause_secs / self._window_secs - 1e-9))
        else:
            raise RuntimeError("set_sample_rate() must be called before set_pause_secs()")

    def set_listener(self, callback: Callable[[VADEvent], None] | None) -> None:
        """Call ``callback(event)`` on the loop thread for every event from :meth:`push_audio`."""
        self._listener = callback

    def _update_window_counts(self) -> None:
        if self._window_secs:
            # Windows needed so their total duration is >= the configured seconds; the
            # epsilon guards an exact multiple (0.8 s = 25 windows) against float error.
            self._start_windows = max(1, math.ceil(self._params.start_secs / self._window_secs - 1e-9))
            self._stop_windows = max(1, math.ceil(self._params.stop_secs / self._window_secs - 1e-9))

    # -- audio in --------------------------------------------------------------------

    def push_audio(self, pcm: bytes) -> None:
        """Buffer PCM16LE mono; hand each full window to the batcher. Never blocks.

        Without a running event loop (and no explicit batcher) windows are processed
        inline and the listener is called before this returns.
        """
        if self._closed:
            return
        need = self._row_bytes
        if not need:
            raise RuntimeError("set_sample_rate() must be called before push_audio()")
        buffer = self._buffer
        buffer += pcm
        if len(buffer) < need:
            return  # the common case (a 20 ms frame into a 32 ms window): no numpy at all
        batcher = self._batcher
        if batcher is None:
            try:
                batcher = self._batcher = VADBatcher.for_loop()
            except RuntimeError:  # no running loop: synchronous use
                for event in self._process_inline():
                    self._emit(event)
                return
        while len(buffer) >= need:
            batcher.submit(self, self._take_row())

    def analyze(self, pcm: bytes) -> list[VADEvent]:
        """Synchronously process ``pcm`` (model run inline, unbatched); return the events.

        The listener is not called. Partial windows are kept for the next call.
        """
        if not self._row_bytes:
            raise RuntimeError("set_sample_rate() must be called before analyze()")
        if self._batcher is not None and self._batcher.pending_for(self):
            raise RuntimeError("analyze() called while push_audio() windows are still pending")
        self._buffer += pcm
        return self._process_inline()

    def _take_row(self) -> bytes:
        """Cut the next model row (context + window, PCM16) off the buffer.

        Only bytes are copied here; the conversion to float32 happens once per batch in
        :func:`_rows_to_float`, which keeps push_audio cheap. The next row's context is
        this window's tail, as in Silero's reference wrapper.
        """
        row = bytes(self._buffer[: self._row_bytes])
        del self._buffer[: self._window_bytes]
        return row

    def _process_inline(self) -> list[VADEvent]:
        model = SileroVADModel.shared()
        context = _CONTEXT[self._sample_rate]
        events: list[VADEvent] = []
        while len(self._buffer) >= self._row_bytes:
            row = _rows_to_float([self._take_row()])
            probs, state = model.infer(row, self._rnn_state[:, None, :], self._sample_rate)
            self._rnn_state = state[:, 0, :]
            event = self._advance(float(probs[0]), _window_volumes(row, context)[0])
            if event is not None:
                events.append(event)
        return events

    # -- state machine ---------------------------------------------------------------

    def _advance(self, prob: float, volume: float) -> VADEvent | None:
        """Step the state machine by one window's probability and raw volume."""
        volume = 0.0 if volume < 0.0 else 1.0 if volume > 1.0 else volume
        level = self._volume
        level += (_ATTACK if volume > level else _RELEASE) * (volume - level)
        self._volume = level
        self._confidence = prob
        self._windows += 1
        end = self._windows * self._window_secs
        params = self._params
        state = self._state
        event = None
        if prob >= params.confidence and level >= params.min_volume:
            if state is VADState.QUIET:
                state, self._run, self._mark = VADState.STARTING, 0, end - self._window_secs
            if state is VADState.STARTING:
                self._run += 1
                if self._run >= self._start_windows:
                    state = VADState.SPEAKING
                    event = VADEvent("started", end, self._mark)
            elif state is VADState.STOPPING:
                state = VADState.SPEAKING
                if self._paused:
                    self._paused = False
                    event = VADEvent("resumed", end, end - self._window_secs)
        else:
            if state is VADState.STARTING:
                state = VADState.QUIET
            elif state is VADState.SPEAKING:
                state, self._run, self._mark = VADState.STOPPING, 0, end - self._window_secs
            if state is VADState.STOPPING:
                self._run += 1
                if self._run >= self._stop_windows:
                    state = VADState.QUIET
                    self._paused = False
                    event = VADEvent("stopped", end, self._mark)
                elif self._run == self._pause_windows:
                    self._paused = True
                    event = VADEvent("paused", end, self._mark)
        self._state = state
        return event

    def _emit(self, event: VADEvent) -> None:
        listener = self._listener
        if listener is not None:
            try:
                listener(event)
            except Exception:
                # One call's broken handler must not stop VAD for the others in the batch.
                logger.exception("VAD listener failed for %s", event)

    # -- lifecycle -------------------------------------------------------------------

    def _reset_stream(self) -> None:
        self._rnn_state = _ZERO_STATE
        self._confidence = 0.0
        self._state = VADState.QUIET
        self._volume = 0.0
        self._windows = 0
        self._run = 0
        self._mark = 0.0
        self._paused = False

    def reset(self) -> None:
        """Forget all audio: back to QUIET at stream time 0, pending windows dropped."""
        self._epoch += 1
        if self._batcher is not None:
            self._batcher.discard(self)
        self._buffer[:] = bytes(self._context_bytes)
        self._reset_stream()

    def close(self) -> None:
        """Detach from the batcher; later audio is ignored."""
        self._closed = True
        self._epoch += 1
        self._listener = None
        if self._batcher is not None:
            self._batcher.discard(self)
        del self._buffer[:]


class VADBatcher:
    """Runs the windows of all analyzers on one event loop through the model in batches.

    The first window of a batch arms a ``max_delay`` timer; when it fires (or once
    ``max_batch`` windows are pending, on the next loop iteration) :meth:`flush` runs
    one inference per sample rate and per "round" (round k holds every stream's k-th
    pending window, since a stream's windows depend on each other through the RNN state).
    A timer's flush runs at most ``max_rounds`` rounds: a call that delivers a backlog of
    seconds at once is worked off a few windows per loop iteration, not in one long stall.

    Design choice: inference runs inline on the loop thread. It is short (~0.1 ms for
    one window, ~3 ms for 100, ~6.5 ms for 200) and keeps ordering trivial: events are
    delivered in window order with no locking. The cost is that the loop stalls for that
    long once per flush; if that jitter ever matters, move the ``model.infer`` call in
    :meth:`_run_group` to an executor (onnxruntime releases the GIL while it runs) and
    make flush async - nothing else depends on it being inline.

    The batcher references an analyzer only while it has pending windows (until the
    next flush, at most ``max_delay``), so closed or forgotten analyzers are collected.
    """

    _by_loop: ClassVar[weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, VADBatcher]] = (
        weakref.WeakKeyDictionary()
    )
    _by_loop_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop | None = None,
        *,
        max_delay: float = 0.004,
        max_batch: int = 256,
        max_rounds: int = 4,
        model: SileroVADModel | None = None,
    ) -> None:
        """Create a batcher for ``loop`` (default: the running loop); see :meth:`for_loop`."""
        if max_batch < 1 or max_delay < 0:
            raise ValueError("max_batch must be >= 1 and max_delay >= 0")
        # The loop is held weakly: a strong reference from the WeakKeyDictionary value
        # to its key would keep every loop (and batcher) alive forever.
        self._loop_ref = weakref.ref(loop or asyncio.get_running_loop())
        self.max_delay = max_delay
        self.max_batch = max_batch
        self.max_rounds = max_rounds
        self._model = model
        self._pending: dict[SileroVADAnalyzer, list[bytes]] = {}
        self._count = 0
        # Timer generation: a flush bumps it, so a timer armed for an earlier batch is a
        # no-op. (Keeping the TimerHandle instead would reference the loop.)
        self._generation = 0
        self._armed = False
        self._soon = False
        self._flushing = False
        self.inferences = 0
        """Number of model runs so far (for tests and metrics)."""
        self.windows = 0
        """Number of windows processed so far."""

    @classmethod
    def for_loop(cls, loop: asyncio.AbstractEventLoop | None = None) -> VADBatcher:
        """The batcher of ``loop`` (default: the running loop), created on first use."""
        loop = loop or asyncio.get_running_loop()
        with cls._by_loop_lock:
            batcher = cls._by_loop.get(loop)
            if batcher is None:
                batcher = cls._by_loop[loop] = cls(loop)
            return batcher

    @property
    def pending(self) -> int:
        """Windows waiting for the next flush."""
        return self._count

    def pending_for(self, analyzer: SileroVADAnalyzer) -> int:
        """Windows of ``analyzer`` waiting for the next flush."""
        return len(self._pending.get(analyzer, ()))

    def submit(self, analyzer: SileroVADAnalyzer, row: bytes) -> None:
        """Queue one model row of ``analyzer`` (PCM16 context + window); call on the loop thread."""
        rows = self._pending.get(analyzer)
        if rows is None:
            self._pending[analyzer] = [row]
        else:
            rows.append(row)
        self._count += 1
        if self._count >= self.max_batch:
            if not self._soon:
                # Not inline: push_audio must stay cheap and never call listeners re-entrantly.
                self._soon = True
                self._loop().call_soon(self._on_timer, self._generation)
        elif not self._armed:
            self._armed = True
            self._loop().call_later(self.max_delay, self._on_timer, self._generation)

    def discard(self, analyzer: SileroVADAnalyzer) -> None:
        """Drop ``analyzer``'s pending windows (on reset/close)."""
        windows = self._pending.pop(analyzer, None)
        if windows is not None:
            self._count -= len(windows)

    def _loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop_ref()
        if loop is None:
            raise RuntimeError("the batcher's event loop no longer exists")
        return loop

    def _on_timer(self, generation: int) -> None:
        if generation == self._generation:
            self.flush(max_rounds=self.max_rounds)

    def flush(self, max_rounds: int | None = None) -> None:
        """Process pending windows now and deliver the events (no-op from a listener).

        ``max_rounds`` bounds how many windows of each stream run now (the timer's
        flushes use :attr:`max_rounds`); the rest follow on the next loop iteration.
        """
        if self._flushing:
            # Re-entered from a listener: windows queued meanwhile already armed a timer,
            # and processing them now could overtake the same streams' earlier windows.
            return
        self._flushing = True
        try:
            self._flush(max_rounds)
        finally:
            self._flushing = False

    def _flush(self, max_rounds: int | None) -> None:
        self._generation += 1
        self._armed = self._soon = False
        pending, self._pending, self._count = self._pending, {}, 0
        if not pending:
            return
        model = self._model or SileroVADModel.shared()
        # The epoch snapshot lets a listener reset/close another analyzer mid-flush:
        # that analyzer's remaining (now stale) windows are then skipped.
        by_rate: dict[int, list[tuple[SileroVADAnalyzer, int, list[bytes]]]] = {}
        for analyzer, windows in pending.items():
            by_rate.setdefault(analyzer._sample_rate, []).append((analyzer, analyzer._epoch, windows))
        longest = max(len(windows) for windows in pending.values())
        rounds = longest if max_rounds is None else min(max_rounds, longest)
        for rate, streams in by_rate.items():
            for k in range(min(rounds, max(len(windows) for _, _, windows in streams))):
                rows = [
                    (analyzer, epoch, windows[k]) for analyzer, epoch, windows in streams if len(windows) > k
                ]
                for start in range(0, len(rows), self.max_batch):
                    self._run_group(model, rate, rows[start : start + self.max_batch])
        self._requeue_rest([s for streams in by_rate.values() for s in streams], rounds)

    def _requeue_rest(self, streams: list[tuple[SileroVADAnalyzer, int, list[bytes]]], done: int) -> None:
        # A stream that delivered a backlog (many windows at once) is processed
        # ``max_rounds`` windows per flush, so one call's burst never holds the loop for
        # long; its rest goes first in the next flush, ahead of windows queued meanwhile.
        rest = {a: w[done:] for a, epoch, w in streams if len(w) > done and a._epoch == epoch}
        if not rest:
            return
        for analyzer, windows in self._pending.items():
            rest[analyzer] = rest.get(analyzer, []) + windows
        self._pending = rest
        self._count = sum(len(w) for w in rest.values())
        if not self._soon:
            self._soon = True
            self._loop().call_soon(self._on_timer, self._generation)

    def _run_group(
        self, model: SileroVADModel, rate: int, rows: list[tuple[SileroVADAnalyzer, int, bytes]]
    ) -> None:
        """One inference over one window of each stream in ``rows``; then advance and notify."""
        batch = _rows_to_float([row for _, _, row in rows])
        states = np.stack([analyzer._rnn_state for analyzer, _, _ in rows], axis=1)
        try:
            probs, new_states = model.infer(batch, states, rate)
        except Exception:
            logger.exception("VAD inference failed for %d windows", len(rows))
            return
        self.inferences += 1
        self.windows += len(rows)
        volumes = _window_volumes(batch, _CONTEXT[rate])
        probabilities = probs.tolist()
        for i, (analyzer, epoch, _) in enumerate(rows):
            if analyzer._epoch != epoch:
                continue  # reset or closed by a listener earlier in this flush
            analyzer._rnn_state = new_states[:, i, :]
            event = analyzer._advance(probabilities[i], volumes[i])
            if event is not None:
                analyzer._emit(event)
