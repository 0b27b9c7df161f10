"""The post-call webhook: each finished record's JSON, POSTed, signed, from a durable outbox.

The outbox row is written in the same transaction as the record's final state, so a
webhook is never lost to a crash between the two. A delivery task sends due rows and
retries failures with exponential backoff (``base * 2**attempts``, capped) up to
``max_attempts``; the rows survive a restart, and any instance on the database may
deliver them (a row is leased by moving its ``next_attempt_at`` before sending).

Signature header (verify it with :func:`verify_signature`)::

    Callpipe-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, f"{t}.{body}")>
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import time
from dataclasses import dataclass
from typing import Any

import httpx
import msgspec
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from callpipe.records.model import CallRecord
from callpipe.store.schema import webhook_outbox

__all__ = [
    "SIGNATURE_HEADER",
    "WebhookConfig",
    "WebhookDeliverer",
    "outbox_rows",
    "sign",
    "verify_signature",
]

logger = logging.getLogger("callpipe.store")

SIGNATURE_HEADER = "Callpipe-Signature"


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The ``Callpipe-Signature`` header value for ``body``."""
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def verify_signature(secret: str, body: bytes, header: str | None, *, tolerance_secs: float = 300) -> bool:
    """Whether ``header`` is a valid signature of ``body`` made within ``tolerance_secs``.

    For receivers: pass the raw request body (before any JSON parsing) and the
    ``Callpipe-Signature`` header. Rejects stale timestamps, so a captured request cannot
    be replayed later.
    """
    if not header:
        return False
    parts = dict(item.partition("=")[::2] for item in header.split(","))
    try:
        t = int(parts.get("t", ""))
    except ValueError:
        return False
    if abs(time.time() - t) > tolerance_secs:
        return False
    expected = sign(secret, body, t).partition(",v1=")[2]
    return hmac.compare_digest(expected, parts.get("v1", ""))


@dataclass(kw_only=True)
class WebhookConfig:
    """Where finished records go and how hard to try."""

    url: str
    secret: str
    max_attempts: int = 8
    backoff_base_secs: float = 2.0
    backoff_max_secs: float = 600.0
    timeout_secs: float = 10.0


def outbox_rows(config: WebhookConfig, finals: list[CallRecord], now: float) -> list[dict[str, Any]]:
    """The outbox rows for finished records (their full API JSON, as it will be sent)."""
    return [
        {
            "call_control_id": record.call_control_id,
            "url": config.url,
            "payload": msgspec.json.encode(record.to_json(full=True)).decode(),
            "attempts": 0,
            "next_attempt_at": now,
            "created_at": now,
            "last_error": None,
        }
        for record in finals
    ]


class WebhookDeliverer:
    """Sends due outbox rows; one task per store. ``wake()`` after new rows are committed."""

    def __init__(self, engine: AsyncEngine, config: WebhookConfig, *, poll_secs: float = 5.0) -> None:
        self._engine = engine
        self.config = config
        self._poll_secs = poll_secs
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._client = httpx.AsyncClient(timeout=config.timeout_secs)
        self.delivered = 0

    def start(self) -> None:
        """Start the delivery task."""
        self._task = asyncio.create_task(self._run(), name="callpipe-webhooks")

    def wake(self) -> None:
        """New rows were committed: look now rather than at the next poll."""
        self._wake.set()

    async def close(self) -> None:
        """Stop delivering (undelivered rows stay in the outbox for the next start)."""
        self._stop.set()
        self._wake.set()
        if self._task is not None:
            await self._task
        await self._client.aclose()

    async def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()  # before reading: a wake during the read is not lost
            try:
                delay = await self.deliver_due()
            except Exception as exc:  # the database is down: try again later
                logger.warning("webhooks: cannot read the outbox (%s)", type(exc).__name__)
                delay = self._poll_secs
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    async def deliver_due(self) -> float:
        """Send every due row once; the seconds until the next row is due (or the poll)."""
        now = time.time()
        async with self._engine.connect() as conn:
            rows = (
                await conn.execute(
                    sa.select(webhook_outbox)
                    .where(webhook_outbox.c.next_attempt_at <= now)
                    .order_by(webhook_outbox.c.next_attempt_at)
                    .limit(50)
                )
            ).all()
        for row in rows:
            if self._stop.is_set():
                break
            if await self._lease(row.id, row.next_attempt_at):
                await self._send(row.id, row.call_control_id, row.url, row.payload, row.attempts)
        async with self._engine.connect() as conn:
            next_due = (
                await conn.execute(sa.select(sa.func.min(webhook_outbox.c.next_attempt_at)))
            ).scalar_one_or_none()
        if next_due is None:
            return self._poll_secs
        return max(0.0, min(self._poll_secs, float(next_due) - time.time()))

    async def _lease(self, row_id: int, due: float) -> bool:
        # Move next_attempt_at past the send's timeout: another instance polling now skips it.
        lease_until = time.time() + self.config.timeout_secs + 5
        async with self._engine.begin() as conn:
            result = await conn.execute(
                webhook_outbox.update()
                .where(webhook_outbox.c.id == row_id, webhook_outbox.c.next_attempt_at == due)
                .values(next_attempt_at=lease_until)
            )
        return bool(result.rowcount)

    async def _send(self, row_id: int, ccid: str, url: str, payload: str, attempts: int) -> None:
        body = payload.encode()
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(self.config.secret, body)}
        error: str | None = None
        try:
            response = await self._client.post(url, content=body, headers=headers)
            if response.status_code >= 300:
                error = f"HTTP {response.status_code}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:300]
        async with self._engine.begin() as conn:
            if error is None:
                await conn.execute(webhook_outbox.delete().where(webhook_outbox.c.id == row_id))
                self.delivered += 1
                return
            attempts += 1
            if attempts >= self.config.max_attempts:
                next_at = None
                logger.error("webhooks: giving up on call %s after %d attempts (%s)", ccid, attempts, error)
            else:
                backoff = min(
                    self.config.backoff_max_secs, self.config.backoff_base_secs * 2 ** (attempts - 1)
                )
                next_at = time.time() + backoff
                logger.warning(
                    "webhooks: delivery for call %s failed (%s); retry %d in %.1fs",
                    ccid,
                    error,
                    attempts,
                    backoff,
                )
            await conn.execute(
                webhook_outbox.update()
                .where(webhook_outbox.c.id == row_id)
                .values(attempts=attempts, next_attempt_at=next_at, last_error=error)
            )
