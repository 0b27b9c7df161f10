"""Pipecat's ``pipecat.services.deepgram.stt`` (re-export of :mod:`callpipe.services.deepgram`)."""

from callpipe.services.deepgram import DeepgramSTTService

__all__ = ["DeepgramSTTService"]
