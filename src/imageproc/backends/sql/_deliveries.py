"""The webhook outbox in SQL: deliveries written with the final statuses they announce, and the
statements senders and operators work through them with.

Senders take due deliveries with one ``UPDATE … RETURNING`` that also pushes each one's
``next_attempt_at`` past the hold (on PostgreSQL over ``FOR UPDATE SKIP LOCKED``, so senders in
several processes never wait on each other); a sender that dies leaves its deliveries due again
once the hold runs out. Recording a try is guarded by ``attempts`` and ``last_attempt_at`` (the
moment of the claim), so a sender whose hold ran out and whose delivery was taken again cannot
overwrite the newer try.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Final

import attrs
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from imageproc._task import Task, TaskStatus
from imageproc.backends.sql._schema import PIPELINE_TEXT, task_from_row, tasks, webhooks
from imageproc.delivery._outbox import Delivery, DeliveryStatus, delivery_for

__all__ = [
    "claim_deliveries",
    "delivery_rows",
    "find_deliveries",
    "insert_deliveries",
    "next_delivery_at",
    "purge_deliveries",
    "repair_deliveries",
    "resend_deliveries",
    "settle_delivery",
]

_PENDING: Final = DeliveryStatus.PENDING.value
_FINAL: Final = [status.value for status in TaskStatus if status.is_final]
_DEAD: Final = DeliveryStatus.DEAD.value


def delivery_rows(tasks: Iterable[Task], now: datetime) -> list[dict[str, Any]]:
    """The outbox rows that announce those of ``tasks`` that ended with a callback URL."""
    rows = []
    for task in tasks:
        delivery = delivery_for(task, now)
        if delivery is not None:
            rows.append(_row(delivery))
    return rows


def insert_deliveries(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    """Write outbox rows (from :func:`delivery_rows`) in ``conn``'s transaction."""
    if rows:
        conn.execute(webhooks.insert(), list(rows))


def claim_deliveries(
    conn: Connection, now: datetime, limit: int, hold: timedelta, *, dialect: str
) -> list[Delivery]:
    """Take up to ``limit`` due pending deliveries, each one try more, held until now + hold."""
    due = (
        sa.select(webhooks.c.id)
        .where(webhooks.c.status == _PENDING, webhooks.c.next_attempt_at <= now)
        .order_by(webhooks.c.next_attempt_at, webhooks.c.id)
        .limit(limit)
    )
    if dialect == "postgresql":
        due = due.with_for_update(skip_locked=True)
    statement = (
        webhooks.update()
        .where(webhooks.c.id.in_(due.scalar_subquery()))
        .values(
            attempts=webhooks.c.attempts + 1,
            last_attempt_at=now,
            next_attempt_at=now + hold,
        )
        .returning(*webhooks.c)
    )
    taken = [_delivery(row) for row in conn.execute(statement).mappings()]
    taken.sort(key=lambda d: d.id)
    return taken


def settle_delivery(conn: Connection, delivery: Delivery) -> bool:
    """Record a try's result, if the try still holds the delivery."""
    result = conn.execute(
        webhooks.update()
        .where(
            webhooks.c.id == delivery.id,
            webhooks.c.status == _PENDING,
            # Both: a resend starts attempts from 0 again, so a try from before it could
            # otherwise match a try after it.
            webhooks.c.attempts == delivery.attempts,
            webhooks.c.last_attempt_at == delivery.last_attempt_at,
        )
        .values(
            status=delivery.status.value,
            next_attempt_at=delivery.next_attempt_at,
            last_error=delivery.last_error,
            last_status_code=delivery.last_status_code,
            delivered_at=delivery.delivered_at,
        )
    )
    return result.rowcount == 1


def find_deliveries(
    conn: Connection,
    status: DeliveryStatus,
    *,
    owner: str | None,
    task_id: str | None,
    limit: int,
) -> list[Delivery]:
    """Deliveries in ``status`` (of ``owner``, of ``task_id``), the most recent first."""
    query = sa.select(webhooks).where(webhooks.c.status == status.value)
    if owner is not None:
        query = query.where(webhooks.c.owner == owner)
    if task_id is not None:
        query = query.where(webhooks.c.task_id == task_id)
    query = query.order_by(webhooks.c.created_at.desc(), webhooks.c.id.desc()).limit(max(limit, 0))
    return [_delivery(row) for row in conn.execute(query).mappings()]


def resend_deliveries(
    conn: Connection, ids: Collection[str] | None, now: datetime, owner: str | None
) -> int:
    """Make dead deliveries (among ``ids``, of ``owner``) due now with a fresh schedule."""
    statement = (
        webhooks.update()
        .where(webhooks.c.status == _DEAD)
        .values(status=_PENDING, attempts=0, next_attempt_at=now, delivered_at=None)
    )
    if ids is not None:
        if not ids:
            return 0
        statement = statement.where(webhooks.c.id.in_(list(ids)))
    if owner is not None:
        statement = statement.where(webhooks.c.owner == owner)
    return conn.execute(statement).rowcount


def next_delivery_at(conn: Connection) -> datetime | None:
    """When the earliest pending delivery is due."""
    value: datetime | None = conn.execute(
        sa.select(sa.func.min(webhooks.c.next_attempt_at)).where(webhooks.c.status == _PENDING)
    ).scalar()
    return value


def purge_deliveries(conn: Connection, before: datetime, limit: int) -> int:
    """Forget up to ``limit`` delivered or dead deliveries written before ``before``."""
    old = (
        sa.select(webhooks.c.id)
        .where(webhooks.c.status != _PENDING, webhooks.c.created_at < before)
        .order_by(webhooks.c.created_at)
        .limit(limit)
    )
    return conn.execute(webhooks.delete().where(webhooks.c.id.in_(old.scalar_subquery()))).rowcount


def repair_deliveries(
    conn: Connection, since: datetime, until: datetime, now: datetime, *, dialect: str, limit: int
) -> int:
    """Write the deliveries that final statuses recorded between ``since`` and ``until`` lack
    (a task with a callback URL and no delivery written since it finished: on PostgreSQL, one
    buried by a claim whose second transaction never ran); how many. Each gets an id derived
    from its task and finish, inserted unless present, so two senders repairing at once write
    one delivery."""
    missing = ~sa.exists().where(
        webhooks.c.task_id == tasks.c.id, webhooks.c.created_at >= tasks.c.finished_at
    )
    query = (
        sa.select(*(PIPELINE_TEXT if c.name == "pipeline" else c for c in tasks.c))
        .where(
            tasks.c.callback_url.isnot(None),
            tasks.c.status.in_(_FINAL),
            tasks.c.finished_at >= since,
            tasks.c.finished_at < until,
            missing,
        )
        .limit(limit)
    )
    rows = []
    for row in conn.execute(query).mappings():
        task = task_from_row(row)
        delivery = delivery_for(task, now)
        assert delivery is not None
        assert task.finished_at is not None
        mark = f"{task.id}:{task.finished_at.isoformat()}".encode()
        digest = base64.urlsafe_b64encode(hashlib.sha256(mark).digest()[:18]).decode()
        # Written as of the finish, so the next repair finds it there.
        rows.append(_row(attrs.evolve(delivery, id="msg_" + digest, created_at=task.finished_at)))
    if not rows:
        return 0
    insert = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(webhooks)
    written = conn.execute(insert.on_conflict_do_nothing().returning(webhooks.c.id), rows)
    return len(written.all())


def _row(delivery: Delivery) -> dict[str, Any]:
    return {
        "id": delivery.id,
        "task_id": delivery.task_id,
        "owner": delivery.owner,
        "url": delivery.url,
        "payload": delivery.payload,
        "status": delivery.status.value,
        "attempts": delivery.attempts,
        "created_at": delivery.created_at,
        "next_attempt_at": delivery.next_attempt_at,
        "last_attempt_at": delivery.last_attempt_at,
        "last_error": delivery.last_error,
        "last_status_code": delivery.last_status_code,
        "delivered_at": delivery.delivered_at,
    }


def _delivery(row: Mapping[Any, Any]) -> Delivery:
    return Delivery(
        id=row["id"],
        task_id=row["task_id"],
        owner=row["owner"],
        url=row["url"],
        payload=row["payload"],
        status=DeliveryStatus(row["status"]),
        attempts=row["attempts"],
        created_at=row["created_at"],
        next_attempt_at=row["next_attempt_at"],
        last_attempt_at=row["last_attempt_at"],
        last_error=row["last_error"],
        last_status_code=row["last_status_code"],
        delivered_at=row["delivered_at"],
    )
