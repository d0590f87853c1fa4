"""The queue half of :class:`~imageproc.backends.sql.SQLBackend`: claims, lease renewals, the
recording of outcomes, and idle workers waiting for work, on the tasks table the repository half
writes.

On PostgreSQL each claim, renewal and record is one statement in autocommit (one round trip),
on the driver's cursor where it is hottest (``_driver``).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Engine

from imageproc._clock import Clock
from imageproc._protocols import Lease, lease_lost
from imageproc._task import Task, TaskStatus
from imageproc.backends.sql._deliveries import delivery_rows, insert_deliveries
from imageproc.backends.sql._errors import driver_errors_mapped
from imageproc.backends.sql._listener import (
    DONE_CHANNEL,
    LISTEN_TIMEOUT,
    Listener,
    Wakeup,
)
from imageproc.backends.sql._schema import task_from_row, tasks
from imageproc.backends.sql._statements import (
    CLAIM,
    NO_LEASE,
    PROCESSING,
    PROGRESS,
    RECORD,
    RENEW,
    HotStatements,
    batch_parameters,
    outcome,
    record_held,
    status_is,
)
from imageproc.backends.sql._transactions import Transactions
from imageproc.delivery._completions import Completions
from imageproc.errors import ImageprocError, InvalidInput

__all__ = ["SQLQueue"]

logger = logging.getLogger("imageproc.sql")


class SQLQueue:
    """The :class:`~imageproc.Queue` (and :class:`~imageproc.BatchQueue`) methods of
    :class:`~imageproc.backends.sql.SQLBackend`, which sets up what they use."""

    dialect: str
    clock: Clock
    poll_interval: float
    completions: Completions
    _db: Transactions
    _wakeup: Wakeup
    _hot: HotStatements | None
    _leasing: Engine | None
    _autocommit: Engine
    _listener: Listener | None
    _closed: bool
    _url: sa.URL

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
        announced = False
        if self._hot is not None and self._leasing is not None:
            with driver_errors_mapped():
                claimed, unreadable = _read_claimed(self._hot.claim.run(self._leasing, parameters))
        else:
            # SQLite: the claim is a transaction anyway, so the webhooks of the tasks it buries
            # are written in it.
            with self._db.begin(write=True) as conn:
                claimed, unreadable = _read_claimed(
                    conn.execute(CLAIM, parameters).mappings().all()
                )
                buried_now = [t for t in claimed if t.status.is_final]
                insert_deliveries(conn, delivery_rows(buried_now, now))
                announced = True
        if unreadable:
            self._fail_unreadable(unreadable, token, now)
            self._ended_elsewhere(list(unreadable))
            self.completions.publish((task_id, None) for task_id in unreadable)
        leased = sorted((t for t in claimed if t.status == TaskStatus.PROCESSING), key=_claim_key)
        buried = len(claimed) - len(leased)
        if buried:
            logger.warning("%d task(s) dead: leases expired with no attempts left", buried)
            if not announced:
                self._announce_buried([t for t in claimed if t.status.is_final], now)
            self._ended_elsewhere([t.id for t in claimed if t.status.is_final])
            self.completions.publish_tasks(claimed)
        return [Lease(task, token + task.id, worker, expires) for task in leased], buried

    def _announce_buried(self, buried: list[Task], now: datetime) -> None:
        """PostgreSQL: write the webhooks of tasks the claim itself ended (dead: their last
        lease expired). The claim is a statement of its own, so this follows it in a second
        transaction: the one place a final status and its delivery are not written together
        (a crash between the two loses that webhook)."""
        rows = delivery_rows(buried, now)
        if not rows:
            return
        try:
            with self._db.begin(write=True) as conn:
                insert_deliveries(conn, rows)
        except ImageprocError:
            logger.exception("could not write the webhooks of %d dead task(s)", len(rows))

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

    def report_progress(self, lease: Lease, variants_done: int) -> bool:
        """Record how many variants the leased task has made, if the lease is still held."""
        parameters = {
            "held_id": lease.task.id,
            "held_token": lease.token,
            "variants_done": variants_done,
        }
        with self._db.one_statement(write=True, leasing=True) as conn:
            return conn.execute(PROGRESS, parameters).rowcount == 1

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
            batch = batch_parameters(results, now)
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
            # The webhook outbox, in the transaction that records the statuses it announces.
            insert_deliveries(
                conn,
                delivery_rows(
                    (task for ok, (_, task) in zip(recorded, results, strict=True) if ok), now
                ),
            )
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


def _read_claimed(rows: Sequence[Mapping[Any, Any]]) -> tuple[list[Task], dict[str, str]]:
    """The claimed tasks, and the ids of those whose records cannot be read, with why."""
    claimed: list[Task] = []
    unreadable: dict[str, str] = {}
    for row in rows:
        try:
            claimed.append(task_from_row(row))
        except InvalidInput as error:
            unreadable[row["id"]] = error.message
    return claimed, unreadable


def _claim_key(task: Task) -> tuple[int, datetime, datetime, str]:
    return (-task.priority, task.available_at, task.created_at, task.id)
