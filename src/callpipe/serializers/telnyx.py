"""Pipecat's ``pipecat.serializers.telnyx`` (re-export of :mod:`callpipe.transports.serializers`)."""

from callpipe.transports.serializers import TelnyxFrameSerializer

__all__ = ["TelnyxFrameSerializer"]
