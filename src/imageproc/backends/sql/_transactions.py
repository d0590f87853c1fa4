"""How the backend's statements run: in transactions, or alone where a statement is a transaction
by itself, with the driver's errors mapped, and this process's idle workers woken once a
transaction that queued work commits.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from imageproc.backends.sql._errors import driver_errors_mapped
from imageproc.backends.sql._listener import CHANNEL, Wakeup

__all__ = ["Transactions"]


class Transactions:
    """Connections for the statements of one backend, on the engines it made for its database.

    ``autocommit`` and ``leasing`` are PostgreSQL's pools for statements that are transactions by
    themselves (``leasing``: claims and renewals); on SQLite ``autocommit`` is ``engine`` and
    ``leasing`` None.
    """

    def __init__(
        self,
        dialect: str,
        engine: Engine,
        autocommit: Engine,
        leasing: Engine | None,
        wakeup: Wakeup,
    ) -> None:
        self._dialect = dialect
        self._engine = engine
        self._autocommit = autocommit
        self._leasing = leasing
        self._wakeup = wakeup
        # Per thread, the transaction begin has open: whether it queued work (see notify).
        self._transaction = threading.local()

    def notify(self, conn: Connection) -> None:
        """In ``conn``'s transaction, which queued work: wake idle workers once it commits."""
        if self._dialect == "postgresql":
            conn.execute(sa.select(sa.func.pg_notify(CHANNEL, "")))
        # Workers of this process wake at once, whatever the database, once the begin this
        # runs in has committed. A mark for begin, not a commit listener: registering a
        # listener on each transaction's connection cost more CPU than the insert it follows.
        self._transaction.wake = True

    @contextlib.contextmanager
    def begin(self, *, write: bool = False) -> Iterator[Connection]:
        """A transaction, with driver errors mapped; on SQLite a writing one starts IMMEDIATE so
        concurrent writers queue on the busy timeout instead of failing on lock upgrade."""
        with driver_errors_mapped(), self._engine.connect() as conn:
            if write and self._dialect == "sqlite":
                conn = conn.execution_options(imageproc_immediate=True)
            transaction = self._transaction
            outer = getattr(transaction, "wake", False)
            transaction.wake = False
            try:
                with conn.begin():
                    yield conn
                wake = transaction.wake
            finally:
                transaction.wake = outer
            if wake:
                self._wakeup.wake()

    @contextlib.contextmanager
    def one_statement(self, *, write: bool = False, leasing: bool = False) -> Iterator[Connection]:
        """A connection for one statement that is a transaction by itself, with driver errors
        mapped: on PostgreSQL in autocommit, which spares the round trips of ``BEGIN`` and
        ``COMMIT`` (the statement is still atomic); on SQLite a transaction as :meth:`begin`
        starts one (no round trips to spare there). ``leasing``: a claim or a renewal, which on
        PostgreSQL commits without waiting for the disk
        (:func:`~imageproc.backends.sql._dialect.statement_engine`)."""
        if self._dialect != "postgresql":
            with self.begin(write=write) as conn:
                yield conn
            return
        engine = self._leasing if leasing and self._leasing is not None else self._autocommit
        with driver_errors_mapped(), engine.connect() as conn:
            yield conn
