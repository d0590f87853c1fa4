"""What each database needs of its engines: on SQLite, WAL and ``BEGIN IMMEDIATE`` for writers;
on PostgreSQL, pooled connections checked on checkout, generic plans, and pools of their own for
statements that are transactions by themselves.
"""

from __future__ import annotations

import select
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event, exc
from sqlalchemy.engine import Connection, Engine

from imageproc.backends._urls import SQL_DIALECTS
from imageproc.errors import ConfigurationError

__all__ = ["database_url", "main_engine", "statement_engine"]


def database_url(url: str) -> sa.URL:
    """``url`` parsed, for one of the two databases imageproc supports."""
    parsed = sa.make_url(url)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")  # psycopg 3, not psycopg2
    dialect = parsed.get_backend_name()
    if dialect not in SQL_DIALECTS:
        raise ConfigurationError(f"unsupported database {dialect!r}; use SQLite or PostgreSQL")
    return parsed


def main_engine(url: sa.URL, sqlite_busy_timeout: float, engine_options: dict[str, Any]) -> Engine:
    """The engine for transactions (and, on SQLite, for everything), set up for its database."""
    if url.get_backend_name() == "sqlite":
        connect_args = engine_options.setdefault("connect_args", {})
        connect_args.setdefault("timeout", sqlite_busy_timeout)
        connect_args.setdefault("check_same_thread", False)
    try:
        engine = sa.create_engine(url, **engine_options)
    except ImportError as error:  # the driver SQLAlchemy loads for the URL
        raise ConfigurationError(
            f"{url.drivername} needs the {error.name or 'driver'} package, which is not"
            " installed: install imageproc's 'postgres' extra (pip install '.[postgres]' in"
            " a checkout)"
        ) from error
    if url.get_backend_name() == "sqlite":
        _configure_sqlite(engine)
    else:
        _check_connections_on_checkout(engine)
        _plan_once(engine)
    return engine


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _: Any) -> None:
        # Let SQLAlchemy's "begin" event issue BEGIN itself (pysqlite's own BEGIN is deferred).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get("imageproc_immediate", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def _check_connections_on_checkout(engine: Engine) -> None:
    """Replace pooled PostgreSQL connections that died while idle (a server restart,
    ``pg_terminate_backend``), as ``pool_pre_ping`` would, but without its round trip.

    A connection resting in the pool has nothing to read unless the server has spoken since: a
    terminated or restarting backend sends its goodbye (or the socket closes) before it goes. So
    a connection whose socket is quiet is handed out at once; one with something to read is
    pinged, and if the ping fails it is replaced, with every connection pooled before it, as
    pre-ping does. (A server that vanished without a word is found by the next statement, which
    fails with BackendUnavailable, as it would after a successful ping.)
    """

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        if dbapi_connection.closed or dbapi_connection.broken:
            raise exc.DisconnectionError("pooled connection closed")  # this one alone
        if not _readable(dbapi_connection.fileno()):
            return
        try:
            alive = engine.dialect.do_ping(dbapi_connection)
        except engine.dialect.loaded_dbapi.Error:
            alive = False
        if not alive:
            raise exc.InvalidatePoolError("pooled connection lost while idle")


def statement_engine(url: sa.URL, engine_options: dict[str, Any], *, durable: bool) -> Engine:
    """PostgreSQL: a pool of its own for statements that are transactions by themselves,
    autocommit set once per connection (not switched at every checkout) and nothing rolled back
    when a connection returns to the pool.

    ``durable=False`` is the small pool for claims and lease renewals, whose commits do not wait
    for the write-ahead log to reach the disk (``synchronous_commit = off``). A claim or a
    renewal that a server crash loses is harmless: the task is simply claimable again (its lease
    never was, or ends sooner), and the worker that held it can no longer record a result, since
    recording matches the lease token. Everything that must survive a crash (new tasks,
    outcomes, cancellations) still waits for the disk.
    """
    options = {**engine_options, "isolation_level": "AUTOCOMMIT", "pool_reset_on_return": None}
    if not durable and engine_options.get("poolclass") is None:  # tests' StaticPool has no size
        options.update(pool_size=2, max_overflow=4)
    engine = sa.create_engine(url, **options)
    _check_connections_on_checkout(engine)
    _plan_once(engine)
    if durable:
        return engine

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _: Any) -> None:
        autocommit = dbapi_connection.autocommit
        dbapi_connection.autocommit = True
        dbapi_connection.execute("SET synchronous_commit = off")
        dbapi_connection.autocommit = autocommit

    return engine


def _plan_once(engine: Engine) -> None:
    """Have PostgreSQL plan each prepared statement once per connection (its generic plan)
    instead of again at every execution.

    psycopg prepares a statement run 5 times on a connection, but PostgreSQL still plans the
    claim and the batch record afresh each time: a generic plan for ``LIMIT $n`` looks dearer
    to it than the custom ones. Planning was about a quarter of the server's time per claimed
    task. The generic plans are the same index walks (the claim's statuses are written into its
    SQL so the partial indexes still apply; a test holds the claim to them), and every other
    statement imageproc runs looks rows up by key, walks an index range, or counts by design.
    This applies to imageproc's own pooled connections only (``plan_cache_mode``, PostgreSQL 12
    and later).
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _: Any) -> None:
        if dbapi_connection.info.server_version < 120000:
            return
        autocommit = dbapi_connection.autocommit
        dbapi_connection.autocommit = True
        dbapi_connection.execute("SET plan_cache_mode = force_generic_plan")
        dbapi_connection.autocommit = autocommit


def _readable(fd: int) -> bool:
    """Whether the socket ``fd`` has something to read now (never waits)."""
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(fd, select.POLLIN | select.POLLPRI)
        return bool(poller.poll(0))
    return bool(select.select([fd], [], [], 0)[0])  # pragma: no cover (Windows)
