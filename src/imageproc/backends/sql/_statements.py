"""The SQLAlchemy Core statements the backend runs most, built once with bound parameters (not
per call: building and keying a statement cost more CPU than running it).

A claim is one statement: a CTE picks the claimable rows in claim order with
``FOR UPDATE SKIP LOCKED`` (PostgreSQL; SQLite serialises writers with ``BEGIN IMMEDIATE``), and
an ``UPDATE … RETURNING`` leases them. *Claimable* is "queued and due, or processing under a lease
that has expired", so a crashed worker's task is rescued by the next claim with no sweeper to
forget. Recording and renewing match the lease token, so a worker whose lease was taken over
cannot overwrite the new holder's result. On PostgreSQL a whole batch of outcomes is one
``UPDATE … FROM jsonb_to_recordset(…)``, matched by id and lease token, that also notifies.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection

from imageproc._protocols import Lease
from imageproc._task import LEASE_EXPIRED, MetadataValue, Task, TaskStatus
from imageproc.backends.sql._deliveries import delivery_rows
from imageproc.backends.sql._driver import HotStatement
from imageproc.backends.sql._listener import CHANNEL, DONE_CHANNEL
from imageproc.backends.sql._schema import (
    OUTCOME_COLUMNS,
    PIPELINE_TEXT,
    UTCDateTime,
    task_to_row,
    tasks,
    webhooks,
)

__all__ = [
    "CLAIM",
    "CLAIM_ORDER",
    "ENDED_AMONG",
    "FINAL",
    "GET",
    "NO_LEASE",
    "PROCESSING",
    "PROGRESS",
    "QUEUED",
    "RECORD",
    "RECORD_BATCH",
    "RENEW",
    "HotStatements",
    "batch_parameters",
    "exists",
    "outcome",
    "record_held",
    "status_is",
]

FINAL = [s.value for s in TaskStatus if s.is_final]
QUEUED, PROCESSING = TaskStatus.QUEUED.value, TaskStatus.PROCESSING.value


def status_is(status: str) -> sa.ColumnElement[bool]:
    """``status = '<status>'`` with the status written into the SQL rather than bound, so that a
    plan made once for every execution of a prepared statement (a generic plan) can still use
    the partial indexes on status."""
    return tasks.c.status == sa.literal_column(f"'{TaskStatus(status).value}'")


CLAIM_ORDER = (tasks.c.priority.desc(), tasks.c.available_at, tasks.c.created_at, tasks.c.id)


NO_LEASE: dict[str, Any] = {"lease_token": None, "lease_owner": None, "lease_expires_at": None}


def _claim_statement() -> sa.Update:
    """The claim, built once with bound parameters ``now``, ``expires``, ``token``, ``worker``
    and ``n`` (the batch size)."""
    now = sa.bindparam("now", type_=UTCDateTime)
    expires = sa.bindparam("expires", type_=UTCDateTime)
    limit = sa.bindparam("n", type_=sa.Integer)
    expired = status_is(PROCESSING)
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

    due = candidates(sa.and_(status_is(QUEUED), tasks.c.available_at <= now), *CLAIM_ORDER)
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
            status=unless_exhausted(PROCESSING, TaskStatus.DEAD.value),
            attempts=unless_exhausted(tasks.c.attempts + 1, tasks.c.attempts),
            started_at=unless_exhausted(now, tasks.c.started_at),
            finished_at=unless_exhausted(tasks.c.finished_at, now),
            variants_done=unless_exhausted(0, tasks.c.variants_done),
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


CLAIM: Final = _claim_statement()
# Built once (not per call: building and keying a statement cost more CPU than running it); the
# pipeline comes as JSON text, which is parsed once per distinct pipeline.
GET: Final = sa.select(*(PIPELINE_TEXT if c.name == "pipeline" else c for c in tasks.c)).where(
    tasks.c.id == sa.bindparam("task_id")
)

#: The tasks among ``task_ids`` that are in a final status (the asyncio waiters' shared sweep).
ENDED_AMONG: Final = sa.select(
    *(PIPELINE_TEXT if c.name == "pipeline" else c for c in tasks.c)
).where(
    tasks.c.id.in_(sa.bindparam("task_ids", expanding=True)),
    tasks.c.status.in_(FINAL),
)


# Recording and renewing match the lease: the row's id, its token, and that it is processing.
_HELD: Final = (
    tasks.c.id == sa.bindparam("held_id"),
    tasks.c.lease_token == sa.bindparam("held_token"),
    tasks.c.status == PROCESSING,
)
# Recording writes only what an outcome can change: no pipeline JSON to encode, less to write.
RECORD: Final = (
    tasks.update()
    .where(*_HELD)
    .values(
        {
            **{name: sa.bindparam(name, type_=tasks.c[name].type) for name in OUTCOME_COLUMNS},
            **NO_LEASE,
        }
    )
)
PROGRESS: Final = (
    tasks.update()
    .where(*_HELD)
    .values(variants_done=sa.bindparam("variants_done", type_=sa.Integer))
)
RENEW: Final = (
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
            tasks.c.status == PROCESSING,
        )
        .values(
            {
                **{name: rows.c[name] for name in OUTCOME_COLUMNS},
                **{name: sa.null() for name in NO_LEASE},
            }
        )
        .returning(tasks.c.id, rows.c.held_token, tasks.c.status, tasks.c.available_at)
        .cte("recorded")
    )
    now = sa.bindparam("now", type_=UTCDateTime)
    ended = recorded.c.status.in_([sa.literal_column(f"'{value}'") for value in FINAL])
    due = sa.and_(
        recorded.c.status == sa.literal_column(f"'{QUEUED}'"), recorded.c.available_at <= now
    )
    return sa.select(
        recorded.c.id,
        recorded.c.held_token,
        sa.case((ended, sa.func.pg_notify(DONE_CHANNEL, recorded.c.id)), else_=None),
        sa.case((due, sa.func.pg_notify(CHANNEL, "")), else_=None),
    ).add_cte(_outbox_insert(recorded))


#: The outbox columns :data:`RECORD_BATCH` writes (the rest start empty).
_HOOK_COLUMNS: Final = (
    "id",
    "task_id",
    "owner",
    "url",
    "payload",
    "status",
    "attempts",
    "created_at",
    "next_attempt_at",
)


def _outbox_insert(recorded: sa.CTE) -> sa.CTE:
    """The part of :data:`RECORD_BATCH` that writes the webhook outbox: the parameter ``hooks``
    (a JSON array of :func:`~imageproc.backends.sql._deliveries.delivery_rows` with the
    ``held_token`` of their task's lease) becomes rows of ``imageproc_webhooks`` for the tasks
    the same statement recorded, so a delivery exists exactly when its final status does."""
    columns: dict[str, Any] = {
        "held_token": sa.Text(),
        **{name: webhooks.c[name].type for name in _HOOK_COLUMNS},
    }
    hooks = (
        sa.func.jsonb_to_recordset(sa.cast(sa.bindparam("hooks", type_=sa.Text), postgresql.JSONB))
        .table_valued(*(sa.column(name, kind) for name, kind in columns.items()))
        .render_derived(name="hooks", with_types=True)
    )
    chosen = sa.select(*(hooks.c[name] for name in _HOOK_COLUMNS)).select_from(
        hooks.join(
            recorded,
            sa.and_(recorded.c.id == hooks.c.task_id, recorded.c.held_token == hooks.c.held_token),
        )
    )
    return webhooks.insert().from_select(list(_HOOK_COLUMNS), chosen).cte("outboxed")


RECORD_BATCH: Final = _record_batch_statement()


def batch_parameters(results: Sequence[tuple[Lease, Task]], now: datetime) -> dict[str, Any]:
    """The parameters of :data:`RECORD_BATCH`: ``batch``, its rows in the order of the tasks'
    ids (so concurrent batches lock the rows they share in one order), ``hooks``, the outbox
    rows for the tasks that end with a callback URL, and ``now``."""
    rows = sorted((outcome(lease, task) for lease, task in results), key=lambda r: r["held_id"])
    hooks: list[dict[str, Any]] = []
    for lease, task in results:
        hooks.extend({**row, "held_token": lease.token} for row in delivery_rows((task,), now))
    return {
        "batch": json.dumps(rows, default=_utc_text),
        "hooks": json.dumps(hooks, default=_utc_text),
        "now": now,
    }


def _utc_text(value: object) -> str:
    """A timestamp in the batch's JSON: ISO 8601 in UTC, to the microsecond (as
    :class:`UTCDateTime` would bind it, naive ones refused alike)."""
    if not isinstance(value, datetime):
        raise TypeError(f"{type(value).__name__} in a recorded task")
    if value.tzinfo is None:
        raise ValueError("naive datetime given to a timezone-aware column")
    return value.astimezone(UTC).isoformat()


def outcome(lease: Lease, task: Task) -> dict[str, Any]:
    row = task_to_row(task, only=OUTCOME_COLUMNS)
    return {**row, "held_id": lease.task.id, "held_token": lease.token}


def record_held(
    conn: Connection,
    results: Sequence[tuple[Lease, Task]],
    parameters: list[dict[str, Any]],
) -> list[bool]:
    """Record each of ``results`` (``parameters``: their :func:`outcome` rows) whose lease is
    still held; for each, whether it was."""
    # SQLite, where every writer holds the database lock: find the rows these leases still
    # hold, then write them in one executemany; rowcount alone could not say which.
    held_query = sa.select(tasks.c.id, tasks.c.lease_token).where(
        sa.tuple_(tasks.c.id, tasks.c.lease_token).in_(
            [(lease.task.id, lease.token) for lease, _ in results]
        ),
        tasks.c.status == PROCESSING,
    )
    held = {(row[0], row[1]) for row in conn.execute(held_query)}
    recorded = [(lease.task.id, lease.token) in held for lease, _ in results]
    mine = [p for p, ok in zip(parameters, recorded, strict=True) if ok]
    if mine:
        conn.execute(RECORD, mine)
    return recorded


def exists(conn: Connection, task_id: str) -> bool:
    """Whether a task with this id is recorded (its row is not read)."""
    return conn.execute(sa.select(tasks.c.id).where(tasks.c.id == task_id)).first() is not None


class HotStatements:
    """The statements a worker pool runs most, compiled once for this backend's dialect and run
    on the driver's cursor (:mod:`imageproc.backends.sql._driver`)."""

    def __init__(self, dialect: sa.Dialect) -> None:
        self.claim = HotStatement(CLAIM, dialect)
        self.record = HotStatement(RECORD_BATCH, dialect)
        self.get = HotStatement(GET, dialect)


def find_statement(
    status: TaskStatus,
    owner: str | None,
    metadata: Mapping[str, MetadataValue] | None,
    limit: int,
    *,
    dialect: str,
) -> sa.Select[Any]:
    """Tasks in ``status`` (of ``owner``, with ``metadata``), most recently changed first."""
    query = sa.select(tasks).where(tasks.c.status == status.value)
    if owner is not None:
        query = query.where(tasks.c.owner == owner)
    if metadata:
        query = query.where(metadata_matches(metadata, dialect=dialect))
    return query.order_by(tasks.c.updated_at.desc(), tasks.c.id.desc()).limit(max(limit, 0))


def purge_statement(before: datetime, limit: int, *, dialect: str) -> sa.Executable:
    """Delete up to ``limit`` tasks that finished before ``before``, oldest first, returning
    them; on PostgreSQL, rows another purge holds are skipped rather than waited for."""
    ids = (
        sa.select(tasks.c.id)
        .where(tasks.c.status.in_(FINAL), tasks.c.finished_at < before)
        .order_by(tasks.c.finished_at)
        .limit(limit)
    )
    if dialect == "postgresql":
        ids = ids.with_for_update(skip_locked=True)
    return tasks.delete().where(tasks.c.id.in_(ids.scalar_subquery())).returning(*tasks.c)


#: Whether any task still refers to one original (purge asks before deleting it).
SOURCE_IN_USE: Final = (
    sa.select(tasks.c.id).where(tasks.c.source_key == sa.bindparam("source_key")).limit(1)
)

#: Which of a batch of originals (the expanding parameter ``source_keys``) some task still
#: refers to, through the index on ``source_key`` (the orphan sweep asks).
SOURCES_IN_USE: Final = (
    sa.select(tasks.c.source_key)
    .where(tasks.c.source_key.in_(sa.bindparam("source_keys", expanding=True)))
    .distinct()
)

_QUEUED_NOW = tasks.c.status == QUEUED
#: Counts of queued and processing tasks, and when the oldest due one became due, in one query.
QUEUE_STATS: Final = sa.select(
    sa.func.count().filter(_QUEUED_NOW),
    sa.func.count().filter(tasks.c.status == PROCESSING),
    sa.func.min(tasks.c.available_at).filter(
        _QUEUED_NOW, tasks.c.available_at <= sa.bindparam("now", type_=tasks.c.available_at.type)
    ),
).where(tasks.c.status.in_([QUEUED, PROCESSING]))


def metadata_matches(
    wanted: Mapping[str, MetadataValue], *, dialect: str
) -> sa.ColumnElement[bool]:
    """Tasks whose metadata has every key of ``wanted`` with that value, as JSON compares them
    (``true`` is not ``1``). PostgreSQL asks by containment, which its GIN index serves; SQLite
    compares each key's JSON type and value."""
    if dialect == "postgresql":
        return sa.type_coerce(tasks.c.metadata, postgresql.JSONB).contains(dict(wanted))
    clauses = []
    for key, value in wanted.items():
        path = f'$."{key}"'  # keys are checked when stored: letters, digits, _ and - only
        kind = sa.func.json_type(tasks.c.metadata, path)
        if value is None or isinstance(value, bool):
            clauses.append(kind == ("null" if value is None else str(value).lower()))
        else:
            kinds = ("text",) if isinstance(value, str) else ("integer", "real")
            clauses.append(
                sa.and_(kind.in_(kinds), sa.func.json_extract(tasks.c.metadata, path) == value)
            )
    return sa.and_(*clauses)


#: A dedupe's lookup, built once (it runs on every such submit): one original's tasks in some
#: statuses, newest first, through the index on ``source_key``.
FIND_BY_SOURCE: Final = (
    sa.select(tasks)
    .where(
        tasks.c.source_key == sa.bindparam("source_key"),
        tasks.c.status.in_(sa.bindparam("statuses", expanding=True)),
    )
    .order_by(tasks.c.created_at.desc(), tasks.c.id.desc())
    .limit(sa.bindparam("limit"))
)
