"""Frames: the units of data and control that flow through a pipeline.

There are three kinds, and the kind decides how a frame is ordered relative to others:

* :class:`SystemFrame` - handled at once wherever it is: it overtakes any queued data
  (start, cancel, interruption, speaking events, input audio, errors, metrics).
* :class:`DataFrame` - content, processed in order (text, transcriptions, output audio).
* :class:`ControlFrame` - in-order control (end of the pipeline, start/stop of a reply).

Frames are small slotted dataclasses: one is created for every 20 ms of audio of every
call, so they carry no per-frame bookkeeping beyond an id.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

_frame_ids = itertools.count(1)


def _next_id() -> int:
    return next(_frame_ids)


@dataclass(slots=True, kw_only=True)
class Frame:
    """Base of every frame. ``id`` is unique within the process."""

    id: int = field(default_factory=_next_id, init=False, repr=False, compare=False)

    # Named here so that it precedes AudioRawFrame.__new__ in every frame's MRO: CPython
    # then keeps the C allocator for frames (no Python-level __new__ per 20 ms frame).
    if not TYPE_CHECKING:  # (to type checkers, frames are made by object.__new__ anyway)
        __new__ = object.__new__

    @property
    def name(self) -> str:
        """The frame's class name followed by its id, for logs."""
        return f"{type(self).__name__}#{self.id}"


@dataclass(slots=True, kw_only=True)
class SystemFrame(Frame):
    """A frame that is handled immediately and overtakes queued data."""


@dataclass(slots=True, kw_only=True)
class DataFrame(Frame):
    """A frame of content, processed in order."""


@dataclass(slots=True, kw_only=True)
class ControlFrame(Frame):
    """An in-order control frame."""


# ------------------------------------------------------------------------ audio


class AudioRawFrame:
    """Raw audio: 16-bit signed little-endian PCM in ``audio``; the base of every audio frame.

    Constructible as in Pipecat: ``AudioRawFrame(audio=pcm, sample_rate=8000,
    num_channels=1)`` (e.g. to feed a serializer) gives an :class:`OutputAudioRawFrame`,
    which is an ``AudioRawFrame``. The class itself stays slot-free (``__slots__ = ()``)
    so the slotted frames deriving from it keep no ``__dict__``.
    """

    __slots__ = ()
    audio: bytes
    sample_rate: int
    num_channels: int

    def __new__(cls, *args: Any, **kwargs: Any) -> AudioRawFrame:
        # Only ever reached for AudioRawFrame itself: Frame's C-level __new__ comes first in
        # every subclass's MRO (see Frame), so audio frames are created at full speed.
        if cls is AudioRawFrame:
            return OutputAudioRawFrame(*args, **kwargs)
        return object.__new__(cls)

    @property
    def num_frames(self) -> int:
        """Samples per channel."""
        return len(self.audio) // (2 * self.num_channels)

    @property
    def duration(self) -> float:
        """Length of the audio in seconds."""
        return self.num_frames / self.sample_rate


@dataclass(slots=True, kw_only=True)
class InputAudioRawFrame(SystemFrame, AudioRawFrame):
    """Audio from the caller, at the pipeline's input sample rate."""

    audio: bytes
    sample_rate: int
    num_channels: int = 1


@dataclass(slots=True, kw_only=True)
class OutputAudioRawFrame(DataFrame, AudioRawFrame):
    """Audio to play to the caller."""

    audio: bytes
    sample_rate: int
    num_channels: int = 1


@dataclass(slots=True, kw_only=True)
class TTSAudioRawFrame(OutputAudioRawFrame):
    """Audio produced by a text-to-speech service."""


@dataclass(slots=True, kw_only=True)
class InputEncodedAudioFrame(SystemFrame):
    """The caller's audio as it came off the wire, undecoded (``FastAPIWebsocketParams.audio_in_passthrough``).

    ``codec`` is the call's encoding name (``PCMU``, ``PCMA``, ``L16``, ``G722``) at
    ``sample_rate``. A speech-to-speech service that speaks the call's codec sends the
    bytes on untouched.
    """

    payload: bytes
    codec: str
    sample_rate: int


@dataclass(slots=True, kw_only=True)
class OutputEncodedAudioFrame(DataFrame):
    """Bot audio already encoded: sent as it is when ``codec``/``sample_rate`` are the call's.

    Otherwise the output transport converts it once. ``item_id`` tags the audio (a model's
    output item): after a barge-in the output reports how much of it played
    (:class:`PlaybackCutFrame`).
    """

    payload: bytes
    codec: str
    sample_rate: int
    item_id: str = ""


@dataclass(slots=True, kw_only=True)
class PlaybackCutFrame(SystemFrame):
    """Upstream from the output after a barge-in: ``played_ms`` of item ``item_id`` had played."""

    item_id: str
    played_ms: int


# ------------------------------------------------------------------------- text


@dataclass(slots=True)
class TextFrame(DataFrame):
    """A piece of text (for example a chunk of an LLM reply); ``TextFrame("hi")`` works."""

    text: str


@dataclass(slots=True)
class LLMTextFrame(TextFrame):
    """Text streamed by an LLM."""


@dataclass(slots=True)
class TTSTextFrame(TextFrame):
    """Text the caller has heard: released by the output transport as its audio plays."""


@dataclass(slots=True)
class TTSSpeakFrame(DataFrame):
    """Ask the text-to-speech service to say ``text`` (bypassing the LLM)."""

    text: str


@dataclass(slots=True)
class TranscriptionFrame(DataFrame):
    """A final transcript of what the caller said."""

    text: str
    user_id: str = ""
    timestamp: str = ""
    language: str | None = None


@dataclass(slots=True)
class InterimTranscriptionFrame(DataFrame):
    """A partial transcript that may still change."""

    text: str
    user_id: str = ""
    timestamp: str = ""
    language: str | None = None


# ---------------------------------------------------------------------- control


@dataclass(slots=True, kw_only=True)
class StartFrame(SystemFrame):
    """The first frame through a pipeline: carries the pipeline-wide settings."""

    audio_in_sample_rate: int = 16000
    audio_out_sample_rate: int = 24000
    allow_interruptions: bool = True
    enable_metrics: bool = True
    enable_usage_metrics: bool = False
    interruption_min_secs: float = 0.0
    interruption_min_words: int = 0


@dataclass(slots=True, kw_only=True)
class EndFrame(ControlFrame):
    """End the pipeline gracefully: queued work (a goodbye being spoken) finishes first."""

    reason: str = ""


@dataclass(slots=True, kw_only=True)
class CancelFrame(SystemFrame):
    """Stop the pipeline at once, dropping queued work (the caller hung up)."""

    reason: str = ""


@dataclass(slots=True, kw_only=True)
class EndTaskFrame(SystemFrame):
    """Pushed upstream by a processor to ask the task to end gracefully."""

    reason: str = ""


@dataclass(slots=True, kw_only=True)
class CancelTaskFrame(SystemFrame):
    """Pushed upstream by a processor to ask the task to cancel."""

    reason: str = ""


@dataclass(slots=True, kw_only=True)
class ErrorFrame(SystemFrame):
    """An error; ``fatal`` errors end the pipeline."""

    error: str
    fatal: bool = False
    processor: str = ""


@dataclass(slots=True, kw_only=True)
class InterruptionFrame(SystemFrame):
    """The caller barged in: drop queued bot audio and cancel in-flight replies."""


# Pipecat's older name for the same frame.
StartInterruptionFrame = InterruptionFrame


@dataclass(slots=True, kw_only=True)
class BotInterruptionFrame(SystemFrame):
    """Pushed upstream to ask the input transport to interrupt the bot."""


@dataclass(slots=True, kw_only=True)
class UserStartedSpeakingFrame(SystemFrame):
    """Voice activity detection: the caller started speaking."""

    emulated: bool = False


@dataclass(slots=True, kw_only=True)
class UserStoppedSpeakingFrame(SystemFrame):
    """Voice activity detection: the caller stopped speaking.

    ``speech_ended_at`` is the monotonic time the caller's speech actually ended
    (the VAD reports it ``stop_secs`` later); response latency is measured from it.
    """

    emulated: bool = False
    speech_ended_at: float = 0.0


@dataclass(slots=True, kw_only=True)
class UserSpeechPausedFrame(SystemFrame):
    """callpipe: the caller has been quiet a moment (the VAD's ``pause_secs``) inside a turn.

    A :class:`UserStoppedSpeakingFrame` follows if the quiet lasts the stop window, a
    :class:`UserSpeechResumedFrame` if speech comes back first. Speech recognizers start
    transcribing speculatively here. ``speech_ended_at`` as in the stop frame.
    """

    speech_ended_at: float = 0.0


@dataclass(slots=True, kw_only=True)
class UserSpeechResumedFrame(SystemFrame):
    """callpipe: speech came back after a :class:`UserSpeechPausedFrame` (not a stop)."""


@dataclass(slots=True, kw_only=True)
class SpeculativeTranscriptionFrame(SystemFrame):
    """callpipe: what the caller probably said, transcribed at a pause before the VAD's stop.

    Only a hint: the turn's real transcript is the :class:`TranscriptionFrame` that
    follows the stop (identical when speech does not resume). Services that can prepare
    the reply without side effects (the scripted LLM) may start on it.
    """

    text: str


@dataclass(slots=True, kw_only=True)
class TTSPrefetchFrame(SystemFrame):
    """callpipe: a sentence the TTS will probably be asked to speak next.

    A TTS may synthesize it ahead and use the audio if the very same sentence comes; if
    it does not, the audio is dropped.
    """

    text: str


@dataclass(slots=True, kw_only=True)
class BotStartedSpeakingFrame(SystemFrame):
    """The bot's audio started playing to the caller."""


@dataclass(slots=True, kw_only=True)
class BotStoppedSpeakingFrame(SystemFrame):
    """The bot's audio finished playing (or was interrupted)."""


@dataclass(slots=True, kw_only=True)
class TTSStartedFrame(ControlFrame):
    """A text-to-speech reply begins."""


@dataclass(slots=True, kw_only=True)
class TTSStoppedFrame(ControlFrame):
    """A text-to-speech reply ends."""


@dataclass(slots=True, kw_only=True)
class LLMFullResponseStartFrame(ControlFrame):
    """An LLM reply begins."""


@dataclass(slots=True, kw_only=True)
class LLMFullResponseEndFrame(ControlFrame):
    """An LLM reply ends."""


# ------------------------------------------------------------------------- DTMF


@dataclass(slots=True, kw_only=True)
class InputDTMFFrame(SystemFrame):
    """The caller pressed a key (``0``-``9``, ``*``, ``#``, ``A``-``D``)."""

    button: str


@dataclass(slots=True, kw_only=True)
class OutputDTMFFrame(DataFrame):
    """Send a key press to the far end."""

    button: str


@dataclass(slots=True, kw_only=True)
class AnsweringMachineDetectionFrame(SystemFrame):
    """Telnyx's answering-machine detection result for the call (from a webhook).

    ``result`` is Telnyx's value, e.g. ``human``, ``machine``, ``not_sure``, or for the
    greeting-end event ``beep_detected``.
    """

    result: str
    event_type: str = ""


# ---------------------------------------------------------------------- metrics


@dataclass(slots=True, kw_only=True)
class MetricsData:
    """One measurement: ``name`` (e.g. ``ttfb``), ``value`` in seconds, who measured it."""

    name: str
    value: float
    processor: str = ""
    model: str | None = None


@dataclass(slots=True, kw_only=True)
class MetricsFrame(SystemFrame):
    """Measurements for the current turn (time-to-first-byte, voice-to-voice latency)."""

    data: list[MetricsData] = field(default_factory=list)


# ------------------------------------------------------------------- transport


@dataclass(slots=True, kw_only=True)
class TransportMessageFrame(DataFrame):
    """A raw message for the transport to send as is (JSON-serialisable)."""

    message: Any
