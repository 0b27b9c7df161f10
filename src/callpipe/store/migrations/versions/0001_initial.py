"""The first schema: calls, instances, dial_bucket, used_tokens, webhook_outbox.

Revision ID: 0001
Revises:
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create every table (frozen here: later changes get their own revision)."""
    op.create_table(
        "calls",
        sa.Column("call_control_id", sa.String(255), primary_key=True),
        sa.Column("direction", sa.String(16), nullable=False),
        sa.Column("from_number", sa.String(64)),
        sa.Column("to_number", sa.String(64)),
        sa.Column("started_at", sa.Float, nullable=False),
        sa.Column("ended_at", sa.Float),
        sa.Column("end_reason", sa.String(32), nullable=False),
        sa.Column("instance", sa.String(255)),
        sa.Column("turn_count", sa.Integer, nullable=False),
        sa.Column("transcript", sa.Text, nullable=False),
        sa.Column("record", sa.Text, nullable=False),
        sa.Column("recording_path", sa.Text),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_index("ix_calls_started", "calls", ["started_at", "call_control_id"])
    op.create_index("ix_calls_live", "calls", ["end_reason", "instance"])
    op.create_index("ix_calls_ended", "calls", ["ended_at"])
    op.create_table(
        "instances",
        sa.Column("instance_id", sa.String(255), primary_key=True),
        sa.Column("hostname", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("internal_url", sa.Text),
        sa.Column("started_at", sa.Float, nullable=False),
        sa.Column("heartbeat_at", sa.Float, nullable=False),
    )
    bucket = op.create_table(
        "dial_bucket",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("tokens", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.bulk_insert(bucket, [{"name": "dial", "tokens": 0.0, "updated_at": 0.0}])
    op.create_table(
        "used_tokens",
        sa.Column("token_id", sa.String(255), primary_key=True),
        sa.Column("expires_at", sa.Float, nullable=False),
    )
    op.create_index("ix_used_tokens_expires", "used_tokens", ["expires_at"])
    op.create_table(
        "webhook_outbox",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("call_control_id", sa.String(255), nullable=False),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", sa.Float),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("last_error", sa.Text),
    )
    op.create_index("ix_outbox_due", "webhook_outbox", ["next_attempt_at"])


def downgrade() -> None:
    """Drop every table."""
    for table in ("webhook_outbox", "used_tokens", "dial_bucket", "instances", "calls"):
        op.drop_table(table)
