"""Pipecat's ``pipecat.frames.frames``: the same names as :mod:`callpipe.frames` (re-export)."""

from callpipe.frames import *  # noqa: F403
from callpipe.frames import __all__ as _names

__all__ = list(_names)
