"""Tasks written in the application's own transaction (``submit(…, connection=…)``).

The application hands over its SQLAlchemy ``Connection`` (or ORM ``Session``); the task row (and
its idempotency key, if any) is written there, so it commits or rolls back with the
application's own rows. That is one transaction only if the connection is in a transaction, at
READ COMMITTED (what imageproc's own statements assume), and reaches the very tables imageproc
uses: anything else is refused, rather than turned into something that looks like one
transaction and is not.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from imageproc.errors import ConfigurationError

__all__ = ["caller_connection", "identity", "joinable"]

#: Asked of PostgreSQL on each joined submit (one round trip): the database, the server (its
#: system identifier survives restarts and is the same for every address and pooler in front of
#: it), the tasks table this connection's search path resolves to, and the isolation level.
_POSTGRES_IDENTITY: Final = sa.text(
    "SELECT current_database(),"
    " (SELECT CAST(system_identifier AS text) FROM pg_control_system()),"
    " COALESCE((SELECT n.nspname || '.' || c.relname || ' (' || CAST(c.oid AS text) || ')'"
    "  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
    "  WHERE c.oid = to_regclass('imageproc_tasks')), ''),"
    " current_setting('transaction_isolation')"
)


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
    """What tells the tables ``conn``'s statements reach from any others, asked of the database
    itself, so two URLs of one database agree and two databases behind one URL do not: on
    PostgreSQL the database, the server, and the tasks table the search path resolves to; on
    SQLite the file (an in-memory database has none: it is private to one connection)."""
    return _asked(conn)[0]


def _asked(conn: Connection) -> tuple[tuple[str, ...], str | None]:
    """:func:`identity`, and the isolation level of ``conn``'s transaction where the same
    question gives it (PostgreSQL; None elsewhere)."""
    dialect = conn.dialect.name
    if dialect == "postgresql":
        database, server, table, isolation = conn.execute(_POSTGRES_IDENTITY).one()
        return (dialect, str(database), str(server), str(table)), str(isolation)
    if dialect == "sqlite":
        files = {name: path for _, name, path in conn.exec_driver_sql("PRAGMA database_list")}
        path = files.get("main") or ""
        return (dialect, os.path.realpath(path) if path else ""), None
    return (dialect, str(conn.engine.url)), None


def joinable(ours: Callable[[bool], tuple[str, ...]], connection: Connection) -> None:
    """Refuse ``connection`` unless imageproc can write in its transaction: it is in one (not
    autocommit), at READ COMMITTED on PostgreSQL, and reaches the tables whose identity is
    ``ours(fresh)`` (asked again, ``fresh``, before refusing, in case the server was restarted
    or replaced since it was last asked)."""
    theirs, isolation = _asked(connection)
    if isolation is not None and isolation != "read committed":
        raise ConfigurationError(
            f"connection= needs a transaction at READ COMMITTED, this one is {isolation}:"
            " the queue limits and idempotency keys imageproc checks in it rely on seeing"
            " what other transactions committed"
        )
    _check_in_transaction(connection)
    if theirs[0] == "sqlite" and not theirs[1]:
        raise ConfigurationError(
            "connection= cannot share an in-memory SQLite database: each connection has its own"
        )
    if theirs != ours(False) and theirs != ours(True):
        raise ConfigurationError(
            "connection= must be a connection to the database that holds imageproc's tables;"
            f" this one reaches {_describe(theirs)}, imageproc's are in"
            f" {_describe(ours(False))}: the task would be recorded somewhere else"
        )


def _check_in_transaction(connection: Connection) -> None:
    """Refuse a connection in autocommit: each statement would commit on its own, so a rollback
    would leave the task, and a key could be remembered without it."""
    driver: Any = connection.connection.driver_connection
    if connection.dialect.name == "postgresql":
        autocommit = bool(getattr(driver, "autocommit", False))
    elif connection.dialect.name == "sqlite":
        # pysqlite begins a transaction before a write unless isolation_level is None; with
        # None, only a BEGIN already issued (SQLAlchemy's, on the connection's first statement,
        # as imageproc's own engine does) makes one.
        autocommit = driver.isolation_level is None and not driver.in_transaction
    else:
        autocommit = False
    if autocommit:
        raise ConfigurationError(
            "connection= needs a connection in a transaction, not one in autocommit: the task"
            " must commit or roll back with the application's rows"
        )


def _describe(identity: tuple[str, ...]) -> str:
    if identity[0] == "postgresql":
        database, server, table = identity[1:4]
        where = f"table {table}" if table else "no imageproc_tasks table on its search path"
        return f"PostgreSQL database {database!r} of server {server}, {where}"
    if identity[0] == "sqlite":
        return f"SQLite {identity[1]!r}" if identity[1] else "an in-memory SQLite database"
    return repr(identity)
