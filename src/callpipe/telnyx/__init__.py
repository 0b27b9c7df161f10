"""Telnyx: the media-stream wire protocol (sans-I/O), REST client and webhook verification.

:class:`TelnyxFrameSerializer` lives with the transports (it turns pipeline frames into
wire messages) and is re-exported here lazily, so ``from callpipe.telnyx import
TelnyxFrameSerializer`` works as in Pipecat's guide while this package stays free of
pipeline imports.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from callpipe.telnyx.protocol import ProtocolError, parse_event

if TYPE_CHECKING:
    from callpipe.transports.serializers import TelnyxFrameSerializer, TelnyxSerializerParams

__all__ = ["ProtocolError", "TelnyxFrameSerializer", "TelnyxSerializerParams", "parse_event"]


def __getattr__(name: str) -> Any:
    if name in ("TelnyxFrameSerializer", "TelnyxSerializerParams"):
        from callpipe.transports import serializers

        return getattr(serializers, name)
    raise AttributeError(f"module 'callpipe.telnyx' has no attribute {name!r}")
