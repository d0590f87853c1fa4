"""The SQL backend (SQLAlchemy Core): queue and repository in one table, on SQLite or PostgreSQL.

Here: the backend, its schema (``_schema``, with the Alembic migrations beside the package), the
driver-error mapping and hot statements (``_driver``), and group commit (``_groupcommit``).
A backend imports the model and the protocols, never the processor, worker or HTTP layer.
"""

from imageproc.backends.sql._backend import SQLBackend

__all__ = ["SQLBackend"]
