"""Reprocessing: the task whose original a task makes more variants of.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("imageproc_tasks") as batch:
        batch.add_column(sa.Column("reprocess_of", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("imageproc_tasks") as batch:
        batch.drop_column("reprocess_of")
