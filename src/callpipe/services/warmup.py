"""Model warm-up before the first call: a process-wide registry and a "models warm" flag.

Every embedded model (the VAD, Whisper, Piper) must be loaded *and run once* before a
call depends on it: a model's first inference is slower than the rest (allocations,
kernel selection), and a load inside a call blocks it for a second or more. Models
register a warm-up here - the VAD always, Whisper and Piper when their module is
imported (a bot that imports them uses them) or a service is constructed with other
settings, the built-in assistant for the providers it will choose - and the server runs
every pending warm-up in a thread when it starts (:func:`warm_up_models`), so the event
loop keeps answering ``/livez`` meanwhile.

Readiness: :func:`models_warm` is true once every registered warm-up has run;
:class:`~callpipe.server.app.ServerState` mirrors it as ``models_warm`` and
``/ws`` waits for it (running what is still pending) before it starts a bot.
A warm-up that fails is logged and counted as done (the call path then reports the real
error, e.g. a missing ``callpipe[local]``), so one broken optional model cannot keep a
server unready forever.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

logger = logging.getLogger("callpipe.services")

_lock = threading.Lock()
_warmers: dict[str, Callable[[], None]] = {}
_done: set[str] = set()
_running: set[str] = set()
_changed = threading.Condition(_lock)


def register(key: str, warm: Callable[[], None]) -> None:
    """Register ``warm`` (blocking: load the model and run it once) under ``key``, once."""
    with _lock:
        if key not in _warmers:
            _warmers[key] = warm


def pending() -> list[str]:
    """Keys of registered warm-ups that have not run yet."""
    with _lock:
        return [key for key in _warmers if key not in _done]


def models_warm() -> bool:
    """Whether every registered model has been loaded and run once."""
    return not pending()


def warm_up_models() -> dict[str, float]:
    """Run every pending warm-up in this thread (blocking); seconds each took.

    Warm-ups another thread is running are not run twice: this call waits for them, so
    when it returns every registered model is warm (or its warm-up failed, logged).
    """
    timings: dict[str, float] = {}
    while True:
        with _lock:
            todo = [(key, fn) for key, fn in _warmers.items() if key not in _done and key not in _running]
            _running.update(key for key, _ in todo)
            if not todo:
                while any(key not in _done for key in _warmers):
                    _changed.wait()
                return timings
        for key, fn in todo:
            started = time.monotonic()
            try:
                fn()
            except Exception as exc:
                logger.warning("warm-up of %s failed: %s", key, exc)
            timings[key] = time.monotonic() - started
            with _lock:
                _done.add(key)
                _running.discard(key)
                _changed.notify_all()
            logger.info("model %s warm in %.2fs", key, timings[key])


def _warm_vad() -> None:
    import numpy as np

    from callpipe.audio.vad import SileroVADAnalyzer

    # Load the shared model and run one window at each rate: both shapes are then warm.
    for rate in (8000, 16000):
        analyzer = SileroVADAnalyzer(sample_rate=rate)
        analyzer.analyze(np.zeros(rate // 10, dtype=np.int16).tobytes())


register("vad:silero", _warm_vad)
