"""Admission under queue limits: queued tasks counted in the transaction that records new ones, so
the counts cannot change before it commits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from imageproc._protocols import QueueLimits, check_admission
from imageproc._task import Task, TaskStatus
from imageproc.backends.sql._schema import tasks

__all__ = ["admit", "read_committed"]

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


def read_committed(conn: Connection, *, dialect: str) -> None:
    """Make ``conn``'s transaction, which has run nothing yet, READ COMMITTED on PostgreSQL: each
    statement then sees what other transactions committed before it, whatever level the server
    defaults to (REPEATABLE READ would keep the first statement's snapshot)."""
    if dialect == "postgresql":
        conn.execute(sa.text("SET TRANSACTION ISOLATION LEVEL READ COMMITTED"))


def admit(
    conn: Connection,
    adding: Sequence[Task],
    limits: QueueLimits | None,
    *,
    dialect: str,
    isolation_set: bool = False,
) -> None:
    """Check ``limits`` for ``adding`` in the transaction that records them; the counts
    cannot change before it commits (on PostgreSQL an advisory lock held to the commit
    orders admissions; SQLite's writing transactions are one at a time already).
    ``isolation_set``: :func:`read_committed` already ran in this transaction."""
    if limits is None or not limits.any:
        return
    if not any(task.status == TaskStatus.QUEUED for task in adding):
        return
    if dialect == "postgresql":
        # The counts must see what the lock's last holder committed. This runs first in its
        # transaction, where the level can still be set, unless the caller set it already.
        if not isolation_set:
            read_committed(conn, dialect=dialect)
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_ADMISSION_LOCK)))
    queued = 0
    if limits.max_queued is not None:
        queued = _count_queued(conn, None, limits.max_queued + 1)
    by_owner = {}
    if limits.max_queued_per_owner is not None:
        for owner in {task.owner for task in adding if task.owner is not None}:
            by_owner[owner] = _count_queued(conn, owner, limits.max_queued_per_owner + 1)
    check_admission(queued, by_owner, adding, limits)
