"""Single use: stream tokens, ``/answer`` URLs, signed TeXML requests and webhook event ids.

Everything that must work at most once is *claimed* under a key until it would expire
anyway (a token's expiry, a signature's timestamp plus the tolerance). With a call store
(``ServerState.store``, shared by every instance on one database) the claim is the store's
``claim_token``, so a key used on one instance is refused on all; without one, or while
the store fails, a bounded per-process set holds the claims (single use per process).
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import logging
import time
from typing import Any

__all__ = ["ReplayGuard", "SeenSet"]

logger = logging.getLogger("callpipe.server")

# A claim on the store that takes longer than this falls back to the per-process set: a
# slow database delays a stream's start by at most this much, never every call's audio.
STORE_CLAIM_TIMEOUT_SECS = 2.0
MAX_KEY_CHARS = 200


class SeenSet:
    """Keys seen until their expiry, at most ``max_entries`` of them (pure, no I/O).

    Only authenticated traffic adds keys (tokens this server signed, requests Telnyx
    signed), so the bound is about memory, not an attacker's reach. When full, expired
    keys go first, then the ones expiring soonest.
    """

    def __init__(self, max_entries: int = 100_000) -> None:
        self.max_entries = max_entries
        self._expiry: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self._expiry)

    def claim(self, key: str, expires_at: float, *, now: float | None = None) -> bool:
        """``True`` the first time ``key`` is claimed (until ``expires_at``), ``False`` after."""
        current = time.time() if now is None else now
        self._evict(current)
        known = self._expiry.get(key)
        if known is not None and known >= current:
            return False
        while len(self._expiry) >= self.max_entries and self._heap:
            self._pop()
        self._expiry[key] = expires_at
        heapq.heappush(self._heap, (expires_at, key))
        return True

    def _evict(self, now: float) -> None:
        while self._heap and self._heap[0][0] < now:
            self._pop()

    def _pop(self) -> None:
        expires_at, key = heapq.heappop(self._heap)
        if self._expiry.get(key) == expires_at:
            del self._expiry[key]


class ReplayGuard:
    """Claims keys once, across instances through the call store when there is one."""

    def __init__(self, max_entries: int = 100_000) -> None:
        self.local = SeenSet(max_entries)
        self._warned = False

    async def claim(self, key: str, expires_at: float, store: Any | None = None) -> bool:
        """Whether ``key`` was unused (and is now used) until ``expires_at``."""
        if len(key) > MAX_KEY_CHARS:  # the store's column holds 255; long keys go by digest
            key = f"{key[:8]}#{hashlib.sha256(key.encode()).hexdigest()}"
        if store is not None:
            try:
                claimed = await asyncio.wait_for(store.claim_token(key, expires_at), STORE_CLAIM_TIMEOUT_SECS)
            except Exception as exc:  # the store is down or slow: degrade to this process
                if not self._warned:
                    logger.warning("single-use check fell back to this process: %s", type(exc).__name__)
                    self._warned = True
            else:
                self.local.claim(key, expires_at)
                return bool(claimed)
        return self.local.claim(key, expires_at)
