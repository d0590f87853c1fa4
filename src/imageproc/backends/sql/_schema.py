"""The tasks table, as SQLAlchemy Core sees it, and the mapping between its rows and :class:`Task`.

The table is created and upgraded by the Alembic migrations in ``imageproc/migrations``; this
description must match what they build (a test compares the two).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Collection, Mapping
from datetime import UTC, datetime
from typing import Any, Final

import attrs
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect

from imageproc._task import Output, SourceInfo, Task, TaskError, TaskStatus
from imageproc.pipeline._pipeline import Pipeline

__all__ = [
    "KEYS_TABLE",
    "OUTCOME_COLUMNS",
    "PIPELINE_TEXT",
    "TABLE_NAME",
    "VERSION_TABLE",
    "WEBHOOKS_TABLE",
    "idempotency_keys",
    "metadata",
    "task_from_row",
    "task_to_row",
    "tasks",
    "webhooks",
]

TABLE_NAME: Final = "imageproc_tasks"
#: Alembic's version table for imageproc alone, so a host application's own history is untouched.
VERSION_TABLE: Final = "imageproc_alembic_version"
STATUSES: Final = tuple(status.value for status in TaskStatus)


class UTCDateTime(sa.TypeDecorator[datetime]):
    """A timezone-aware timestamp on every database: stored as UTC, returned as aware UTC.

    SQLite has no timestamp type and hands back naive values; PostgreSQL's ``timestamptz`` keeps
    the zone. Both come back aware in UTC from here, and naive values are refused on the way in.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a timezone-aware column")
        value = value.astimezone(UTC)
        # SQLite compares the stored text, so store one fixed form: naive UTC.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

metadata = sa.MetaData()

tasks = sa.Table(
    TABLE_NAME,
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("priority", sa.Integer, nullable=False, server_default="0"),
    sa.Column("pipeline", JSONType, nullable=False),
    sa.Column("source_key", sa.String(1024), nullable=False),
    sa.Column("source_format", sa.String(16), nullable=False),
    sa.Column("source_width", sa.Integer, nullable=False),
    sa.Column("source_height", sa.Integer, nullable=False),
    sa.Column("source_bytes", sa.BigInteger, nullable=False),
    sa.Column("source_sha256", sa.String(64), nullable=False),
    sa.Column("source_orientation", sa.SmallInteger, nullable=False, server_default="1"),
    sa.Column("outputs", JSONType, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("max_attempts", sa.Integer, nullable=False),
    sa.Column("owner", sa.String(255), nullable=True),
    sa.Column("error_code", sa.String(64), nullable=True),
    sa.Column("error_message", sa.Text, nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("started_at", UTCDateTime, nullable=True),
    sa.Column("finished_at", UTCDateTime, nullable=True),
    sa.Column("available_at", UTCDateTime, nullable=False),
    # The lease: who holds the task while it is processing, and until when.
    sa.Column("lease_token", sa.String(64), nullable=True),
    sa.Column("lease_owner", sa.String(255), nullable=True),
    sa.Column("lease_expires_at", UTCDateTime, nullable=True),
    # The application's labels for the task; NULL when it gave none (most tasks), so they cost
    # the metadata index nothing.
    sa.Column("metadata", JSONType, nullable=True),
    # Where the final status is POSTed; NULL for the tasks nobody asked a webhook for.
    sa.Column("callback_url", sa.Text, nullable=True),
    # How many variants the attempt under way has made (its progress).
    sa.Column("variants_done", sa.Integer, nullable=False, server_default="0"),
    # The task whose original this one makes more variants of.
    sa.Column("reprocess_of", sa.String(64), nullable=True),
    sa.CheckConstraint(
        "status IN (" + ", ".join(f"'{s}'" for s in STATUSES) + ")",
        name="imageproc_tasks_status_check",
    ),
)

# Claims walk this index in claim order and stop after a batch; it holds queued tasks only, so
# finished tasks, the bulk of a busy table, never slow a claim down.
sa.Index(
    "imageproc_tasks_claim_idx",
    tasks.c.priority.desc(),
    tasks.c.available_at,
    tasks.c.created_at,
    tasks.c.id,
    postgresql_where=tasks.c.status == "queued",
    sqlite_where=tasks.c.status == "queued",
)
# Claims rescue tasks whose worker's lease ran out through this one.
sa.Index(
    "imageproc_tasks_lease_idx",
    tasks.c.lease_expires_at,
    postgresql_where=tasks.c.status == "processing",
    sqlite_where=tasks.c.status == "processing",
)
# Retention deletes finished tasks by age.
sa.Index(
    "imageproc_tasks_finished_idx",
    tasks.c.finished_at,
    postgresql_where=tasks.c.finished_at.isnot(None),
    sqlite_where=tasks.c.finished_at.isnot(None),
)
# Purging an original asks whether any other task still uses it.
sa.Index("imageproc_tasks_source_key_idx", tasks.c.source_key)
# Finding tasks by their metadata (``metadata @> '{"user": "42"}'``); jsonb_path_ops indexes
# containment only, which is all the filter asks, in a third of the default's space. SQLite
# scans: there is no JSON index to have.
sa.Index(
    "imageproc_tasks_metadata_idx",
    tasks.c.metadata,
    postgresql_using="gin",
    postgresql_ops={"metadata": "jsonb_path_ops"},
).ddl_if(dialect="postgresql")


#: Idempotency keys, each remembered with the task its first request was answered with. No
#: foreign key to the tasks: a key outlives its task when retention purges the task first, and
#: a replay is answered from the key alone.
KEYS_TABLE: Final = "imageproc_idempotency_keys"

idempotency_keys = sa.Table(
    KEYS_TABLE,
    metadata,
    sa.Column("scope", sa.String(255), primary_key=True),
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("fingerprint", sa.String(64), nullable=False),
    sa.Column("task_id", sa.String(64), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("remembered_at", UTCDateTime, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=False),
)
# Forgetting expired keys walks this one.
sa.Index("imageproc_idempotency_keys_expires_idx", idempotency_keys.c.expires_at)


#: The webhook outbox (:mod:`imageproc.delivery._outbox`): written in the transaction that
#: records a task's final status. No foreign key to the tasks either: a delivery may still be
#: retried, or listed as dead, after retention purged its task.
WEBHOOKS_TABLE: Final = "imageproc_webhooks"
DELIVERY_STATUSES: Final = ("pending", "delivered", "dead")

webhooks = sa.Table(
    WEBHOOKS_TABLE,
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("task_id", sa.String(64), nullable=False),
    sa.Column("owner", sa.String(255), nullable=True),
    sa.Column("url", sa.Text, nullable=False),
    # Text, not JSON: the exact bytes signed and sent on every try.
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("next_attempt_at", UTCDateTime, nullable=False),
    sa.Column("last_attempt_at", UTCDateTime, nullable=True),
    sa.Column("last_error", sa.Text, nullable=True),
    sa.Column("last_status_code", sa.Integer, nullable=True),
    sa.Column("delivered_at", UTCDateTime, nullable=True),
    sa.CheckConstraint(
        "status IN (" + ", ".join(f"'{s}'" for s in DELIVERY_STATUSES) + ")",
        name="imageproc_webhooks_status_check",
    ),
)
# Senders take due deliveries through this one; it holds pending ones only.
sa.Index(
    "imageproc_webhooks_due_idx",
    webhooks.c.next_attempt_at,
    postgresql_where=webhooks.c.status == "pending",
    sqlite_where=webhooks.c.status == "pending",
)
# Listing (dead ones, a task's) and purging by age.
sa.Index("imageproc_webhooks_status_idx", webhooks.c.status, webhooks.c.created_at)
sa.Index("imageproc_webhooks_task_idx", webhooks.c.task_id)


def task_to_row(task: Task, *, only: Collection[str] | None = None) -> dict[str, Any]:
    """The column values that record ``task`` (lease columns excluded), or just the ``only``
    ones (which must be among :data:`OUTCOME_COLUMNS`)."""
    outcome = {
        name: value(task) for name, value in _OUTCOME.items() if only is None or name in only
    }
    if only is not None:
        return outcome
    return {
        "id": task.id,
        "priority": task.priority,
        "pipeline": task.pipeline.to_json(),
        "source_key": task.source_key,
        "source_format": task.source.format,
        "source_width": task.source.width,
        "source_height": task.source.height,
        "source_bytes": task.source.bytes,
        "source_sha256": task.source.sha256,
        "source_orientation": task.source.orientation,
        "max_attempts": task.max_attempts,
        "owner": task.owner,
        "created_at": task.created_at,
        "metadata": task.metadata or None,
        "callback_url": task.callback_url,
        "reprocess_of": task.reprocess_of,
        **outcome,
    }


# The columns a task's outcome can change (everything else is fixed when the task is created),
# and how each is read off a Task.
_OUTCOME: Final[Mapping[str, Callable[[Task], Any]]] = {
    "status": lambda task: task.status.value,
    "outputs": lambda task: [attrs.asdict(output) for output in task.outputs],
    "attempts": lambda task: task.attempts,
    "error_code": lambda task: task.error.code if task.error else None,
    "error_message": lambda task: task.error.message if task.error else None,
    "updated_at": lambda task: task.updated_at,
    "started_at": lambda task: task.started_at,
    "finished_at": lambda task: task.finished_at,
    "available_at": lambda task: task.available_at,
    "variants_done": lambda task: task.variants_done,
}
OUTCOME_COLUMNS: Final = tuple(_OUTCOME)


def task_from_row(row: Mapping[Any, Any]) -> Task:
    """The :class:`Task` a row records. Its ``pipeline`` may be the JSON already read, or the
    JSON text (see :data:`PIPELINE_TEXT`), which is read once per distinct pipeline."""
    pipeline = row["pipeline"]
    return Task(
        id=row["id"],
        status=TaskStatus(row["status"]),
        pipeline=_pipeline_from_text(pipeline)
        if isinstance(pipeline, str)
        else Pipeline.from_stored(pipeline),
        source_key=row["source_key"],
        source=SourceInfo(
            format=row["source_format"],
            width=row["source_width"],
            height=row["source_height"],
            bytes=row["source_bytes"],
            sha256=row["source_sha256"],
            orientation=row["source_orientation"],
        ),
        outputs=tuple(Output(**o) for o in row["outputs"]),
        attempts=row["attempts"],
        max_attempts=row["max_attempts"],
        priority=row["priority"],
        owner=row["owner"],
        error=TaskError(row["error_code"], row["error_message"] or "")
        if row["error_code"]
        else None,
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        available_at=row["available_at"],
        metadata=row["metadata"] or {},
        callback_url=row["callback_url"],
        variants_done=row["variants_done"],
        reprocess_of=row["reprocess_of"],
    )


#: The pipeline column as JSON text, for queries whose rows :func:`task_from_row` reads: a busy
#: queue's tasks share a few pipelines, and a pipeline's text (PostgreSQL writes JSONB out in one
#: canonical form) maps to the same immutable :class:`Pipeline` every time.
PIPELINE_TEXT: Final = sa.cast(tasks.c.pipeline, sa.Text).label("pipeline")


@functools.lru_cache(maxsize=256)
def _pipeline_from_text(text: str) -> Pipeline:
    return Pipeline.from_stored(json.loads(text))
