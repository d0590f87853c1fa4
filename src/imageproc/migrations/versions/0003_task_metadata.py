"""Keep the application's metadata on each task, indexed for containment on PostgreSQL.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Tasks recorded before it have none: NULL, read as an empty object.
    json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
    with op.batch_alter_table("imageproc_tasks") as batch:
        batch.add_column(sa.Column("metadata", json, nullable=True))
    if op.get_bind().dialect.name == "postgresql":
        op.create_index(
            "imageproc_tasks_metadata_idx",
            "imageproc_tasks",
            ["metadata"],
            postgresql_using="gin",
            postgresql_ops={"metadata": "jsonb_path_ops"},
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.drop_index("imageproc_tasks_metadata_idx", table_name="imageproc_tasks")
    with op.batch_alter_table("imageproc_tasks") as batch:
        batch.drop_column("metadata")
