"""Record the source's EXIF orientation, so its upright size can be reported.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Tasks recorded before it keep 1: their size was, and stays, the stored one.
    with op.batch_alter_table("imageproc_tasks") as batch:
        batch.add_column(
            sa.Column("source_orientation", sa.SmallInteger, nullable=False, server_default="1")
        )


def downgrade() -> None:
    with op.batch_alter_table("imageproc_tasks") as batch:
        batch.drop_column("source_orientation")
