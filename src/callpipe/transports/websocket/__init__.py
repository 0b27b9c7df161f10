"""Pipecat's ``pipecat.transports.websocket`` paths; the transport lives in :mod:`callpipe.transports.fastapi`."""

__all__: list[str] = []
