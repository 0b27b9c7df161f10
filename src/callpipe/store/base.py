"""What the rest of callpipe may ask of the call store (implemented in SQL elsewhere here)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from callpipe.records.model import CallRecord
from callpipe.records.sink import RecordSink

__all__ = ["CallFilter", "CallPage", "CallStore"]


@dataclass(kw_only=True)
class CallFilter:
    """Filters of ``GET /api/calls`` (all optional; combined with AND)."""

    direction: str | None = None
    number: str | None = None  # matches from or to
    since: float | None = None  # started_at >= since (UNIX seconds)
    until: float | None = None  # started_at < until
    end_reason: str | None = None
    text: str | None = None  # substring of any turn's text, case-insensitive
    limit: int = 50
    cursor: str | None = None


@dataclass(kw_only=True)
class CallPage:
    """One page of calls, newest first, and the cursor of the next page (``None`` at the end)."""

    calls: list[CallRecord]
    next_cursor: str | None


class CallStore(Protocol):
    """Durable call records plus cross-instance coordination, over one database.

    ``sink`` is the non-blocking :class:`RecordSink` observers write through (batched,
    bounded, off the audio path). Everything else is async and may be slow: callers on
    the audio path must not await it.
    """

    instance_id: str

    @property
    def sink(self) -> RecordSink:
        """The batched writer live calls touch their records through."""
        ...

    def set_internal_url(self, url: str | None) -> None:
        """Where other instances reach this one's control listener (``owner_of`` answers it)."""

    async def start(self) -> None:
        """Connect, run migrations, register this instance, start the writer and heartbeat."""

    async def close(self) -> None:
        """Flush every pending record, deregister, and disconnect."""

    async def get_call(self, call_control_id: str) -> CallRecord | None:
        """One whole record (turns and events), or ``None``."""
        ...

    async def list_calls(self, flt: CallFilter) -> CallPage:
        """Records (newest first) matching ``flt``; turns and events may be left empty."""
        ...

    async def owner_of(self, call_control_id: str) -> str | None:
        """The internal base URL of the live instance holding this call, or ``None``."""
        ...

    async def instance_url(self, instance_id: str) -> str | None:
        """The internal base URL of a live instance (by id), or ``None`` (gone, or no URL)."""
        ...

    async def take_dial_slot(self, rate_per_sec: float) -> bool:
        """One dial-out under a token bucket shared by every instance on this database."""
        ...

    async def claim_token(self, token_id: str, expires_at: float) -> bool:
        """Mark a single-use token as used; ``False`` if it was already used (any instance)."""
        ...
