"""The SQL backend (SQLAlchemy Core): queue and repository in one table, on SQLite or PostgreSQL.

Here: the backend (``_backend``), its schema (``_schema``, with the Alembic migrations beside the
package), and the parts the backend is composed of (listed in ``_backend``'s docstring).
A backend imports the model and the protocols, never the processor, worker or HTTP layer.
"""

from imageproc.backends.sql._backend import SQLBackend

__all__ = ["SQLBackend"]
