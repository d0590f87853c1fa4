"""Tasks written in the application's own transaction (``submit(…, connection=…)``).

The application hands over its SQLAlchemy ``Connection`` (or ORM ``Session``); the task row (and
its idempotency key, if any) is written there, so it commits or rolls back with the
application's own rows. That is only a single transaction if the connection reaches the very
database, and schema, that holds imageproc's tables: anything else is refused, rather than
turned into a second transaction that looks like one.
"""

from __future__ import annotations

import os
from typing import Final

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from imageproc.errors import ConfigurationError

__all__ = ["caller_connection", "identity", "same_database"]

#: Where the identity of a caller's database is kept: on the driver's connection, which a pool
#: hands out again and which always reaches the same database.
_IDENTITY: Final = "imageproc.database_identity"


def caller_connection(connection: object) -> Connection:
    """The Core ``Connection`` of what the application handed over: a ``Connection`` as it is,
    an ORM ``Session``'s connection in its current transaction (begun if need be)."""
    if isinstance(connection, Connection):
        return connection
    from sqlalchemy.orm import Session  # only for those who pass one

    if isinstance(connection, Session):
        return connection.connection()
    raise ConfigurationError(
        "connection= takes a SQLAlchemy Connection or Session on imageproc's database, not"
        f" {type(connection).__name__}"
    )


def identity(conn: Connection) -> tuple[str, ...]:
    """What tells one database (and schema) from another, asked of the server itself: two URLs
    for one database (``localhost`` and ``127.0.0.1``, a pooler) give the same answer, and two
    databases behind one URL never do."""
    dialect = conn.dialect.name
    if dialect == "postgresql":
        row = conn.execute(
            sa.text(
                "SELECT current_database(), current_schema(), current_setting('port'),"
                " CAST(pg_postmaster_start_time() AS text)"
            )
        ).one()
        return (dialect, *(str(value) for value in row))
    if dialect == "sqlite":
        files = {name: path for _, name, path in conn.exec_driver_sql("PRAGMA database_list")}
        path = files.get("main") or ""
        # An in-memory database is private to its connection: there is nothing to share.
        return (dialect, os.path.realpath(path) if path else f"memory:{id(conn.connection)}")
    return (dialect, str(conn.engine.url))


def same_database(ours: tuple[str, ...], connection: Connection) -> None:
    """Refuse ``connection`` unless it reaches the database whose identity is ``ours``."""
    info = connection.info
    theirs = info.get(_IDENTITY)
    if theirs is None:
        theirs = info[_IDENTITY] = identity(connection)
    if theirs != ours:
        raise ConfigurationError(
            "connection= must be a connection to the database (and schema) that holds"
            f" imageproc's tables; this one reaches {_describe(theirs)}, they are in"
            f" {_describe(ours)}: the task would be recorded in a transaction of its own"
        )


def _describe(identity: tuple[str, ...]) -> str:
    if identity[0] == "postgresql":
        database, schema, port = identity[1:4]
        return f"PostgreSQL database {database!r}, schema {schema!r}, on port {port}"
    if identity[0] == "sqlite":
        return f"SQLite {identity[1]!r}"
    return repr(identity)
