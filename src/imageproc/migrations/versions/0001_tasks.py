"""Create the tasks table.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from imageproc.backends.sql._schema import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

STATUSES = ("queued", "processing", "succeeded", "failed", "dead", "cancelled")
QUEUED = sa.text("status = 'queued'")
PROCESSING = sa.text("status = 'processing'")
FINISHED = sa.text("finished_at IS NOT NULL")


def upgrade() -> None:
    json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
    op.create_table(
        "imageproc_tasks",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("priority", sa.Integer, nullable=False, server_default="0"),
        sa.Column("pipeline", json, nullable=False),
        sa.Column("source_key", sa.String(1024), nullable=False),
        sa.Column("source_format", sa.String(16), nullable=False),
        sa.Column("source_width", sa.Integer, nullable=False),
        sa.Column("source_height", sa.Integer, nullable=False),
        sa.Column("source_bytes", sa.BigInteger, nullable=False),
        sa.Column("source_sha256", sa.String(64), nullable=False),
        sa.Column("outputs", json, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("max_attempts", sa.Integer, nullable=False),
        sa.Column("owner", sa.String(255), nullable=True),
        sa.Column("error_code", sa.String(64), nullable=True),
        sa.Column("error_message", sa.Text, nullable=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.Column("started_at", UTCDateTime, nullable=True),
        sa.Column("finished_at", UTCDateTime, nullable=True),
        sa.Column("available_at", UTCDateTime, nullable=False),
        sa.Column("lease_token", sa.String(64), nullable=True),
        sa.Column("lease_owner", sa.String(255), nullable=True),
        sa.Column("lease_expires_at", UTCDateTime, nullable=True),
        sa.CheckConstraint(
            "status IN (" + ", ".join(f"'{s}'" for s in STATUSES) + ")",
            name="imageproc_tasks_status_check",
        ),
    )
    op.create_index(
        "imageproc_tasks_claim_idx",
        "imageproc_tasks",
        [sa.text("priority DESC"), "available_at", "created_at", "id"],
        postgresql_where=QUEUED,
        sqlite_where=QUEUED,
    )
    op.create_index(
        "imageproc_tasks_lease_idx",
        "imageproc_tasks",
        ["lease_expires_at"],
        postgresql_where=PROCESSING,
        sqlite_where=PROCESSING,
    )
    op.create_index(
        "imageproc_tasks_finished_idx",
        "imageproc_tasks",
        ["finished_at"],
        postgresql_where=FINISHED,
        sqlite_where=FINISHED,
    )
    op.create_index("imageproc_tasks_source_key_idx", "imageproc_tasks", ["source_key"])
    if op.get_context().dialect.name == "postgresql":
        # A small, very hot table whose rows are updated several times each: vacuum and analyse
        # it after a small fraction changes rather than PostgreSQL's 20 %, and leave room in
        # each page so status updates stay HOT (no index churn).
        op.execute(
            "ALTER TABLE imageproc_tasks SET ("
            " fillfactor = 70,"
            " autovacuum_vacuum_scale_factor = 0.01,"
            " autovacuum_vacuum_threshold = 1000,"
            " autovacuum_analyze_scale_factor = 0.02,"
            " autovacuum_vacuum_cost_delay = 0)"
        )


def downgrade() -> None:
    op.drop_table("imageproc_tasks")
