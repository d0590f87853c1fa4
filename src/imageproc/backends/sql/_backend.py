"""The SQL backend: :class:`SQLBackend` is both the Repository and the Queue, on one table.

SQLite (one file, no server) is the embedded default; PostgreSQL lets any number of worker
processes on any number of machines share one queue, coordinated by the database alone. On
PostgreSQL each claim, renewal and record is one statement in autocommit (one round trip).

The backend is the composition of its parts: the queue's half of its methods (``_queueing``:
claims, renewals, records), idempotency keys (``_idempotency``) and the application's
transactions (``_joined``), the table (``_schema``), the statements it runs
(``_statements``, the hottest on the driver's cursor by ``_driver``), the engines each database
needs (``_dialect``), transactions and single statements (``_transactions``), the mapping of the
driver's errors to imageproc's (``_errors``), admission under queue limits (``_admission``), how
idle workers and waiters hear of work (``_listener``), and group commit of adds on SQLite
(``_groupcommit``).
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime, timedelta
from importlib.resources import as_file, files
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc
from sqlalchemy.engine import Engine

from imageproc._clock import Clock, utcnow
from imageproc._idempotency import IdempotencyRecord
from imageproc._protocols import QueueLimits, QueueStats
from imageproc._task import MetadataValue, Task, TaskStatus
from imageproc.backends.sql import _deliveries as outbox
from imageproc.backends.sql import _idempotency as keyed
from imageproc.backends.sql import _joined as joined
from imageproc.backends.sql import _schema as sqlschema
from imageproc.backends.sql._admission import admit
from imageproc.backends.sql._dialect import database_url, main_engine, statement_engine
from imageproc.backends.sql._errors import brief, driver_errors_mapped
from imageproc.backends.sql._groupcommit import GroupCommit
from imageproc.backends.sql._listener import (
    CHANNEL,
    DONE_CHANNEL,
    SQLITE_WAIT_POLL,
    UNHEARD_POLL,
    Listener,
    Wakeup,
)
from imageproc.backends.sql._queueing import SQLQueue
from imageproc.backends.sql._schema import VERSION_TABLE, task_from_row, task_to_row, tasks
from imageproc.backends.sql._statements import (
    ENDED_AMONG,
    FIND_BY_SOURCE,
    GET,
    NO_LEASE,
    QUEUE_STATS,
    SOURCE_IN_USE,
    SOURCES_IN_USE,
    HotStatements,
    exists,
    find_statement,
    purge_statement,
)
from imageproc.backends.sql._transactions import Transactions
from imageproc.delivery._completions import Completions
from imageproc.delivery._outbox import Delivery, DeliveryStatus
from imageproc.errors import (
    ImageprocError,
    TaskNotFound,
    copies_for,
)

__all__ = ["SQLBackend"]

logger = logging.getLogger("imageproc.sql")

#: Ids per query of :meth:`SQLBackend.ended_among` (well under SQLite's bound parameters).
_ENDED_BATCH = 500


class SQLBackend(SQLQueue):
    """Repository and Queue on SQLAlchemy Core, for SQLite and PostgreSQL (the Queue methods
    are :class:`~imageproc.backends.sql._queueing.SQLQueue`'s).

    ``url`` is a SQLAlchemy URL (``sqlite:///path.db``, ``postgresql+psycopg://user@host/db``);
    ``engine_options`` go to :func:`sqlalchemy.create_engine`. Call :meth:`migrate` (or build the
    Processor with ``Processor.from_urls``) to create or upgrade the schema.
    """

    def __init__(
        self,
        url: str,
        *,
        clock: Clock = utcnow,
        sqlite_busy_timeout: float = 30.0,
        poll_interval: float = 1.0,
        **engine_options: Any,
    ) -> None:
        parsed = database_url(url)
        self.clock = clock
        self.poll_interval = poll_interval
        self.dialect = parsed.get_backend_name()
        if self.dialect == "postgresql":
            # Every transaction of ours at READ COMMITTED whatever the server's default, set by
            # the driver with each BEGIN rather than by a statement (a round trip) of its own.
            engine_options.setdefault("isolation_level", "READ COMMITTED")
        #: Whether the engine's transactions start at READ COMMITTED (see _admission).
        self._read_committed = engine_options.get("isolation_level") == "READ COMMITTED"
        self.engine: Engine = main_engine(parsed, sqlite_busy_timeout, engine_options)
        # PostgreSQL: statements that are transactions by themselves, and claims and renewals,
        # on pools of their own; the claim, the batch record and the read on the driver's cursor.
        self._autocommit: Engine = self.engine  # unused on SQLite (see Transactions)
        self._leasing: Engine | None = None
        self._hot: HotStatements | None = None
        if self.dialect == "postgresql":
            self._autocommit = statement_engine(parsed, engine_options, durable=True)
            self._leasing = statement_engine(parsed, engine_options, durable=False)
            self._hot = HotStatements(self.engine.dialect)
        self._url = parsed
        self._wakeup = Wakeup()
        self._db = Transactions(
            self.dialect, self.engine, self._autocommit, self._leasing, self._wakeup
        )
        self._listener: Listener | None = None
        self._closed = False
        #: Told of every task this backend records in a final status (and, on PostgreSQL, of
        #: those other processes record); ``Processor.wait`` stands on it.
        self.completions = Completions(
            poll_interval=SQLITE_WAIT_POLL if self.dialect == "sqlite" else UNHEARD_POLL,
            activate=self._listen_for_completions if self.dialect == "postgresql" else None,
        )

    # -- schema -----------------------------------------------------------------------------

    def migrate(self) -> None:
        """Create or upgrade imageproc's tables to the newest schema (safe to run concurrently)."""
        from alembic import command
        from alembic.config import Config

        with (
            as_file(files("imageproc") / "migrations") as location,
            self._db.begin(write=True) as conn,
        ):
            config = Config()
            config.set_main_option("script_location", str(location))
            config.attributes["connection"] = conn
            command.upgrade(config, "head")

    def schema_revision(self) -> str | None:
        """The schema revision the database is at, or None before the first migration."""
        with self._db.begin() as conn:
            if not sa.inspect(conn).has_table(VERSION_TABLE):
                return None
            return conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()

    # -- Repository -------------------------------------------------------------------------

    def add(self, task: Task, *, limits: QueueLimits | None = None) -> None:
        """Record a new task; a queued one is claimable at once (and idle workers are woken).
        :class:`~imageproc.QueueFull` if it would pass ``limits``.

        On SQLite, tasks that threads add at the same time share one transaction (a group
        commit): SQLite has one writer at a time, so
        they would otherwise queue on its lock for a commit, and a sync of the log, each. Every
        call still returns only once its own task is committed.
        """
        if limits is not None and limits.any:
            self.add_many([task], limits=limits)
            return
        if self.dialect != "sqlite":
            [error] = self._insert([task])
            if error is not None:
                raise error
            return
        adds: GroupCommit[Task] | None = self.__dict__.get("_adds")
        if adds is None:  # made on first use; setdefault keeps one if threads race here
            adds = self.__dict__.setdefault("_adds", GroupCommit(self._insert))
        adds.run(task)

    def _insert(self, batch: Sequence[Task]) -> list[Exception | None]:
        """Insert ``batch`` in one transaction: for each task None, or the error to raise."""
        try:
            with self._db.begin(write=True) as conn:
                # One statement with a list of rows: compiled once and cached, where building
                # it with .values(**row) cost more CPU than the insert itself.
                conn.execute(tasks.insert(), [task_to_row(task) for task in batch])
                if any(task.status == TaskStatus.QUEUED for task in batch):
                    self._db.notify(conn)
        except ImageprocError as error:
            # The database is unavailable. Each caller gets an exception of its own: one raised
            # in several threads at once would mix their tracebacks.
            return [*copies_for(error, len(batch))]
        except Exception as error:
            if len(batch) > 1:
                # One task's fault (already recorded, a value the database cannot hold) must
                # not fail the others: write each alone, so only its own caller gets the error.
                return [result for task in batch for result in self._insert([task])]
            if isinstance(error, exc.IntegrityError):
                with self._db.one_statement() as conn:
                    duplicate = exists(conn, batch[0].id)
                if duplicate:
                    refused = ValueError(f"task {batch[0].id} already exists")
                else:
                    refused = ValueError(f"task {batch[0].id} was refused: {brief(error)}")
                refused.__cause__ = error
                return [refused]
            return [error]
        return [None] * len(batch)

    def add_many(self, tasks: Sequence[Task], *, limits: QueueLimits | None = None) -> None:
        """Record new tasks in one transaction (one multi-row ``INSERT``), all or none; the queued
        ones are claimable at once, and idle workers are woken once for the lot.
        :class:`~imageproc.QueueFull` if they would not all fit in ``limits``."""
        if not tasks:
            return
        with self._db.begin(write=True) as conn:
            admit(conn, tasks, limits, dialect=self.dialect, isolation_set=self._read_committed)
            try:
                # `tasks` is the argument here: the table is sqlschema's.
                conn.execute(sqlschema.tasks.insert(), [task_to_row(task) for task in tasks])
            except exc.IntegrityError as error:
                raise ValueError(f"a task already exists ({brief(error)})") from error
            if any(task.status == TaskStatus.QUEUED for task in tasks):
                self._db.notify(conn)

    def get(self, task_id: str) -> Task:
        """The task with this id, or :class:`~imageproc.TaskNotFound`."""
        row: Mapping[Any, Any] | None
        if self._hot is not None:
            with driver_errors_mapped():
                rows = self._hot.get.run(self._autocommit, {"task_id": task_id})
            row = rows[0] if rows else None
        else:
            with self._db.one_statement() as conn:
                row = conn.execute(GET, {"task_id": task_id}).mappings().first()
        if row is None:
            raise TaskNotFound(f"no task with id {task_id!r}")
        return task_from_row(row)

    def ended_among(self, task_ids: Collection[str]) -> list[Task]:
        """The tasks among ``task_ids`` that are in a final status, read in one query per 500
        ids (the asyncio waiters' shared sweep: ends another process recorded on SQLite)."""
        ids = list(dict.fromkeys(task_ids))
        ended: list[Task] = []
        for start in range(0, len(ids), _ENDED_BATCH):
            with self._db.one_statement() as conn:
                rows = conn.execute(ENDED_AMONG, {"task_ids": ids[start : start + _ENDED_BATCH]})
                ended.extend(task_from_row(row) for row in rows.mappings())
        return ended

    def update(self, task: Task, *, expected: Task, limits: QueueLimits | None = None) -> bool:
        """Replace the task if it is still ``expected``; drops any lease. A change to queued
        that would pass ``limits`` is :class:`~imageproc.QueueFull`."""
        changed = self._update(task, expected=expected, limits=limits)
        if changed:
            self.completions.publish_tasks((task,))
        return changed

    def _update(self, task: Task, *, expected: Task, limits: QueueLimits | None = None) -> bool:
        with self._db.begin(write=True) as conn:
            if expected.status != TaskStatus.QUEUED:
                admit(
                    conn, [task], limits, dialect=self.dialect, isolation_set=self._read_committed
                )
            result = conn.execute(
                tasks.update()
                .where(
                    tasks.c.id == task.id,
                    tasks.c.status == expected.status.value,
                    tasks.c.updated_at == expected.updated_at,
                )
                .values(**task_to_row(task), **NO_LEASE)
            )
            if result.rowcount == 0:
                if not exists(conn, task.id):
                    raise TaskNotFound(f"no task with id {task.id!r}")
                return False
            if task.status == TaskStatus.QUEUED:
                self._db.notify(conn)
            elif task.status.is_final:
                outbox.insert_deliveries(conn, outbox.delivery_rows((task,), self.clock()))
                if self.dialect == "postgresql":
                    conn.execute(sa.select(sa.func.pg_notify(DONE_CHANNEL, task.id)))
            return True

    def purge(self, before: datetime, *, limit: int = 500) -> list[Task]:
        """Delete up to ``limit`` finished tasks that finished before ``before``; return them."""
        statement = purge_statement(before, limit, dialect=self.dialect)
        with self._db.begin(write=True) as conn:
            return [task_from_row(row) for row in conn.execute(statement).mappings()]

    def source_in_use(self, source_key: str) -> bool:
        """Whether any task still refers to the original under ``source_key``."""
        with self._db.one_statement() as conn:
            return conn.execute(SOURCE_IN_USE, {"source_key": source_key}).first() is not None

    def sources_in_use(self, keys: Collection[str]) -> set[str]:
        """Those of ``keys`` that some task still refers to, in one query (pass a batch)."""
        if not keys:
            return set()
        with self._db.one_statement() as conn:
            return set(conn.execute(SOURCES_IN_USE, {"source_keys": list(keys)}).scalars())

    def find_by_source(
        self, source_key: str, statuses: Collection[TaskStatus], *, limit: int = 20
    ) -> list[Task]:
        """Tasks in ``statuses`` made from the original under ``source_key``, newest first,
        through the index on ``source_key``."""
        values = {
            "source_key": source_key,
            "statuses": [status.value for status in statuses],
            "limit": max(limit, 0),
        }
        with self._db.one_statement() as conn:
            rows = conn.execute(FIND_BY_SOURCE, values).mappings()
            return [task_from_row(row) for row in rows]

    def find_key(self, scope: str, key: str, *, now: datetime) -> IdempotencyRecord | None:
        """The record of ``key`` in ``scope``, if it is still remembered at ``now``."""
        with self._db.one_statement() as conn:
            return keyed.find_key(conn, scope, key, now)

    def add_keyed(
        self, record: IdempotencyRecord, task: Task | None, *, limits: QueueLimits | None = None
    ) -> IdempotencyRecord:
        """Remember ``record`` and record ``task`` in one transaction, unless the key is
        already remembered: then that record (after the transaction that wrote it commits)."""
        with self._db.begin(write=True) as conn:
            kept = keyed.add_keyed(
                conn,
                record,
                task,
                limits,
                dialect=self.dialect,
                isolation_set=self._read_committed,
            )
            if kept is record and keyed.queued(task):
                self._db.notify(conn)
        return kept

    def check_connection(self, connection: object) -> None:
        """Refuse (:class:`~imageproc.ConfigurationError`) an application's ``Connection`` or
        ``Session`` that imageproc cannot write in: one not in a transaction, not at READ
        COMMITTED (PostgreSQL), or that does not reach this backend's tables."""
        with driver_errors_mapped():
            joined.joinable(self._identity, joined.caller_connection(connection))

    def _identity(self, fresh: bool) -> tuple[str, ...]:
        """The identity of this backend's tables (:func:`~._joined.identity`), asked once and
        again when ``fresh``."""
        known: tuple[str, ...] | None = self.__dict__.get("_known_identity")
        if known is None or fresh:
            with self._db.one_statement() as conn:
                known = self.__dict__["_known_identity"] = joined.identity(conn)
        return known

    def add_in(
        self,
        connection: object,
        task: Task | None,
        *,
        record: IdempotencyRecord | None = None,
        limits: QueueLimits | None = None,
    ) -> IdempotencyRecord | None:
        """Write ``task`` (and ``record``, as :meth:`add_keyed` would) in the application's
        transaction on ``connection``, which :meth:`check_connection` accepted (``submit``
        asks it first, before storing anything: once is enough, it is a round trip);
        claimable once the application commits."""
        conn = joined.caller_connection(connection)
        with driver_errors_mapped():
            if record is not None:
                # The application's transaction, checked to be at READ COMMITTED.
                kept = keyed.add_keyed(
                    conn, record, task, limits, dialect=self.dialect, isolation_set=True
                )
                if kept is not record:
                    return kept
            elif task is not None:
                admit(conn, [task], limits, dialect=self.dialect, isolation_set=True)
                conn.execute(tasks.insert(), [task_to_row(task)])
            if keyed.queued(task) and self.dialect == "postgresql":
                # Delivered when, and only if, the application commits.
                conn.execute(sa.select(sa.func.pg_notify(CHANNEL, "")))
        return record

    def get_in(self, connection: object, task_id: str) -> Task:
        """The task with this id as the application's transaction sees it."""
        with driver_errors_mapped():
            conn = joined.caller_connection(connection)
            row = conn.execute(GET, {"task_id": task_id}).mappings().first()
        if row is None:
            raise TaskNotFound(f"no task with id {task_id!r}")
        return task_from_row(row)

    def purge_keys(self, now: datetime, *, limit: int = 500) -> int:
        """Forget up to ``limit`` keys that have expired at ``now``."""
        with self._db.begin(write=True) as conn:
            return keyed.purge_keys(conn, now, limit)

    def find(
        self,
        status: TaskStatus,
        *,
        owner: str | None = None,
        metadata: Mapping[str, MetadataValue] | None = None,
        limit: int = 100,
    ) -> list[Task]:
        """Tasks in ``status`` (and of ``owner``), most recently changed first.

        Queued and processing tasks are found through the claim indexes; the final statuses
        are read by scanning, which is what an occasional look at the dead-letter set costs
        (an index on them would slow every status change of the hot table).
        """
        query = find_statement(status, owner, metadata, limit, dialect=self.dialect)
        with self._db.one_statement() as conn:
            return [task_from_row(row) for row in conn.execute(query).mappings()]

    def queue_stats(self) -> QueueStats:
        """Counts of queued and processing tasks and the oldest due one, in one query."""
        with self._db.one_statement() as conn:
            waiting, running, oldest = conn.execute(QUEUE_STATS, {"now": self.clock()}).one()
        return QueueStats(queued=waiting, processing=running, oldest_due_at=oldest)

    # -- the webhook outbox (DeliveryStore) -------------------------------------------------

    def claim_deliveries(self, now: datetime, *, limit: int, hold: timedelta) -> list[Delivery]:
        """Take up to ``limit`` pending deliveries due at ``now``, earliest first, held for
        ``hold`` (``FOR UPDATE SKIP LOCKED`` on PostgreSQL: senders never wait on each other)."""
        with self._db.begin(write=True) as conn:
            return outbox.claim_deliveries(conn, now, limit, hold, dialect=self.dialect)

    def settle_delivery(self, delivery: Delivery) -> bool:
        """Record how a try went, if that try still holds the delivery."""
        with self._db.begin(write=True) as conn:
            return outbox.settle_delivery(conn, delivery)

    def deliveries(
        self,
        status: DeliveryStatus,
        *,
        owner: str | None = None,
        task_id: str | None = None,
        limit: int = 100,
    ) -> list[Delivery]:
        """Deliveries in ``status`` (of ``owner``, of ``task_id``), the most recent first."""
        with self._db.one_statement() as conn:
            return outbox.find_deliveries(conn, status, owner=owner, task_id=task_id, limit=limit)

    def resend_deliveries(
        self, ids: Collection[str] | None, *, now: datetime, owner: str | None = None
    ) -> int:
        """Make the dead deliveries among ``ids`` (all if None) due again now."""
        with self._db.begin(write=True) as conn:
            count = outbox.resend_deliveries(conn, ids, now, owner)
        if count:
            self.completions.nudge()
        return count

    def next_delivery_at(self) -> datetime | None:
        """When the earliest pending delivery is due (or its hold runs out)."""
        with self._db.one_statement() as conn:
            return outbox.next_delivery_at(conn)

    def repair_deliveries(self, since: datetime, until: datetime, *, limit: int = 100) -> int:
        """Write the deliveries that final statuses recorded between ``since`` and ``until``
        lack (see :func:`~imageproc.backends.sql._deliveries.repair_deliveries`); how many.
        The webhook sender calls it now and then, over the last few minutes."""
        with self._db.begin(write=True) as conn:
            count = outbox.repair_deliveries(
                conn, since, until, self.clock(), dialect=self.dialect, limit=limit
            )
        if count:
            logger.warning("wrote %d webhook deliveries that final statuses lacked", count)
            self.completions.nudge()
        return count

    def purge_deliveries(self, before: datetime, *, limit: int = 500) -> int:
        """Forget up to ``limit`` delivered or dead deliveries written before ``before``."""
        with self._db.begin(write=True) as conn:
            return outbox.purge_deliveries(conn, before, limit)

    def close(self) -> None:
        """Stop listening and close every pooled connection."""
        self._closed = True
        if self._listener is not None:
            self._listener.stop()
        self.engine.dispose()
        if self._leasing is not None:
            self._leasing.dispose()
            self._autocommit.dispose()
