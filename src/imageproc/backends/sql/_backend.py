"""The SQL backend: :class:`SQLBackend` is both the Repository and the Queue, on one table.

SQLite (one file, no server) is the embedded default; PostgreSQL lets any number of worker
processes on any number of machines share one queue, coordinated by the database alone.

A claim is one statement: a CTE picks the claimable rows in claim order with
``FOR UPDATE SKIP LOCKED`` (PostgreSQL; SQLite serialises writers with ``BEGIN IMMEDIATE``), and
an ``UPDATE … RETURNING`` leases them. *Claimable* is "queued and due, or processing under a lease
that has expired", so a crashed worker's task is rescued by the next claim with no sweeper to
forget. Completing, releasing and renewing match the lease token, so a worker whose lease was
taken over cannot overwrite the new holder's result. On PostgreSQL each of these is one
statement in autocommit (one round trip), and :meth:`SQLBackend.record_many` writes a whole batch
with one ``UPDATE … FROM jsonb_to_recordset(…)``, matched by id and lease token.

Idle workers wake through ``LISTEN``/``NOTIFY`` on PostgreSQL (sent in the transaction that
queues a task, not by a trigger) and fall back to polling; on SQLite they poll with backoff, and
tasks queued by the same process wake them at once.

Every task recorded in a final status is published to :attr:`SQLBackend.completions` after the
commit, so ``Processor.wait`` in this process returns at once. On PostgreSQL the recording
statement also notifies the ``imageproc_done`` channel with the task's id, and one listening
connection per backend (the same one that wakes idle workers) publishes what other processes
finished; on SQLite, ends recorded by another process are found by the waiters' short poll
(:data:`SQLITE_WAIT_POLL`).

Errors from the driver are mapped at this boundary: a lost connection, a restarting server or a
locked SQLite file raise :class:`~imageproc.BackendUnavailable` (transient).
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import select
import threading
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from importlib.resources import as_file, files
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy import event, exc
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection, Engine

from imageproc._clock import Clock, utcnow
from imageproc._errors import (
    BackendUnavailable,
    ConfigurationError,
    ImageprocError,
    InvalidInput,
    TaskNotFound,
    copies_for,
)
from imageproc._protocols import Lease, QueueLimits, QueueStats, check_admission, lease_lost
from imageproc._task import LEASE_EXPIRED, Task, TaskStatus
from imageproc.backends.sql import _schema as sqlschema
from imageproc.backends.sql._driver import HotStatement
from imageproc.backends.sql._groupcommit import GroupCommit
from imageproc.backends.sql._schema import (
    OUTCOME_COLUMNS,
    PIPELINE_TEXT,
    VERSION_TABLE,
    UTCDateTime,
    task_from_row,
    task_to_row,
    tasks,
)
from imageproc.delivery._completions import Completions

__all__ = ["SQLBackend"]

logger = logging.getLogger("imageproc.sql")

CHANNEL = "imageproc_tasks"
#: Notified with a task's id when it ends (PostgreSQL).
DONE_CHANNEL = "imageproc_done"
#: Seconds between a waiter's reads of its task where ends are not pushed: SQLite written by
#: another process, or PostgreSQL while the listener is not connected.
SQLITE_WAIT_POLL: Final = 0.1
_UNHEARD_POLL: Final = 0.25
#: PostgreSQL, listening: a waiter still reads its task this often, for ends nobody notified
#: (a row changed by hand in SQL, a pooler in transaction mode that drops LISTEN).
_SAFETY_POLL: Final = 5.0
#: Seconds a first waiter waits for the listener to connect before it falls back to polling.
_LISTEN_TIMEOUT: Final = 5.0
_FINAL = [s.value for s in TaskStatus if s.is_final]
_QUEUED, _PROCESSING = TaskStatus.QUEUED.value, TaskStatus.PROCESSING.value


def _status_is(status: str) -> sa.ColumnElement[bool]:
    """``status = '<status>'`` with the status written into the SQL rather than bound, so that a
    plan made once for every execution of a prepared statement (a generic plan) can still use
    the partial indexes on status."""
    return tasks.c.status == sa.literal_column(f"'{TaskStatus(status).value}'")


_CLAIM_ORDER = (tasks.c.priority.desc(), tasks.c.available_at, tasks.c.created_at, tasks.c.id)


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
        parsed = sa.make_url(url)
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")  # psycopg 3, not psycopg2
        self.clock = clock
        self.poll_interval = poll_interval
        self.dialect = parsed.get_backend_name()
        if self.dialect not in ("sqlite", "postgresql"):
            raise ConfigurationError(
                f"unsupported database {self.dialect!r}; use SQLite or PostgreSQL"
            )
        if self.dialect == "sqlite":
            connect_args = engine_options.setdefault("connect_args", {})
            connect_args.setdefault("timeout", sqlite_busy_timeout)
            connect_args.setdefault("check_same_thread", False)
        try:
            self.engine: Engine = sa.create_engine(parsed, **engine_options)
        except ImportError as error:  # the driver SQLAlchemy loads for the URL
            raise ConfigurationError(
                f"{parsed.drivername} needs the {error.name or 'driver'} package, which is not"
                " installed: install imageproc's 'postgres' extra (pip install '.[postgres]' in"
                " a checkout)"
            ) from error
        # PostgreSQL: statements that are transactions by themselves, and claims and renewals,
        # on pools of their own; the claim, the batch record and the read on the driver's cursor.
        self._autocommit: Engine = self.engine  # unused on SQLite (see _one_statement)
        self._leasing: Engine | None = None
        self._hot: _HotStatements | None = None
        if self.dialect == "sqlite":
            _configure_sqlite(self.engine)
        else:
            _check_connections_on_checkout(self.engine)
            _plan_once(self.engine)
            self._autocommit = _statement_engine(parsed, engine_options, durable=True)
            self._leasing = _statement_engine(parsed, engine_options, durable=False)
            self._hot = _HotStatements(self.engine.dialect)
        self._url = parsed
        self._wakeup = _Wakeup()
        # Per thread, the transaction _begin has open: whether it queued work (see _notify).
        self._transaction = threading.local()
        self._listener: _Listener | None = None
        self._closed = False
        #: Told of every task this backend records in a final status (and, on PostgreSQL, of
        #: those other processes record); ``Processor.wait`` stands on it.
        self.completions = Completions(
            poll_interval=SQLITE_WAIT_POLL if self.dialect == "sqlite" else _UNHEARD_POLL,
            activate=self._listen_for_completions if self.dialect == "postgresql" else None,
        )

    # -- schema -----------------------------------------------------------------------------

    def migrate(self) -> None:
        """Create or upgrade imageproc's tables to the newest schema (safe to run concurrently)."""
        from alembic import command
        from alembic.config import Config

        with (
            as_file(files("imageproc") / "migrations") as location,
            self._begin(write=True) as conn,
        ):
            config = Config()
            config.set_main_option("script_location", str(location))
            config.attributes["connection"] = conn
            command.upgrade(config, "head")

    def schema_revision(self) -> str | None:
        """The schema revision the database is at, or None before the first migration."""
        with self._begin() as conn:
            if not sa.inspect(conn).has_table(VERSION_TABLE):
                return None
            return conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()

    # -- Repository -------------------------------------------------------------------------

    def add(self, task: Task, *, limits: QueueLimits | None = None) -> None:
        """Record a new task; a queued one is claimable at once (and idle workers are woken).
        :class:`~imageproc.QueueFull` if it would pass ``limits``.

        On SQLite, tasks that threads add at the same time share one transaction (a group
        commit, :mod:`imageproc.backends.sql._groupcommit`): SQLite has one writer at a time, so
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
            with self._begin(write=True) as conn:
                # One statement with a list of rows: compiled once and cached, where building
                # it with .values(**row) cost more CPU than the insert itself.
                conn.execute(tasks.insert(), [task_to_row(task) for task in batch])
                if any(task.status == TaskStatus.QUEUED for task in batch):
                    self._notify(conn)
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
                with self._one_statement() as conn:
                    duplicate = _exists(conn, batch[0].id)
                if duplicate:
                    refused = ValueError(f"task {batch[0].id} already exists")
                else:
                    refused = ValueError(f"task {batch[0].id} was refused: {_brief(error)}")
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
        with self._begin(write=True) as conn:
            self._admit(conn, tasks, limits)
            try:
                # `tasks` is the argument here: the table is sqlschema's.
                conn.execute(sqlschema.tasks.insert(), [task_to_row(task) for task in tasks])
            except exc.IntegrityError as error:
                raise ValueError(f"a task already exists ({_brief(error)})") from error
            if any(task.status == TaskStatus.QUEUED for task in tasks):
                self._notify(conn)

    def get(self, task_id: str) -> Task:
        """The task with this id, or :class:`~imageproc.TaskNotFound`."""
        row: Mapping[Any, Any] | None
        if self._hot is not None:
            with _driver_errors_mapped():
                rows = self._hot.get.run(self._autocommit, {"task_id": task_id})
            row = rows[0] if rows else None
        else:
            with self._one_statement() as conn:
                row = conn.execute(_GET, {"task_id": task_id}).mappings().first()
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
        with self._begin(write=True) as conn:
            if expected.status != TaskStatus.QUEUED:
                self._admit(conn, [task], limits)
            result = conn.execute(
                tasks.update()
                .where(
                    tasks.c.id == task.id,
                    tasks.c.status == expected.status.value,
                    tasks.c.updated_at == expected.updated_at,
                )
                .values(**task_to_row(task), **_NO_LEASE)
            )
            if result.rowcount == 0:
                if not _exists(conn, task.id):
                    raise TaskNotFound(f"no task with id {task.id!r}")
                return False
            if task.status == TaskStatus.QUEUED:
                self._notify(conn)
            elif task.status.is_final and self.dialect == "postgresql":
                conn.execute(sa.select(sa.func.pg_notify(DONE_CHANNEL, task.id)))
            return True

    def purge(self, before: datetime, *, limit: int = 500) -> list[Task]:
        """Delete up to ``limit`` finished tasks that finished before ``before``; return them."""
        with self._begin(write=True) as conn:
            ids = (
                sa.select(tasks.c.id)
                .where(tasks.c.status.in_(_FINAL), tasks.c.finished_at < before)
                .order_by(tasks.c.finished_at)
                .limit(limit)
            )
            if self.dialect == "postgresql":
                ids = ids.with_for_update(skip_locked=True)
            rows = conn.execute(
                tasks.delete().where(tasks.c.id.in_(ids.scalar_subquery())).returning(*tasks.c)
            ).mappings()
            return [task_from_row(row) for row in rows]

    def source_in_use(self, source_key: str) -> bool:
        """Whether any task still refers to the original under ``source_key``."""
        with self._one_statement() as conn:
            query = sa.select(tasks.c.id).where(tasks.c.source_key == source_key).limit(1)
            return conn.execute(query).first() is not None

    def find(self, status: TaskStatus, *, owner: str | None = None, limit: int = 100) -> list[Task]:
        """Tasks in ``status`` (and of ``owner``), most recently changed first.

        Queued and processing tasks are found through the claim indexes; the final statuses
        are read by scanning, which is what an occasional look at the dead-letter set costs
        (an index on them would slow every status change of the hot table).
        """
        query = sa.select(tasks).where(tasks.c.status == status.value)
        if owner is not None:
            query = query.where(tasks.c.owner == owner)
        query = query.order_by(tasks.c.updated_at.desc(), tasks.c.id.desc()).limit(max(limit, 0))
        with self._one_statement() as conn:
            return [task_from_row(row) for row in conn.execute(query).mappings()]

    def queue_stats(self) -> QueueStats:
        """Counts of queued and processing tasks and the oldest due one, in one query."""
        now = self.clock()
        queued = tasks.c.status == _QUEUED
        query = sa.select(
            sa.func.count().filter(queued),
            sa.func.count().filter(tasks.c.status == _PROCESSING),
            sa.func.min(tasks.c.available_at).filter(queued, tasks.c.available_at <= now),
        ).where(tasks.c.status.in_([_QUEUED, _PROCESSING]))
        with self._one_statement() as conn:
            waiting, running, oldest = conn.execute(query).one()
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
            with _driver_errors_mapped():
                rows = self._hot.claim.run(self._leasing, parameters)
        else:
            with self._one_statement(write=True, leasing=True) as conn:
                rows = conn.execute(_CLAIM, parameters).mappings().all()
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
            with self._one_statement() as conn:
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
        with self._begin(write=True) as conn:
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
                        **_NO_LEASE,
                    )
                )

    def renew(self, lease: Lease, *, lease_seconds: float) -> Lease:
        """Extend ``lease`` to ``lease_seconds`` from now, if it is still held."""
        expires = self.clock() + timedelta(seconds=lease_seconds)
        parameters = {"held_id": lease.task.id, "held_token": lease.token, "expires": expires}
        with self._one_statement(write=True, leasing=True) as conn:
            result = conn.execute(_RENEW, parameters)
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
            .where(held, _status_is(_PROCESSING))
            .values(lease_expires_at=expires)
            .returning(tasks.c.id, tasks.c.lease_token)
        )
        with self._one_statement(write=True, leasing=True) as conn:
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
            batch = {**_batch_parameters(results), "now": now}
            with _driver_errors_mapped():
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
        parameters = [_outcome(lease, task) for lease, task in results]
        with self._begin(write=True) as conn:
            if len(parameters) == 1:
                # One task (the usual complete/release): the guarded UPDATE alone says it all.
                recorded = [conn.execute(_RECORD, parameters[0]).rowcount == 1]
            else:
                recorded = self._record_batch(conn, results, parameters)
            if any(
                held and task.status == TaskStatus.QUEUED and task.available_at <= now
                for held, (_, task) in zip(recorded, results, strict=True)
            ):
                self._notify(conn)
        return recorded

    def _record_batch(
        self,
        conn: Connection,
        results: Sequence[tuple[Lease, Task]],
        parameters: list[dict[str, Any]],
    ) -> list[bool]:
        # SQLite, where every writer holds the database lock: find the rows these leases still
        # hold, then write them in one executemany; rowcount alone could not say which.
        held_query = sa.select(tasks.c.id, tasks.c.lease_token).where(
            sa.tuple_(tasks.c.id, tasks.c.lease_token).in_(
                [(lease.task.id, lease.token) for lease, _ in results]
            ),
            tasks.c.status == _PROCESSING,
        )
        held = {(row[0], row[1]) for row in conn.execute(held_query)}
        recorded = [(lease.task.id, lease.token) in held for lease, _ in results]
        mine = [p for p, ok in zip(parameters, recorded, strict=True) if ok]
        if mine:
            conn.execute(_RECORD, mine)
        return recorded

    def _admit(self, conn: Connection, adding: Sequence[Task], limits: QueueLimits | None) -> None:
        """Check ``limits`` for ``adding`` in the transaction that records them; the counts
        cannot change before it commits (on PostgreSQL an advisory lock held to the commit
        orders admissions; SQLite's writing transactions are one at a time already)."""
        if limits is None or not limits.any:
            return
        if not any(task.status == TaskStatus.QUEUED for task in adding):
            return
        if self.dialect == "postgresql":
            # The counts must see what the lock's last holder committed: a snapshot taken at the
            # first statement (a server defaulting to REPEATABLE READ) would not. This runs
            # first in its transaction, where the level can still be set.
            conn.execute(sa.text("SET TRANSACTION ISOLATION LEVEL READ COMMITTED"))
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_ADMISSION_LOCK)))
        queued = 0
        if limits.max_queued is not None:
            queued = _count_queued(conn, None, limits.max_queued + 1)
        by_owner = {}
        if limits.max_queued_per_owner is not None:
            for owner in {task.owner for task in adding if task.owner is not None}:
                by_owner[owner] = _count_queued(conn, owner, limits.max_queued_per_owner + 1)
        check_admission(queued, by_owner, adding, limits)

    def _notify(self, conn: Connection) -> None:
        if self.dialect == "postgresql":
            conn.execute(sa.select(sa.func.pg_notify(CHANNEL, "")))
        # Workers of this process wake at once, whatever the database, once the _begin this
        # runs in has committed. A mark for _begin, not a commit listener: registering a
        # listener on each transaction's connection cost more CPU than the insert it follows.
        self._transaction.wake = True

    @contextlib.contextmanager
    def _begin(self, *, write: bool = False) -> Iterator[Connection]:
        """A transaction, with driver errors mapped; on SQLite a writing one starts IMMEDIATE so
        concurrent writers queue on the busy timeout instead of failing on lock upgrade."""
        with _driver_errors_mapped(), self.engine.connect() as conn:
            if write and self.dialect == "sqlite":
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
    def _one_statement(self, *, write: bool = False, leasing: bool = False) -> Iterator[Connection]:
        """A connection for one statement that is a transaction by itself, with driver errors
        mapped: on PostgreSQL in autocommit, which spares the round trips of ``BEGIN`` and
        ``COMMIT`` (the statement is still atomic); on SQLite a transaction as :meth:`_begin`
        starts one (no round trips to spare there). ``leasing``: a claim or a renewal, which on
        PostgreSQL commits without waiting for the disk (:func:`_statement_engine`)."""
        if self.dialect != "postgresql":
            with self._begin(write=write) as conn:
                yield conn
            return
        engine = self._leasing if leasing and self._leasing is not None else self._autocommit
        with _driver_errors_mapped(), engine.connect() as conn:
            yield conn

    def _ensure_listener(self) -> _Listener | None:
        if self._listener is None and not self._closed:
            with self._wakeup.lock:
                if self._listener is None:
                    self._listener = _Listener(self._url, self._wakeup, self.completions)
                    self._listener.start()
        return self._listener

    def _listen_for_completions(self, timeout: float) -> None:
        """Before a waiter reads its task: be listening, so no end is missed (for at most
        ``timeout`` seconds: if the server does not answer, the waiter polls instead)."""
        listener = self._ensure_listener()
        if listener is not None:
            listener.tried.wait(min(timeout, _LISTEN_TIMEOUT))


@contextlib.contextmanager
def _driver_errors_mapped() -> Iterator[None]:
    """Turn the driver's errors into imageproc's: a missing schema is a ConfigurationError, a
    lost connection or a locked file BackendUnavailable."""
    try:
        yield
    except exc.ProgrammingError as error:
        raise _schema_error(error) from error
    except (exc.OperationalError, exc.InterfaceError) as error:
        if "no such table" in str(error.orig):  # SQLite's word for a missing schema
            raise _schema_error(error) from error
        raise BackendUnavailable(f"database unavailable: {_brief(error)}") from error
    except exc.DBAPIError as error:
        if error.connection_invalidated:
            raise BackendUnavailable(f"database connection lost: {_brief(error)}") from error
        raise
    except exc.TimeoutError as error:
        raise BackendUnavailable("no database connection free in time") from error


_NO_LEASE: dict[str, Any] = {"lease_token": None, "lease_owner": None, "lease_expires_at": None}


def _claim_statement() -> sa.Update:
    """The claim, built once with bound parameters ``now``, ``expires``, ``token``, ``worker``
    and ``n`` (the batch size)."""
    now = sa.bindparam("now", type_=UTCDateTime)
    expires = sa.bindparam("expires", type_=UTCDateTime)
    limit = sa.bindparam("n", type_=sa.Integer)
    expired = _status_is(_PROCESSING)
    exhausted = sa.and_(expired, tasks.c.attempts >= tasks.c.max_attempts)

    # Two small index walks, each stopping after `n` rows: queued tasks that are due (in claim
    # order, on the queued-only index), and tasks whose lease expired (on the processing-only
    # index). One OR over both makes PostgreSQL's planner fall back to sorting every live row
    # whenever its estimates of the hot table go stale.
    def candidates(where: sa.ColumnElement[bool], *order: Any) -> sa.CTE:
        return (
            sa.select(tasks.c.id, tasks.c.priority, tasks.c.available_at, tasks.c.created_at)
            .where(where)
            .order_by(*order)
            .limit(limit)
            .with_for_update(skip_locked=True)
            .cte()
        )

    due = candidates(sa.and_(_status_is(_QUEUED), tasks.c.available_at <= now), *_CLAIM_ORDER)
    lapsed = candidates(sa.and_(expired, tasks.c.lease_expires_at <= now), tasks.c.lease_expires_at)
    both = sa.union_all(sa.select(due), sa.select(lapsed)).subquery()
    picked = (
        sa.select(both.c.id)
        .order_by(both.c.priority.desc(), both.c.available_at, both.c.created_at, both.c.id)
        .limit(limit)
    )

    def unless_exhausted(leased: Any, dead: Any) -> sa.ColumnElement[Any]:
        return sa.case((exhausted, dead), else_=leased)

    return (
        tasks.update()
        .where(tasks.c.id.in_(picked.scalar_subquery()))
        .values(
            # queued → processing, or processing (lease expired) → processing / dead: the same
            # moves as Task.claim and Task.after_failure, done in the database.
            status=unless_exhausted(_PROCESSING, TaskStatus.DEAD.value),
            attempts=unless_exhausted(tasks.c.attempts + 1, tasks.c.attempts),
            started_at=unless_exhausted(now, tasks.c.started_at),
            finished_at=unless_exhausted(tasks.c.finished_at, now),
            updated_at=now,
            # A rescued task says why its last attempt ended.
            error_code=sa.case((expired, LEASE_EXPIRED.code), else_=tasks.c.error_code),
            error_message=sa.case((expired, LEASE_EXPIRED.message), else_=tasks.c.error_message),
            lease_token=unless_exhausted(sa.bindparam("token", type_=sa.String) + tasks.c.id, None),
            lease_owner=unless_exhausted(sa.bindparam("worker", type_=sa.String), None),
            lease_expires_at=unless_exhausted(expires, None),
        )
        .returning(*(PIPELINE_TEXT if c.name == "pipeline" else c for c in tasks.c))
    )


_CLAIM: Final = _claim_statement()
# Built once (not per call: building and keying a statement cost more CPU than running it); the
# pipeline comes as JSON text, which is parsed once per distinct pipeline.
_GET: Final = sa.select(*(PIPELINE_TEXT if c.name == "pipeline" else c for c in tasks.c)).where(
    tasks.c.id == sa.bindparam("task_id")
)


# Recording and renewing match the lease: the row's id, its token, and that it is processing.
_HELD: Final = (
    tasks.c.id == sa.bindparam("held_id"),
    tasks.c.lease_token == sa.bindparam("held_token"),
    tasks.c.status == _PROCESSING,
)
# Recording writes only what an outcome can change: no pipeline JSON to encode, less to write.
_RECORD: Final = (
    tasks.update()
    .where(*_HELD)
    .values(
        {
            **{name: sa.bindparam(name, type_=tasks.c[name].type) for name in OUTCOME_COLUMNS},
            **_NO_LEASE,
        }
    )
)
_RENEW: Final = (
    tasks.update().where(*_HELD).values(lease_expires_at=sa.bindparam("expires", type_=UTCDateTime))
)


def _record_batch_statement() -> sa.Select[Any]:
    """PostgreSQL: record a whole batch in one statement, whatever its size.

    The parameter ``batch`` is a JSON array with one object per task (``held_id`` and
    ``held_token`` name the lease, the others are :data:`OUTCOME_COLUMNS`), which
    ``jsonb_to_recordset`` turns into rows; each task is written only while its lease is held, and
    the id and lease token of each written are returned. The same statement notifies:
    ``imageproc_done`` with the id of each task that ended (waiters in any process),
    ``imageproc_tasks`` if a task put back is due at ``now`` (idle workers). The statement's
    text never changes, so it is compiled once and prepared once per connection."""
    columns: dict[str, Any] = {
        "held_id": sa.Text(),
        "held_token": sa.Text(),
        **{name: tasks.c[name].type for name in OUTCOME_COLUMNS},
        "outputs": postgresql.JSONB(),
    }
    rows = (
        sa.func.jsonb_to_recordset(sa.cast(sa.bindparam("batch", type_=sa.Text), postgresql.JSONB))
        .table_valued(*(sa.column(name, kind) for name, kind in columns.items()))
        .render_derived(name="batch", with_types=True)
    )
    recorded = (
        tasks.update()
        .where(
            tasks.c.id == rows.c.held_id,
            tasks.c.lease_token == rows.c.held_token,
            tasks.c.status == _PROCESSING,
        )
        .values(
            {
                **{name: rows.c[name] for name in OUTCOME_COLUMNS},
                **{name: sa.null() for name in _NO_LEASE},
            }
        )
        .returning(tasks.c.id, rows.c.held_token, tasks.c.status, tasks.c.available_at)
        .cte("recorded")
    )
    now = sa.bindparam("now", type_=UTCDateTime)
    ended = recorded.c.status.in_([sa.literal_column(f"'{value}'") for value in _FINAL])
    due = sa.and_(
        recorded.c.status == sa.literal_column(f"'{_QUEUED}'"), recorded.c.available_at <= now
    )
    return sa.select(
        recorded.c.id,
        recorded.c.held_token,
        sa.case((ended, sa.func.pg_notify(DONE_CHANNEL, recorded.c.id)), else_=None),
        sa.case((due, sa.func.pg_notify(CHANNEL, "")), else_=None),
    )


_RECORD_BATCH: Final = _record_batch_statement()


def _batch_parameters(results: Sequence[tuple[Lease, Task]]) -> dict[str, str]:
    """The parameter of :data:`_RECORD_BATCH`, its rows in the order of the tasks' ids (so
    concurrent batches lock the rows they share in one order)."""
    rows = sorted((_outcome(lease, task) for lease, task in results), key=lambda r: r["held_id"])
    return {"batch": json.dumps(rows, default=_utc_text)}


def _utc_text(value: object) -> str:
    """A timestamp in the batch's JSON: ISO 8601 in UTC, to the microsecond (as
    :class:`UTCDateTime` would bind it, naive ones refused alike)."""
    if not isinstance(value, datetime):
        raise TypeError(f"{type(value).__name__} in a recorded task")
    if value.tzinfo is None:
        raise ValueError("naive datetime given to a timezone-aware column")
    return value.astimezone(UTC).isoformat()


def _outcome(lease: Lease, task: Task) -> dict[str, Any]:
    row = task_to_row(task, only=OUTCOME_COLUMNS)
    return {**row, "held_id": lease.task.id, "held_token": lease.token}


def _exists(conn: Connection, task_id: str) -> bool:
    """Whether a task with this id is recorded (its row is not read)."""
    return conn.execute(sa.select(tasks.c.id).where(tasks.c.id == task_id)).first() is not None


def _schema_error(error: exc.DBAPIError) -> ConfigurationError:
    return ConfigurationError(
        f"imageproc's tables are missing or out of date ({_brief(error)}); run migrate()"
    )


def _claim_key(task: Task) -> tuple[int, datetime, datetime, str]:
    return (-task.priority, task.available_at, task.created_at, task.id)


def _brief(error: exc.DBAPIError | exc.SQLAlchemyError) -> str:
    """The first line of the driver's message, without the SQL or parameters it carries."""
    original = getattr(error, "orig", None) or error
    return (
        str(original).strip().splitlines()[0][:200]
        if str(original).strip()
        else type(original).__name__
    )


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


class _HotStatements:
    """The statements a worker pool runs most, compiled once for this backend's dialect and run
    on the driver's cursor (:mod:`imageproc.backends.sql._driver`)."""

    def __init__(self, dialect: sa.Dialect) -> None:
        self.claim = HotStatement(_CLAIM, dialect)
        self.record = HotStatement(_RECORD_BATCH, dialect)
        self.get = HotStatement(_GET, dialect)


def _statement_engine(url: sa.URL, engine_options: dict[str, Any], *, durable: bool) -> Engine:
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


class _Wakeup:
    """Wakes idle workers: after a commit that queued work (this process), or on a notification
    (PostgreSQL). Each thread notes the wake-up count when it claims, so a wake-up that arrives
    between its empty claim and its wait is not missed. Between wake-ups, waits poll, backing off
    from 50 ms to the poll interval while the queue stays empty."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._changed = threading.Condition(self.lock)
        self._generation = 0
        self._local = threading.local()

    def wake(self) -> None:
        with self._changed:
            self._generation += 1
            self._changed.notify_all()

    def mark(self) -> None:
        """Note the wake-up count as this thread starts a claim."""
        self._local.seen = self._generation

    def claimed(self) -> None:
        """This thread found work: poll eagerly again next time the queue runs dry."""
        self._local.backoff = _FIRST_POLL

    def wait(self, timeout: float, poll_interval: float) -> None:
        backoff = getattr(self._local, "backoff", _FIRST_POLL)
        self._local.backoff = min(backoff * 2, poll_interval)
        with self._changed:
            seen = getattr(self._local, "seen", self._generation)
            self._changed.wait_for(lambda: self._generation != seen, timeout=min(timeout, backoff))
            self._local.seen = self._generation


_FIRST_POLL = 0.05


class _Listener(threading.Thread):
    """LISTENs on its own autocommit psycopg connection: a queued task wakes idle workers, an
    ended one is published to the waiters. Reconnects with backoff when the server goes away;
    while it is not listening, waiters poll (:data:`_UNHEARD_POLL`)."""

    def __init__(self, url: sa.URL, wakeup: _Wakeup, completions: Completions) -> None:
        super().__init__(name="imageproc-listener", daemon=True)
        self._conninfo = _libpq_conninfo(url)
        self._wakeup = wakeup
        self._completions = completions
        self._stopping = threading.Event()
        #: Set once the first attempt to listen has ended, listening or not.
        self.tried = threading.Event()

    def stop(self) -> None:
        self._stopping.set()
        self.join(timeout=5)

    def run(self) -> None:
        import psycopg

        delay, reconnecting = 0.1, False
        while not self._stopping.is_set():
            try:
                with psycopg.connect(self._conninfo, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    conn.execute(f"LISTEN {DONE_CHANNEL}")
                    delay = 0.1
                    self._completions.poll_interval = _SAFETY_POLL  # every end is heard now
                    self.tried.set()
                    if reconnecting:
                        # For anything queued or ended while we were not listening.
                        self._wakeup.wake()
                        self._completions.publish_all()
                    reconnecting = True
                    while not self._stopping.is_set():
                        for notice in conn.notifies(timeout=1.0, stop_after=1):
                            if notice.channel == DONE_CHANNEL:
                                self._completions.publish(((notice.payload, None),))
                            else:
                                self._wakeup.wake()
            except Exception as error:  # psycopg's errors, and anything else: listen again
                reconnecting = True
                self._completions.poll_interval = _UNHEARD_POLL
                self.tried.set()
                # Waiters asleep on the push: have them read, and poll until it is back.
                self._completions.publish_all()
                logger.warning("listener lost its connection (%s); retrying", _first_line(error))
                self._stopping.wait(delay)
                delay = min(delay * 2, 10.0)


def _libpq_conninfo(url: sa.URL) -> str:
    """The libpq connection string of a SQLAlchemy URL, its query (``options``, ``sslmode``, …)
    passed as parameters: rendered as a URL, a space in ``options`` would reach the server as
    ``+``."""
    import psycopg

    query = {
        key: value if isinstance(value, str) else value[-1] for key, value in url.query.items()
    }
    parameters = {
        "host": url.host,
        "port": url.port,
        "user": url.username,
        "password": url.password,
        "dbname": url.database,
        **query,
    }
    return psycopg.conninfo.make_conninfo(
        "", **{key: value for key, value in parameters.items() if value is not None}
    )


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


#: The PostgreSQL advisory lock that orders admissions under queue limits (any constant that
#: nothing else uses: "imgprocQ" in ASCII).
_ADMISSION_LOCK: Final = 0x696D6770726F6351


def _count_queued(conn: Connection, owner: str | None, cap: int) -> int:
    """Queued tasks (``owner``'s only, if given), counted up to ``cap``: a limit needs no more,
    and the count walks the partial index of queued tasks no further."""
    query = sa.select(sa.literal(1)).where(tasks.c.status == TaskStatus.QUEUED.value)
    if owner is not None:
        query = query.where(tasks.c.owner == owner)
    return int(
        conn.execute(
            sa.select(sa.func.count()).select_from(query.limit(cap).subquery())
        ).scalar_one()
    )
