"""Pipecat's ``pipecat.runner.utils`` (re-export of :mod:`callpipe.runner`)."""

from callpipe.runner import create_telnyx_transport, create_transport, parse_telephony_websocket

__all__ = ["create_telnyx_transport", "create_transport", "parse_telephony_websocket"]
