"""Pipecat's ``pipecat.audio.vad.silero`` (re-export of :mod:`callpipe.audio.vad`)."""

from callpipe.audio.vad import SileroVADAnalyzer, VADParams

__all__ = ["SileroVADAnalyzer", "VADParams"]
