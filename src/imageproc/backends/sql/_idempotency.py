"""Idempotency keys in SQL: remembered in the transaction that records their task.

Two requests under one key race to insert the key's row; the primary key (scope, key) lets one
win. On PostgreSQL the loser's ``INSERT … ON CONFLICT DO NOTHING`` waits for the winner's
transaction and then does nothing, and its next statement (READ COMMITTED) reads the winner's
row; on SQLite writing transactions are one at a time already.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy import exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from imageproc._idempotency import IdempotencyRecord
from imageproc._protocols import QueueLimits
from imageproc._task import Task, TaskStatus
from imageproc.backends.sql._admission import admit, read_committed
from imageproc.backends.sql._errors import brief
from imageproc.backends.sql._schema import idempotency_keys as keys
from imageproc.backends.sql._schema import task_to_row, tasks

__all__ = ["add_keyed", "find_key", "purge_keys", "queued"]

#: A winner's row that vanished between the conflict and the read (it expired and was purged
#: in that instant) means trying the insert again; this many times at most.
_ROUNDS: Final = 3


def find_key(conn: Connection, scope: str, key: str, now: datetime) -> IdempotencyRecord | None:
    """The live record of ``key`` in ``scope``, if any."""
    row = (
        conn.execute(
            sa.select(keys).where(keys.c.scope == scope, keys.c.key == key, keys.c.expires_at > now)
        )
        .mappings()
        .first()
    )
    return None if row is None else _record(row)


def add_keyed(
    conn: Connection,
    record: IdempotencyRecord,
    task: Task | None,
    limits: QueueLimits | None,
    *,
    dialect: str,
    isolation_set: bool = False,
) -> IdempotencyRecord:
    """In ``conn``'s transaction, which has run nothing yet unless ``isolation_set`` (it is at
    READ COMMITTED already: the engine's level, or the application's transaction, checked):
    remember ``record`` and insert ``task``, or, if the key is remembered already, return that
    record and insert nothing."""
    if not isolation_set:
        read_committed(conn, dialect=dialect)
    if task is not None:
        # Before the key: under limits, PostgreSQL orders admissions by a lock taken first.
        admit(conn, [task], limits, dialect=dialect, isolation_set=True)
    # One statement takes the key: inserted if new, taken over if it expired (the update's
    # condition), and nothing if it is live. RETURNING says which: the drivers' rowcounts for
    # a skipped row differ (psycopg reports none).
    insert = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(keys)
    take = insert.on_conflict_do_update(
        index_elements=[keys.c.scope, keys.c.key],
        set_={column.name: insert.excluded[column.name] for column in keys.columns},
        where=keys.c.expires_at <= record.remembered_at,
    ).returning(keys.c.key)
    for _ in range(_ROUNDS):
        if conn.execute(take, _row(record)).first() is not None:
            break
        known = find_key(conn, record.scope, record.key, record.remembered_at)
        if known is not None:
            return known
    else:
        raise RuntimeError(f"idempotency key {record.key!r} could be neither taken nor read")
    if task is not None:
        try:
            conn.execute(tasks.insert(), [task_to_row(task)])
        except exc.IntegrityError as error:
            raise ValueError(f"task {task.id} was refused: {brief(error)}") from error
    return record


def purge_keys(conn: Connection, now: datetime, limit: int) -> int:
    """Forget up to ``limit`` keys expired at ``now``; how many."""
    expired = (
        sa.select(keys.c.scope, keys.c.key)
        .where(keys.c.expires_at <= now)
        .order_by(keys.c.expires_at)
        .limit(max(limit, 0))
    )
    result = conn.execute(keys.delete().where(sa.tuple_(keys.c.scope, keys.c.key).in_(expired)))
    return int(result.rowcount)


def queued(task: Task | None) -> bool:
    """Whether recording ``task`` gives the workers something to claim."""
    return task is not None and task.status == TaskStatus.QUEUED


def _row(record: IdempotencyRecord) -> dict[str, Any]:
    return {
        "scope": record.scope,
        "key": record.key,
        "fingerprint": record.fingerprint,
        "task_id": record.task_id,
        "status": record.status.value,
        "created_at": record.created_at,
        "remembered_at": record.remembered_at,
        "expires_at": record.expires_at,
    }


def _record(row: Mapping[Any, Any]) -> IdempotencyRecord:
    return IdempotencyRecord(
        scope=row["scope"],
        key=row["key"],
        fingerprint=row["fingerprint"],
        task_id=row["task_id"],
        status=TaskStatus(row["status"]),
        created_at=row["created_at"],
        remembered_at=row["remembered_at"],
        expires_at=row["expires_at"],
    )
