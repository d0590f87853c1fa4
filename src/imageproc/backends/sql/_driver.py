"""PostgreSQL's hottest statements, run on psycopg's cursor rather than through SQLAlchemy.

A worker pool claims, records and reads tasks thousands of times a second, each time running
one of a few statements that never change. SQLAlchemy's execution layer (its statement cache,
parameter and result processing, events) cost more CPU than the round trip itself: measured on
the no-op pool benchmark, the claimer spent over half of each claim in it, and the pool's
throughput doubled without it. So these few statements are compiled once, by SQLAlchemy, for the
engine's own dialect, and executed with the driver's cursor (prepared on the server at once) on a
connection checked out from SQLAlchemy's pool (the pooled connection itself, without a
SQLAlchemy ``Connection`` around it), which still owns every connection: its checkout checks,
its session settings and its invalidation of a connection that broke.

Values arrive as psycopg returns them, so timestamps are brought to UTC here, as
:class:`~imageproc.backends.sql._schema.UTCDateTime` does on SQLAlchemy's path, and naive
timestamps are refused on the way in alike. Driver errors leave as SQLAlchemy's
(:meth:`sqlalchemy.exc.DBAPIError.instance`), so the backend maps them as it maps the rest.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc
from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.pool import QueuePool

__all__ = ["HotStatement"]

#: Where a pooled connection keeps its cursor for these statements (its ``info`` dictionary).
_CURSOR = "imageproc_hot_cursor"


class HotStatement:
    """One statement compiled once for ``dialect`` (psycopg's), run on the driver's cursor."""

    def __init__(self, statement: sa.ClauseElement, dialect: Dialect) -> None:
        self._compiled = statement.compile(dialect=dialect)
        self.sql = str(self._compiled)

    def run(self, engine: Engine, values: dict[str, Any]) -> list[dict[str, Any]]:
        """Execute with ``values`` on a connection of ``engine``'s pool; the rows it returns,
        as dicts by column name, timestamps in UTC."""
        import psycopg
        from psycopg.rows import dict_row

        for value in values.values():
            if isinstance(value, datetime) and value.tzinfo is None:
                raise ValueError("naive datetime given to a timezone-aware column")
        parameters = self._compiled.construct_params(values)
        # The pool's connection itself, without SQLAlchemy's Connection around it (whose making
        # and closing cost as much as the statement), in autocommit for this one statement.
        try:
            connection = engine.raw_connection()
        except psycopg.Error as error:  # could not connect
            raise _mapped(self.sql, parameters, error, engine) from error
        try:
            driver: Any = connection.driver_connection
            autocommit = driver.autocommit
            try:
                if not autocommit:
                    driver.autocommit = True
                # One cursor per connection, kept with it (making one costs more than using it),
                # where a checked-out connection has one user at a time: not under a pool that
                # shares one connection between threads (StaticPool).
                cursor = connection.info.get(_CURSOR)
                if cursor is None:
                    cursor = driver.cursor(row_factory=dict_row)
                    if isinstance(engine.pool, QueuePool):
                        connection.info[_CURSOR] = cursor
                cursor.execute(self.sql, parameters, prepare=True)
                rows = cursor.fetchall() if cursor.description else []
            except psycopg.Error as error:
                broken = bool(driver.broken or driver.closed)
                if broken:
                    connection.invalidate(error)  # never to be handed out again
                raise _mapped(self.sql, parameters, error, engine, broken=broken) from error
            finally:
                if not autocommit and not (driver.broken or driver.closed):
                    driver.autocommit = False  # as SQLAlchemy's transactions expect it
        finally:
            connection.close()  # back to the pool
        return [_in_utc(row) for row in rows]


def _mapped(
    sql: str, parameters: Any, error: Exception, engine: Engine, *, broken: bool = False
) -> exc.StatementError:
    """The driver's ``error`` as SQLAlchemy would have raised it."""
    import psycopg

    return exc.DBAPIError.instance(
        sql, parameters, error, psycopg.Error, connection_invalidated=broken, dialect=engine.dialect
    )


def _in_utc(row: dict[str, Any]) -> dict[str, Any]:
    for name, value in row.items():
        if isinstance(value, datetime):
            row[name] = value.astimezone(UTC)
    return row
