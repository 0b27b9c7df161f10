"""The store's tables (SQLAlchemy Core). Alembic migrations in ``migrations/`` create them.

Times are UNIX seconds (double precision), the same as in :mod:`callpipe.records.model`.
The whole record is kept as msgspec JSON text in ``calls.record``; the other columns of
``calls`` are copies of the fields the list endpoint filters and pages on.
"""

from __future__ import annotations

import sqlalchemy as sa

__all__ = ["calls", "dial_bucket", "instances", "metadata", "used_tokens", "webhook_outbox"]

metadata = sa.MetaData()

calls = sa.Table(
    "calls",
    metadata,
    sa.Column("call_control_id", sa.String(255), primary_key=True),
    sa.Column("direction", sa.String(16), nullable=False),
    sa.Column("from_number", sa.String(64)),
    sa.Column("to_number", sa.String(64)),
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("ended_at", sa.Float),
    sa.Column("end_reason", sa.String(32), nullable=False),
    sa.Column("instance", sa.String(255)),
    sa.Column("turn_count", sa.Integer, nullable=False, default=0),
    sa.Column("transcript", sa.Text, nullable=False, default=""),  # lower-cased, for ``q``
    sa.Column("record", sa.Text, nullable=False),  # the whole CallRecord as JSON
    sa.Column("recording_path", sa.Text),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Index("ix_calls_started", "started_at", "call_control_id"),
    sa.Index("ix_calls_live", "end_reason", "instance"),
    sa.Index("ix_calls_ended", "ended_at"),
)

instances = sa.Table(
    "instances",
    metadata,
    sa.Column("instance_id", sa.String(255), primary_key=True),
    sa.Column("hostname", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("internal_url", sa.Text),
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("heartbeat_at", sa.Float, nullable=False),
)

dial_bucket = sa.Table(
    "dial_bucket",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("tokens", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)

used_tokens = sa.Table(
    "used_tokens",
    metadata,
    sa.Column("token_id", sa.String(255), primary_key=True),
    sa.Column("expires_at", sa.Float, nullable=False),
    sa.Index("ix_used_tokens_expires", "expires_at"),
)

webhook_outbox = sa.Table(
    "webhook_outbox",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("call_control_id", sa.String(255), nullable=False),
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("payload", sa.Text, nullable=False),  # the record's full JSON, as sent
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("next_attempt_at", sa.Float),  # NULL: gave up after the last attempt
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("last_error", sa.Text),
    sa.Index("ix_outbox_due", "next_attempt_at"),
)
