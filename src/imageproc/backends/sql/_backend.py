"""The SQL backend: :class:`SQLBackend` is both the Repository and the Queue, on one table.

SQLite (one file, no server) is the embedded default; PostgreSQL lets any number of worker
processes on any number of machines share one queue, coordinated by the database alone. On
PostgreSQL each claim, renewal and record is one statement in autocommit (one round trip).

The backend is the composition of its parts: the table (``_schema``), the statements it runs
(``_statements``, the hottest on the driver's cursor by ``_driver``), the engines each database
needs (``_dialect``), transactions and single statements (``_transactions``), the mapping of the
driver's errors to imageproc's (``_errors``), admission under queue limits (``_admission``), how
idle workers and waiters hear of work (``_listener``), and group commit of adds on SQLite
(``_groupcommit``).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime, timedelta
from importlib.resources import as_file, files
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Engine

from imageproc._clock import Clock, utcnow
from imageproc._idempotency import IdempotencyRecord
from imageproc._protocols import Lease, QueueLimits, QueueStats, lease_lost
from imageproc._task import MetadataValue, Task, TaskStatus
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
    LISTEN_TIMEOUT,
    SQLITE_WAIT_POLL,
    UNHEARD_POLL,
    Listener,
    Wakeup,
)
from imageproc.backends.sql._schema import VERSION_TABLE, task_from_row, task_to_row, tasks
from imageproc.backends.sql._statements import (
    CLAIM,
    FIND_BY_SOURCE,
    GET,
    NO_LEASE,
    PROCESSING,
    QUEUE_STATS,
    RECORD,
    RENEW,
    SOURCE_IN_USE,
    SOURCES_IN_USE,
    HotStatements,
    batch_parameters,
    exists,
    find_statement,
    outcome,
    purge_statement,
    record_held,
    status_is,
)
from imageproc.backends.sql._transactions import Transactions
from imageproc.delivery._completions import Completions
from imageproc.errors import (
    ImageprocError,
    InvalidInput,
    TaskNotFound,
    copies_for,
)

__all__ = ["SQLBackend"]

logger = logging.getLogger("imageproc.sql")


class SQLBackend:
    """Repository and Queue on SQLAlchemy Core, for SQLite and PostgreSQL.

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
            admit(conn, tasks, limits, dialect=self.dialect)
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
                admit(conn, [task], limits, dialect=self.dialect)
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
            elif task.status.is_final and self.dialect == "postgresql":
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
            kept = keyed.add_keyed(conn, record, task, limits, dialect=self.dialect)
            if kept is record and keyed.queued(task):
                self._db.notify(conn)
        return kept

    def check_connection(self, connection: object) -> None:
        """Refuse (:class:`~imageproc.ConfigurationError`) an application's ``Connection`` or
        ``Session`` that does not reach this backend's database and schema."""
        ours = self.__dict__.get("_identity")
        if ours is None:
            with self._db.one_statement() as conn:
                ours = self.__dict__.setdefault("_identity", joined.identity(conn))
        with driver_errors_mapped():
            joined.same_database(ours, joined.caller_connection(connection))

    def add_in(
        self,
        connection: object,
        task: Task | None,
        *,
        record: IdempotencyRecord | None = None,
        limits: QueueLimits | None = None,
    ) -> IdempotencyRecord | None:
        """Write ``task`` (and ``record``, as :meth:`add_keyed` would) in the application's
        transaction on ``connection``; claimable once the application commits."""
        self.check_connection(connection)
        conn = joined.caller_connection(connection)
        with driver_errors_mapped():
            if record is not None:
                kept = keyed.add_keyed(
                    conn, record, task, limits, dialect=self.dialect, joined=True
                )
                if kept != record:
                    return kept
            elif task is not None:
                admit(conn, [task], limits, dialect=self.dialect, isolation_set=True)
                conn.execute(tasks.insert(), [task_to_row(task)])
            if keyed.queued(task) and self.dialect == "postgresql":
                # Delivered when, and only if, the application commits.
                conn.execute(sa.select(sa.func.pg_notify(CHANNEL, "")))
        return record

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

    # -- Queue ------------------------------------------------------------------------------

    def claim(self, worker: str, *, lease_seconds: float, limit: int = 1) -> list[Lease]:
        """Lease up to ``limit`` claimable tasks in claim order, in one statement.

        A task whose lease expired with no attempts left is made ``dead`` by the same statement
        rather than leased again: a file that kills every worker that touches it must not cycle
        forever.
        """
        self._wakeup.mark()
        leases: list[Lease] = []
        # Bounded: each round either leases something, or buries at least one exhausted task.
        for _ in range(limit + 8):
            leased, buried = self._claim_once(worker, lease_seconds, limit - len(leases))
            leases.extend(leased)
            if len(leases) >= limit or not buried:
                break
        if leases:
            self._wakeup.claimed()
        return leases

    def _claim_once(self, worker: str, lease_seconds: float, limit: int) -> tuple[list[Lease], int]:
        now = self.clock()
        expires = now + timedelta(seconds=lease_seconds)
        # One random prefix per claim, the id per row: every lease gets a token of its own.
        token = secrets.token_hex(16) + ":"
        parameters = {"now": now, "expires": expires, "token": token, "worker": worker, "n": limit}
        rows: Sequence[Mapping[Any, Any]]
        if self._hot is not None and self._leasing is not None:
            with driver_errors_mapped():
                rows = self._hot.claim.run(self._leasing, parameters)
        else:
            with self._db.one_statement(write=True, leasing=True) as conn:
                rows = conn.execute(CLAIM, parameters).mappings().all()
        claimed: list[Task] = []
        unreadable: dict[str, str] = {}
        for row in rows:
            try:
                claimed.append(task_from_row(row))
            except InvalidInput as error:
                unreadable[row["id"]] = error.message
        if unreadable:
            self._fail_unreadable(unreadable, token, now)
            self._ended_elsewhere(list(unreadable))
            self.completions.publish((task_id, None) for task_id in unreadable)
        leased = sorted((t for t in claimed if t.status == TaskStatus.PROCESSING), key=_claim_key)
        buried = len(claimed) - len(leased)
        if buried:
            logger.warning("%d task(s) dead: leases expired with no attempts left", buried)
            self._ended_elsewhere([t.id for t in claimed if t.status.is_final])
            self.completions.publish_tasks(claimed)
        return [Lease(task, token + task.id, worker, expires) for task in leased], buried

    def _ended_elsewhere(self, task_ids: list[str]) -> None:
        """Tell waiters in other processes (PostgreSQL) that these tasks ended in a statement
        that does not notify by itself (the claim). Best effort: their safety poll covers a
        failure here."""
        if self.dialect != "postgresql" or not task_ids:
            return
        try:
            with self._db.one_statement() as conn:
                conn.execute(
                    sa.select(sa.func.pg_notify(DONE_CHANNEL, sa.column("id"))).select_from(
                        sa.func.unnest(sa.cast(task_ids, postgresql.ARRAY(sa.Text))).alias("id")
                    )
                )
        except ImageprocError:
            logger.warning("could not notify the end of %d task(s)", len(task_ids))

    def _fail_unreadable(self, unreadable: dict[str, str], token: str, now: datetime) -> None:
        """Fail claimed tasks whose records cannot be read (a damaged row, or one this version
        cannot make sense of): no worker could process them, and leaving them leased would
        hold them, and the rest of their batch, until the leases expired."""
        logger.error("%d claimed task(s) cannot be read and are failed", len(unreadable))
        with self._db.begin(write=True) as conn:
            for task_id, reason in unreadable.items():
                conn.execute(
                    tasks.update()
                    .where(tasks.c.id == task_id, tasks.c.lease_token == token + task_id)
                    .values(
                        status=TaskStatus.FAILED.value,
                        error_code="unreadable_task",
                        error_message=f"the recorded task cannot be read: {reason}",
                        updated_at=now,
                        finished_at=now,
                        **NO_LEASE,
                    )
                )

    def renew(self, lease: Lease, *, lease_seconds: float) -> Lease:
        """Extend ``lease`` to ``lease_seconds`` from now, if it is still held."""
        expires = self.clock() + timedelta(seconds=lease_seconds)
        parameters = {"held_id": lease.task.id, "held_token": lease.token, "expires": expires}
        with self._db.one_statement(write=True, leasing=True) as conn:
            result = conn.execute(RENEW, parameters)
        if result.rowcount == 0:
            raise lease_lost(lease)
        return Lease(lease.task, lease.token, lease.worker, expires)

    def renew_many(self, leases: Sequence[Lease], *, lease_seconds: float) -> list[Lease | None]:
        """Renew every lease still held in one statement; None for each that is not."""
        if not leases:
            return []
        expires = self.clock() + timedelta(seconds=lease_seconds)
        held = sa.tuple_(tasks.c.id, tasks.c.lease_token).in_(
            [(lease.task.id, lease.token) for lease in leases]
        )
        statement = (
            tasks.update()
            .where(held, status_is(PROCESSING))
            .values(lease_expires_at=expires)
            .returning(tasks.c.id, tasks.c.lease_token)
        )
        with self._db.one_statement(write=True, leasing=True) as conn:
            renewed = {(row[0], row[1]) for row in conn.execute(statement)}
        return [
            Lease(lease.task, lease.token, lease.worker, expires)
            if (lease.task.id, lease.token) in renewed
            else None
            for lease in leases
        ]

    def complete(self, lease: Lease, task: Task) -> None:
        """Record the final ``task`` and end the lease, if it is still held."""
        if not task.status.is_final or task.id != lease.task.id:
            raise ValueError(f"complete takes the leased task in a final status, not {task.status}")
        self._record(lease, task)

    def release(self, lease: Lease, task: Task) -> None:
        """Record the requeued ``task`` and end the lease, if it is still held."""
        if task.status != TaskStatus.QUEUED or task.id != lease.task.id:
            raise ValueError(f"release takes the leased task queued again, not {task.status}")
        self._record(lease, task)

    def wait(self, timeout: float) -> None:
        """Sleep until a task is queued (a notification, or one queued in this process), or
        until the next poll is due, or ``timeout`` passes."""
        if self.dialect == "postgresql":
            self._ensure_listener()
        self._wakeup.wait(timeout, self.poll_interval)

    def close(self) -> None:
        """Stop listening and close every pooled connection."""
        self._closed = True
        if self._listener is not None:
            self._listener.stop()
        self.engine.dispose()
        if self._leasing is not None:
            self._leasing.dispose()
            self._autocommit.dispose()

    # -- internals --------------------------------------------------------------------------

    def _record(self, lease: Lease, task: Task) -> None:
        if not self.record_many([(lease, task)])[0]:
            raise lease_lost(lease)

    def record_many(self, results: Sequence[tuple[Lease, Task]]) -> list[bool]:
        """Record several outcomes at once (one commit for the lot): each task is written only if
        its lease is still held. Returns, for each, whether it was recorded.

        Workers record the outcomes that are ready together with this; ``complete`` and
        ``release`` are the one-task case. On PostgreSQL the batch is one statement, a round trip
        by itself, which also sends the notifications (ended tasks, a requeued task now due).
        """
        recorded = self._record_many(results)
        self.completions.publish_tasks(
            task for (_, task), held in zip(results, recorded, strict=True) if held
        )
        return recorded

    def _record_many(self, results: Sequence[tuple[Lease, Task]]) -> list[bool]:
        if not results:
            return []
        now = self.clock()
        if self._hot is not None:
            # One statement in autocommit, which notifies by itself (a requeued task that is
            # due wakes idle workers; an ended one, waiters).
            batch = {**batch_parameters(results), "now": now}
            with driver_errors_mapped():
                rows = self._hot.record.run(self._autocommit, batch)
            held = {(row["id"], row["held_token"]) for row in rows}
            # By id and token: two leases on one task (an expired one and its successor) can
            # meet in one batch, and only the one still held is written.
            recorded = [(lease.task.id, lease.token) in held for lease, _ in results]
            if any(
                ok and task.status == TaskStatus.QUEUED and task.available_at <= now
                for ok, (_, task) in zip(recorded, results, strict=True)
            ):
                self._wakeup.wake()  # this process's idle workers, without the round trip
            return recorded
        parameters = [outcome(lease, task) for lease, task in results]
        with self._db.begin(write=True) as conn:
            if len(parameters) == 1:
                # One task (the usual complete/release): the guarded UPDATE alone says it all.
                recorded = [conn.execute(RECORD, parameters[0]).rowcount == 1]
            else:
                recorded = record_held(conn, results, parameters)
            if any(
                held and task.status == TaskStatus.QUEUED and task.available_at <= now
                for held, (_, task) in zip(recorded, results, strict=True)
            ):
                self._db.notify(conn)
        return recorded

    def _ensure_listener(self) -> Listener | None:
        if self._listener is None and not self._closed:
            with self._wakeup.lock:
                if self._listener is None:
                    self._listener = Listener(self._url, self._wakeup, self.completions)
                    self._listener.start()
        return self._listener

    def _listen_for_completions(self, timeout: float) -> None:
        """Before a waiter reads its task: be listening, so no end is missed (for at most
        ``timeout`` seconds: if the server does not answer, the waiter polls instead)."""
        listener = self._ensure_listener()
        if listener is not None:
            listener.tried.wait(min(timeout, LISTEN_TIMEOUT))


def _claim_key(task: Task) -> tuple[int, datetime, datetime, str]:
    return (-task.priority, task.available_at, task.created_at, task.id)
