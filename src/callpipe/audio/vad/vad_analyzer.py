"""Pipecat's ``pipecat.audio.vad.vad_analyzer`` (re-export of :mod:`callpipe.audio.vad`)."""

from callpipe.audio.vad import VADParams, VADState

__all__ = ["VADParams", "VADState"]
