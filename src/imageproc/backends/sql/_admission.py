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

__all__ = ["admit"]

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


def admit(
    conn: Connection, adding: Sequence[Task], limits: QueueLimits | None, *, dialect: str
) -> None:
    """Check ``limits`` for ``adding`` in the transaction that records them; the counts
    cannot change before it commits (on PostgreSQL an advisory lock held to the commit
    orders admissions; SQLite's writing transactions are one at a time already)."""
    if limits is None or not limits.any:
        return
    if not any(task.status == TaskStatus.QUEUED for task in adding):
        return
    if dialect == "postgresql":
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
