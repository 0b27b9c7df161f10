"""Pipecat's ``pipecat.transports.base_transport``: :class:`BaseTransport`, the type bots annotate with.

``async def run_bot(transport: BaseTransport, ...)`` is how Pipecat's examples take their
transport; :class:`~callpipe.transports.fastapi.FastAPIWebsocketTransport` is one.
"""

from __future__ import annotations

from callpipe.pipeline.processor import EventHandlerMixin, FrameProcessor

__all__ = ["BaseTransport"]


class BaseTransport(EventHandlerMixin):
    """A transport: an :meth:`input` processor (first in the pipeline), an :meth:`output` one, events."""

    def input(self) -> FrameProcessor:
        """The processor that brings the call's frames into the pipeline."""
        raise NotImplementedError

    def output(self) -> FrameProcessor:
        """The processor that sends the pipeline's frames to the call."""
        raise NotImplementedError
