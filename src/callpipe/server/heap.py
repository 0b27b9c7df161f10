"""The process's start-up heap, kept out of the garbage collector's full collections.

A full (generation 2) collection walks every tracked object in the process, and runs on
the event loop's thread, so it stops every call's audio while it runs. At start-up the
process loads its models, the database layer and the migrations: objects that live as
long as the process. :func:`freeze_startup_heap` moves them into the permanent
generation (:func:`gc.freeze`), so full collections walk only what calls create. Measured
with 140 calls (records and recordings on): the longest full collection went from 144 ms
to 73 ms (``docs/benchmarks.md``).
"""

from __future__ import annotations

import gc
import logging

__all__ = ["freeze_startup_heap"]

logger = logging.getLogger("callpipe.server")


def freeze_startup_heap() -> int:
    """Collect once, then freeze what is left; returns the number of objects frozen.

    Call it when start-up is done and before calls arrive (objects frozen later are
    still freed by reference counting, but cycles among them are never collected).
    """
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    logger.debug("froze the start-up heap: %d objects", frozen)
    return frozen
