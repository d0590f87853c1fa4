"""Webhooks: a task's callback URL, and the outbox of deliveries written with final statuses.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("imageproc_tasks", sa.Column("callback_url", sa.Text, nullable=True))
    op.create_table(
        "imageproc_webhooks",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("task_id", sa.String(64), nullable=False),
        sa.Column("owner", sa.String(255), nullable=True),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("last_status_code", sa.Integer, nullable=True),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('pending', 'delivered', 'dead')", name="imageproc_webhooks_status_check"
        ),
    )
    op.create_index(
        "imageproc_webhooks_due_idx",
        "imageproc_webhooks",
        ["next_attempt_at"],
        postgresql_where=sa.text("status = 'pending'"),
        sqlite_where=sa.text("status = 'pending'"),
    )
    op.create_index("imageproc_webhooks_status_idx", "imageproc_webhooks", ["status", "created_at"])
    op.create_index("imageproc_webhooks_task_idx", "imageproc_webhooks", ["task_id"])


def downgrade() -> None:
    op.drop_table("imageproc_webhooks")
    with op.batch_alter_table("imageproc_tasks") as batch:
        batch.drop_column("callback_url")
