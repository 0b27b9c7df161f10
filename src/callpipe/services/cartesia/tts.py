"""Pipecat's ``pipecat.services.cartesia.tts`` (re-export of :mod:`callpipe.services.cartesia`)."""

from callpipe.services.cartesia import CartesiaTTSService

__all__ = ["CartesiaTTSService"]
