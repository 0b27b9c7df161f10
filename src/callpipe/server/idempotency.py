"""``Idempotency-Key`` on ``POST /start``: a client's retry never places a second call.

A client that timed out waiting for ``/start`` cannot know whether the call was placed;
retrying with the same ``Idempotency-Key`` gets the first attempt's answer (waiting for it
if it is still running) instead of dialling again. The same key with a different request
is a client bug: 409. Answers are remembered for ``IDEMPOTENCY_TTL_SECS`` (at most
``max_entries`` of them, oldest dropped first) in this process. Behind a load balancer a
retry may land on another instance: there the key's claim in the shared call store
(made just before dialling, see ``endpoints.claim_idempotency_key``) answers 409 instead
of placing a second call; the first answer itself is only replayed by the instance that
holds it.

Only answers that may have placed a call are remembered (200, and 502 - Telnyx may have
placed it before failing); a refusal that placed nothing (429, 503) lets the retry try
again.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgspec

__all__ = ["IdempotencyCache", "IdempotencyConflict", "check_key", "request_digest"]

Answer = tuple[int, dict[str, Any]]
_REMEMBERED = frozenset({200, 502})
MAX_KEY_LENGTH = 255


class IdempotencyConflict(ValueError):
    """The key was used before for a different request."""


def check_key(key: str) -> str:
    """The key if it is 1-255 printable ASCII characters; ValueError otherwise."""
    if not 0 < len(key) <= MAX_KEY_LENGTH or not all(33 <= ord(c) < 127 for c in key):
        raise ValueError(f"Idempotency-Key must be 1-{MAX_KEY_LENGTH} printable ASCII characters")
    return key


def request_digest(number: str, body: dict[str, Any]) -> str:
    """What makes two ``/start`` requests the same: the number and the body, key order aside."""
    canonical = msgspec.json.encode({"phone_number": number, "body": body}, order="sorted")
    return hashlib.sha256(canonical).hexdigest()


@dataclass(slots=True)
class _Entry:
    digest: str
    expires_at: float
    answer: asyncio.Future[Answer]


class IdempotencyCache:
    """Per-process memory of ``/start`` answers by key (see the module docstring)."""

    def __init__(self, ttl_secs: float, max_entries: int = 10_000) -> None:
        self.ttl_secs = ttl_secs
        self.max_entries = max_entries
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    async def run(self, key: str, digest: str, place: Callable[[], Awaitable[Answer]]) -> tuple[Answer, bool]:
        """``(answer, replayed)``: the first answer for ``key``, or ``place()``'s if it is new."""
        now = time.monotonic()
        self._evict(now)
        entry = self._entries.get(key)
        if entry is not None:
            if entry.digest != digest:
                raise IdempotencyConflict("this Idempotency-Key was used for a different request")
            return await asyncio.shield(entry.answer), True
        while len(self._entries) >= self.max_entries:
            self._entries.popitem(last=False)
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._entries[key] = _Entry(digest, now + self.ttl_secs, future)
        try:
            answer = await place()
        except BaseException as exc:
            self._forget(key, future)
            future.set_exception(exc if isinstance(exc, Exception) else RuntimeError("request cancelled"))
            future.exception()  # retrieved: no "never retrieved" warning when nobody waited
            raise
        if answer[0] not in _REMEMBERED:
            self._forget(key, future)
        future.set_result(answer)
        return answer, False

    def _forget(self, key: str, future: asyncio.Future[Answer]) -> None:
        entry = self._entries.get(key)
        if entry is not None and entry.answer is future:
            del self._entries[key]

    def _evict(self, now: float) -> None:
        # Entries are in insertion order with one TTL, so the expired ones are at the front.
        while self._entries:
            first = next(iter(self._entries.values()))
            if first.expires_at > now or not first.answer.done():
                break
            self._entries.popitem(last=False)
