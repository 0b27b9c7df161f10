"""Pipecat's ``pipecat.transports.websocket.fastapi`` (re-export of :mod:`callpipe.transports.fastapi`)."""

from callpipe.transports.fastapi import FastAPIWebsocketParams, FastAPIWebsocketTransport

__all__ = ["FastAPIWebsocketParams", "FastAPIWebsocketTransport"]
