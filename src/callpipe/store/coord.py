"""What instances sharing one database coordinate by: liveness, call ownership, dial rate, tokens.

Each process registers a row in ``instances`` and refreshes its ``heartbeat_at``. A call
whose record is ``in_progress`` under an instance that stopped heartbeating (or whose
process is gone, for instances on this host) is swept to ``end_reason="process_died"``.
"""

from __future__ import annotations

import logging
import os
import socket
import time

import msgspec
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from callpipe.records.model import IN_PROGRESS, CallRecord
from callpipe.store.schema import calls, dial_bucket, instances, used_tokens

__all__ = [
    "claim_token",
    "deregister",
    "heartbeat",
    "new_instance_id",
    "owner_of",
    "purge_tokens",
    "sweep_dead",
    "take_dial_slot",
]

logger = logging.getLogger("callpipe.store")


def new_instance_id() -> str:
    """``hostname-pid-random``: a new id for every process start."""
    return f"{socket.gethostname()}-{os.getpid()}-{os.urandom(3).hex()}"


def host_key() -> str:
    """This host *and* PID namespace: where our pids mean the same processes as theirs.

    Containers with host networking share the hostname but not the pids; an instance
    in another PID namespace must never be judged dead by its pid.
    """
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:  # no /proc (macOS): one namespace per host
        namespace = ""
    return f"{socket.gethostname()} {namespace}".strip()


async def heartbeat(
    engine: AsyncEngine, instance_id: str, internal_url: str | None, started_at: float
) -> None:
    """Register or refresh this instance's row (with its internal URL)."""
    now = time.time()
    async with engine.begin() as conn:
        result = await conn.execute(
            instances.update()
            .where(instances.c.instance_id == instance_id)
            .values(heartbeat_at=now, internal_url=internal_url)
        )
        if result.rowcount == 0:
            await conn.execute(
                instances.insert().values(
                    instance_id=instance_id,
                    hostname=host_key(),
                    pid=os.getpid(),
                    internal_url=internal_url,
                    started_at=started_at,
                    heartbeat_at=now,
                )
            )


async def deregister(engine: AsyncEngine, instance_id: str) -> None:
    """Remove this instance's row (a clean stop)."""
    async with engine.begin() as conn:
        await conn.execute(instances.delete().where(instances.c.instance_id == instance_id))


def _pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists but not ours (EPERM)
        return False
    return False


async def _instances(engine: AsyncEngine, stale_after: float) -> tuple[set[str], dict[str, float]]:
    """The live instances (heartbeat within ``stale_after`` s and, on this host, pid alive),
    and every registered instance's last heartbeat."""
    cutoff = time.time() - stale_after
    host = host_key()
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                sa.select(
                    instances.c.instance_id, instances.c.hostname, instances.c.pid, instances.c.heartbeat_at
                )
            )
        ).all()
    live = set()
    for instance_id, hostname, pid, heartbeat_at in rows:
        if heartbeat_at < cutoff:
            continue
        if hostname == host and pid != os.getpid() and _pid_gone(pid):
            continue  # killed on this host: no need to wait for its heartbeat to go stale
        live.add(instance_id)
    return live, {row.instance_id: row.heartbeat_at for row in rows}


async def sweep_dead(engine: AsyncEngine, stale_after: float) -> list[str]:
    """Mark in-progress calls of dead instances ``process_died``.

    They end at the later of their last write and their instance's last heartbeat: the
    process was alive then, and a quiet call (a long greeting) writes nothing for a while.
    """
    live, heartbeats = await _instances(engine, stale_after)
    query = sa.select(calls.c.call_control_id, calls.c.instance, calls.c.record, calls.c.updated_at).where(
        calls.c.end_reason == IN_PROGRESS, sa.or_(calls.c.instance.is_(None), calls.c.instance.not_in(live))
    )
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    swept = []
    for ccid, instance, raw, updated_at in rows:
        record = msgspec.json.decode(raw, type=CallRecord)
        record.end_reason = "process_died"
        record.ended_at = max(record.started_at, updated_at, heartbeats.get(instance or "", 0.0))
        async with engine.begin() as conn:
            result = await conn.execute(
                calls.update()
                .where(
                    calls.c.call_control_id == ccid,
                    calls.c.end_reason == IN_PROGRESS,
                    calls.c.updated_at == updated_at,
                )
                .values(
                    end_reason="process_died",
                    ended_at=record.ended_at,
                    record=msgspec.json.encode(record).decode(),
                )
            )
        if result.rowcount:
            swept.append(ccid)
    if swept:
        logger.warning("records: %d call(s) of a stopped instance marked process_died", len(swept))
    # Rows of long-dead instances are of no use to anyone.
    async with engine.begin() as conn:
        await conn.execute(instances.delete().where(instances.c.heartbeat_at < time.time() - 3600))
    return swept


async def owner_of(engine: AsyncEngine, call_control_id: str, stale_after: float) -> str | None:
    """The internal URL of the live instance holding the in-progress call, or ``None``."""
    query = (
        sa.select(instances.c.internal_url)
        .select_from(calls.join(instances, calls.c.instance == instances.c.instance_id))
        .where(
            calls.c.call_control_id == call_control_id,
            calls.c.end_reason == IN_PROGRESS,
            instances.c.heartbeat_at >= time.time() - stale_after,
        )
    )
    async with engine.connect() as conn:
        url = (await conn.execute(query)).scalar_one_or_none()
    return str(url) if url else None


async def instance_url(engine: AsyncEngine, instance_id: str, stale_after: float) -> str | None:
    """The internal URL of ``instance_id`` if it is alive (heartbeat within ``stale_after`` s)."""
    query = sa.select(instances.c.internal_url).where(
        instances.c.instance_id == instance_id, instances.c.heartbeat_at >= time.time() - stale_after
    )
    async with engine.connect() as conn:
        url = (await conn.execute(query)).scalar_one_or_none()
    return str(url) if url else None


async def take_dial_slot(engine: AsyncEngine, rate_per_sec: float, name: str = "dial") -> bool:
    """Take one token from the shared bucket (refill ``rate``/s, capacity ``max(1, rate)``).

    One conditional ``UPDATE``: both SQLite (one writer at a time) and PostgreSQL (row lock,
    and the condition re-checked against the row as committed by a concurrent updater)
    make it atomic, so no instance can spend a token another one already spent.
    """
    if rate_per_sec <= 0:
        return False
    now = time.time()
    capacity = max(1.0, rate_per_sec)
    elapsed = sa.case((dial_bucket.c.updated_at < now, now - dial_bucket.c.updated_at), else_=0.0)
    refilled = dial_bucket.c.tokens + elapsed * rate_per_sec
    available = sa.case((refilled > capacity, capacity), else_=refilled)
    async with engine.begin() as conn:
        result = await conn.execute(
            dial_bucket.update()
            .where(dial_bucket.c.name == name, available >= 1.0)
            .values(tokens=available - 1.0, updated_at=now)
        )
        if result.rowcount == 0:
            exists = await conn.execute(sa.select(dial_bucket.c.name).where(dial_bucket.c.name == name))
            if exists.first() is None:
                await conn.execute(
                    dial_bucket.insert().values(name=name, tokens=capacity - 1.0, updated_at=now)
                )
                return True
            return False
    return True


async def claim_token(engine: AsyncEngine, token_id: str, expires_at: float) -> bool:
    """Insert ``token_id``; ``False`` if any instance inserted it before."""
    try:
        async with engine.begin() as conn:
            await conn.execute(used_tokens.insert().values(token_id=token_id, expires_at=expires_at))
    except IntegrityError:
        return False
    return True


async def purge_tokens(engine: AsyncEngine) -> int:
    """Delete used tokens past their expiry (they can no longer be presented anyway)."""
    async with engine.begin() as conn:
        result = await conn.execute(used_tokens.delete().where(used_tokens.c.expires_at < time.time()))
    return int(result.rowcount or 0)
