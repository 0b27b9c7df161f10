"""Pipecat's ``pipecat.serializers`` paths; the serializer lives in :mod:`callpipe.transports.serializers`."""

__all__: list[str] = []
