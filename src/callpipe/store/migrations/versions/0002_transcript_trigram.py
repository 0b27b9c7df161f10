"""PostgreSQL: a trigram index on calls.transcript, so ``q`` search stays fast at scale.

Needs the ``pg_trgm`` extension (trusted since PostgreSQL 13: a database owner may create
it). Where it cannot be created the index is skipped, logged, and search still works
(a scan). SQLite: nothing (one host's records scan quickly).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

import logging

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

logger = logging.getLogger("callpipe.store")


def upgrade() -> None:
    """Create pg_trgm and the GIN index when possible (inside a savepoint)."""
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    savepoint = bind.begin_nested()
    try:
        bind.execute(sa.text("CREATE EXTENSION IF NOT EXISTS pg_trgm"))
        bind.execute(
            sa.text(
                "CREATE INDEX IF NOT EXISTS ix_calls_transcript_trgm ON calls USING gin (transcript gin_trgm_ops)"
            )
        )
        savepoint.commit()
    except sa.exc.DBAPIError as exc:
        savepoint.rollback()
        logger.warning("call store: no trigram index for transcript search (%s)", str(exc).splitlines()[0])


def downgrade() -> None:
    """Drop the index (the extension may serve others: it stays)."""
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP INDEX IF EXISTS ix_calls_transcript_trgm")
