"""Progress: how many variants the attempt under way has made.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("imageproc_tasks") as batch:
        batch.add_column(sa.Column("variants_done", sa.Integer, nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("imageproc_tasks") as batch:
        batch.drop_column("variants_done")
