"""The per-call analyzer: PCM in, speech "started"/"stopped" events out.

It holds only its call's RNN state (2x128 floats), the last few samples of context and
a partial-window byte buffer, so creating one is practically free; the model runs in
the loop's :class:`~callpipe.audio.vad.batcher.VADBatcher` (or inline, unbatched).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

from callpipe.audio.vad.batcher import VADBatcher
from callpipe.audio.vad.model import (
    CONTEXT_SAMPLES,
    WINDOW_SAMPLES,
    ZERO_STATE,
    Float32Array,
    SileroVADModel,
    check_rate,
    rows_to_float,
)
from callpipe.audio.vad.params import VADEvent, VADParams, VADState
from callpipe.audio.vad.volume import VOLUME_ATTACK, VOLUME_RELEASE, window_volumes

__all__ = ["SileroVADAnalyzer"]

logger = logging.getLogger(__name__)


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
        self._rnn_state: Float32Array = ZERO_STATE
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
        rate = check_rate(sample_rate)
        if rate != self._sample_rate:
            self._sample_rate = rate
            self._window_bytes = 2 * WINDOW_SAMPLES[rate]
            self._context_bytes = 2 * CONTEXT_SAMPLES[rate]
            self._row_bytes = self._context_bytes + self._window_bytes
            self._window_secs = WINDOW_SAMPLES[rate] / rate
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
        :func:`rows_to_float`, which keeps push_audio cheap. The next row's context is
        this window's tail, as in Silero's reference wrapper.
        """
        row = bytes(self._buffer[: self._row_bytes])
        del self._buffer[: self._window_bytes]
        return row

    def _process_inline(self) -> list[VADEvent]:
        model = SileroVADModel.shared()
        context = CONTEXT_SAMPLES[self._sample_rate]
        events: list[VADEvent] = []
        while len(self._buffer) >= self._row_bytes:
            row = rows_to_float([self._take_row()])
            probs, state = model.infer(row, self._rnn_state[:, None, :], self._sample_rate)
            self._rnn_state = state[:, 0, :]
            event = self._advance(float(probs[0]), window_volumes(row, context)[0])
            if event is not None:
                events.append(event)
        return events

    # -- state machine ---------------------------------------------------------------

    def _advance(self, prob: float, volume: float) -> VADEvent | None:
        """Step the state machine by one window's probability and raw volume."""
        volume = 0.0 if volume < 0.0 else 1.0 if volume > 1.0 else volume
        level = self._volume
        level += (VOLUME_ATTACK if volume > level else VOLUME_RELEASE) * (volume - level)
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
        self._rnn_state = ZERO_STATE
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
