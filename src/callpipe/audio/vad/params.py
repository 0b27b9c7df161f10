"""The VAD's value types: its tuning parameters, its state machine's states and its events."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Literal

__all__ = ["VADEvent", "VADParams", "VADState"]


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
