"""Alembic environment for imageproc's own schema.

Run programmatically by :meth:`imageproc.backends.sql.SQLBackend.migrate`, which hands over an open
connection in ``config.attributes["connection"]``. The version table is imageproc's own, so a
host application's Alembic history in the same database is left alone.
"""

from __future__ import annotations

from alembic import context

from imageproc.backends.sql._schema import VERSION_TABLE, metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table=VERSION_TABLE,
    include_name=lambda name, type_, _: type_ != "table" or (name or "").startswith("imageproc_"),
)
with context.begin_transaction():
    if connection.dialect.name == "postgresql":
        # Several processes may start at once; only one may migrate at a time.
        connection.exec_driver_sql("SELECT pg_advisory_xact_lock(7208341977)")
    context.run_migrations()
