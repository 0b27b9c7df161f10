"""The process's start-up heap, kept out of the garbage collector's full collections.

A full (generation 2) collection walks every tracked object in the process, and runs on
the event loop's thread, so it stops every call's audio while it runs. At start-up the
process loads its models, the database layer and the migrations: objects that live as
long as the process. :func:`freeze_startup_heap` moves them into the permanent
generation (:func:`gc.freeze`), so full collections walk only what calls create. Measured
with 140 calls (records and recordings on): the longest full collection went from 144 ms
to 73 ms (``docs/benchmarks.md``).

What is left still costs: at 240 calls a full collection walks some 85,000 objects spread
over a large heap and takes 40-90 ms (the output's lead is 80 ms), while it finds almost
nothing, because a finished call is freed by reference counting (``PipelineTask`` unlinks
it). :func:`space_full_collections` therefore lets CPython consider a full collection
after 100 collections of the middle generation instead of 10: at 240 calls there were two
a minute, and none in 86 s after. The young generations are collected as before, and
what a full collection would find (the web server's own per-connection cycles) waits
longer, about ten times as much of it.
"""

from __future__ import annotations

import gc
import logging

__all__ = ["FULL_COLLECTION_AFTER", "freeze_startup_heap", "space_full_collections"]

logger = logging.getLogger("callpipe.server")

# Collections of the middle generation before a full one is considered (CPython: 10).
FULL_COLLECTION_AFTER = 100


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


def space_full_collections() -> None:
    """Consider a full collection only after :data:`FULL_COLLECTION_AFTER` collections of
    the middle generation (the two young generations keep their thresholds)."""
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, FULL_COLLECTION_AFTER)
