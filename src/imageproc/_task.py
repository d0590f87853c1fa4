"""The task record and its lifecycle.

A :class:`Task` is an immutable snapshot; every change makes a new one through a method here, and
those methods are the only place the legal status transitions are written down::

    queued ──claim──▶ processing ──▶ succeeded | failed | dead
      ▲                  │
      └──── requeue ─────┘          (a retry after backoff, or an expired lease)
    queued | processing ──▶ cancelled
    failed | dead ──retry──▶ queued

Anything else raises :class:`~imageproc.IllegalTransition`.
"""

from __future__ import annotations

import enum
import json
import re
import secrets
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any, Final

import attrs

from imageproc.errors import IllegalTransition, InvalidInput
from imageproc.pipeline._pipeline import Pipeline

__all__ = [
    "Output",
    "SourceInfo",
    "Task",
    "TaskError",
    "TaskStatus",
    "new_task_id",
]


class TaskStatus(enum.StrEnum):
    """Where a task is in its lifecycle."""

    QUEUED = "queued"
    PROCESSING = "processing"
    SUCCEEDED = "succeeded"
    #: A permanent error: trying again cannot help.
    FAILED = "failed"
    #: Attempts exhausted on transient errors: the dead-letter set, re-drivable with ``retry``.
    DEAD = "dead"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        """Whether no worker will touch a task in this status again (unless it is retried)."""
        return self in _FINAL


_FINAL: Final = frozenset(
    {TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.DEAD, TaskStatus.CANCELLED}
)

TRANSITIONS: Final[Mapping[TaskStatus, frozenset[TaskStatus]]] = {
    TaskStatus.QUEUED: frozenset({TaskStatus.PROCESSING, TaskStatus.CANCELLED}),
    TaskStatus.PROCESSING: frozenset(
        {
            TaskStatus.SUCCEEDED,
            TaskStatus.FAILED,
            TaskStatus.DEAD,
            TaskStatus.QUEUED,
            TaskStatus.CANCELLED,
        }
    ),
    TaskStatus.SUCCEEDED: frozenset(),
    TaskStatus.FAILED: frozenset({TaskStatus.QUEUED}),
    TaskStatus.DEAD: frozenset({TaskStatus.QUEUED}),
    TaskStatus.CANCELLED: frozenset(),
}
"""Every legal move: status → the statuses it may become."""


def new_task_id() -> str:
    """A random, unguessable task id (128 bits, URL-safe)."""
    return secrets.token_urlsafe(16)


@attrs.frozen
class SourceInfo:
    """What the header of an uploaded image says, and its digest."""

    format: str
    #: The size of the pixels as stored, before the EXIF orientation turns them.
    width: int
    height: int
    bytes: int
    sha256: str
    #: The EXIF orientation (1-8) the header gives, 1 if none: how a viewer turns the stored
    #: pixels upright (5-8 swap width and height).
    orientation: int = 1

    @property
    def display_size(self) -> tuple[int, int]:
        """Width and height as the picture is shown (and as outputs are made): upright."""
        if self.orientation in (5, 6, 7, 8):
            return self.height, self.width
        return self.width, self.height


@attrs.frozen
class Output:
    """One stored variant of a finished task."""

    name: str
    key: str
    format: str
    width: int
    height: int
    bytes: int
    #: A BlurHash of the picture, when the variant asked for a ``placeholder``.
    blurhash: str | None = None
    #: The picture's dominant colour as ``#rrggbb``, with the placeholder.
    dominant_color: str | None = None


@attrs.frozen
class TaskError:
    """Why a task failed or was retried: an error code and a human-readable message."""

    code: str
    message: str


#: Recorded on a task whose worker's lease ran out (the worker died or hung) mid-attempt.
LEASE_EXPIRED: Final = TaskError("lease_expired", "the worker's lease expired before it finished")


@attrs.frozen(kw_only=True)
class Task:
    """One submitted image and the work asked of it. Immutable: transitions return a new Task."""

    id: str
    status: TaskStatus
    pipeline: Pipeline
    source_key: str
    source: SourceInfo
    outputs: tuple[Output, ...] = ()
    attempts: int = 0
    max_attempts: int = 5
    priority: int = 0
    owner: str | None = None
    error: TaskError | None = None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    #: When the task may next be claimed (later than ``created_at`` while backing off).
    available_at: datetime
    #: What the application attached at submit (a JSON object, :func:`checked_metadata`).
    #: Left out of the hash: a dict has none.
    metadata: dict[str, Any] = attrs.field(factory=dict, hash=False)
    #: Where the task's status is POSTed (a signed webhook) once it reaches a final status.
    callback_url: str | None = None
    #: The task whose original this one makes more variants of (``Processor.reprocess``).
    reprocess_of: str | None = None
    #: How many of the pipeline's variants this attempt has made so far (reported while it is
    #: ``processing``, every variant once it has ``succeeded``); see :attr:`progress`.
    variants_done: int = 0

    @property
    def progress(self) -> tuple[int, int]:
        """``(variants done, variants in the pipeline)``: how far the work has come. Reported
        while processing at most twice a second, so a quick task may go from none done to
        succeeded."""
        return self.variants_done, len(self.pipeline.variants)

    def reached(self, variants_done: int) -> Task:
        """This task, processing, with ``variants_done`` of its variants made (not a change
        of status: ``updated_at`` stays)."""
        if self.status != TaskStatus.PROCESSING:
            raise IllegalTransition(f"task {self.id} reports progress only while processing")
        return attrs.evolve(self, variants_done=variants_done)

    @classmethod
    def new(
        cls,
        *,
        pipeline: Pipeline,
        source_key: str,
        source: SourceInfo,
        now: datetime,
        max_attempts: int = 5,
        priority: int = 0,
        owner: str | None = None,
        available_at: datetime | None = None,
        metadata: Mapping[str, Any] | None = None,
        callback_url: str | None = None,
        reprocess_of: str | None = None,
    ) -> Task:
        """A freshly queued task with a new random id, claimable from ``available_at`` (from
        ``now`` if None or earlier)."""
        return cls(
            id=new_task_id(),
            status=TaskStatus.QUEUED,
            pipeline=pipeline,
            source_key=source_key,
            source=source,
            max_attempts=max_attempts,
            priority=priority,
            owner=owner,
            created_at=now,
            updated_at=now,
            available_at=max(now, available_at) if available_at else now,
            metadata=dict(metadata or {}),
            callback_url=callback_url,
            reprocess_of=reprocess_of,
        )

    def _move(
        self,
        status: TaskStatus,
        now: datetime,
        *,
        only_from: frozenset[TaskStatus] | None = None,
        **changes: Any,
    ) -> Task:
        # only_from narrows an edge to the one move that means it: requeue and retry both lead to
        # queued, but from processing and from failed/dead respectively.
        if status not in TRANSITIONS[self.status] or (only_from and self.status not in only_from):
            raise IllegalTransition(f"task {self.id} cannot go from {self.status} to {status}")
        return attrs.evolve(self, status=status, updated_at=now, **changes)

    def claim(self, now: datetime) -> Task:
        """queued → processing: a worker took it; this counts as one attempt."""
        return self._move(
            TaskStatus.PROCESSING,
            now,
            attempts=self.attempts + 1,
            started_at=now,
            variants_done=0,
        )

    def unclaim(self, now: datetime) -> Task:
        """processing → queued at once, undoing a claim whose work never started."""
        return self._move(
            TaskStatus.QUEUED,
            now,
            only_from=frozenset({TaskStatus.PROCESSING}),
            attempts=max(0, self.attempts - 1),
            available_at=now,
        )

    def succeed(self, outputs: tuple[Output, ...], now: datetime) -> Task:
        """processing → succeeded, with the stored outputs."""
        return self._move(
            TaskStatus.SUCCEEDED,
            now,
            outputs=tuple(outputs),
            error=None,
            finished_at=now,
            variants_done=len(outputs),
        )

    def fail(self, error: TaskError, now: datetime) -> Task:
        """processing → failed: a permanent error."""
        return self._move(TaskStatus.FAILED, now, error=error, finished_at=now)

    def die(self, error: TaskError, now: datetime) -> Task:
        """processing → dead: transient errors used up every attempt."""
        return self._move(TaskStatus.DEAD, now, error=error, finished_at=now)

    def requeue(self, now: datetime, *, delay: timedelta, error: TaskError | None = None) -> Task:
        """processing → queued: try again after ``delay`` (a backoff, or an expired lease)."""
        return self._move(
            TaskStatus.QUEUED,
            now,
            only_from=frozenset({TaskStatus.PROCESSING}),
            available_at=now + delay,
            error=error or self.error,
        )

    def cancel(self, now: datetime) -> Task:
        """queued | processing → cancelled."""
        return self._move(TaskStatus.CANCELLED, now, finished_at=now)

    def retry(self, now: datetime) -> Task:
        """failed | dead → queued, with a fresh allowance of attempts."""
        return self._move(
            TaskStatus.QUEUED,
            now,
            only_from=frozenset({TaskStatus.FAILED, TaskStatus.DEAD}),
            attempts=0,
            available_at=now,
            error=None,
            outputs=(),
            started_at=None,
            finished_at=None,
        )

    def after_failure(self, error: TaskError, now: datetime, *, delay: timedelta) -> Task:
        """processing → queued after ``delay``, or → dead once every attempt is used up.

        The one rule for an attempt that ended without a result, whatever ended it: a transient
        error, an expired lease (the worker died), or a worker stopping mid-task.
        """
        if self.attempts_left == 0:
            return self.die(error, now)
        return self.requeue(now, delay=delay, error=error)

    @property
    def attempts_left(self) -> int:
        """How many more times a worker may try this task."""
        return max(0, self.max_attempts - self.attempts)


#: Most bytes a task's metadata may take as compact JSON: labels for the application (a user id,
#: a record's key), not a document store.
MAX_METADATA_BYTES: Final = 4096
#: A metadata key: what a filter can name in any database's JSON path without quoting.
METADATA_KEY: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
#: The values a metadata filter compares: JSON's scalars.
MetadataValue = str | int | float | bool | None


def checked_metadata(value: object) -> dict[str, Any]:
    """``value`` as a task's metadata: a JSON object of at most :data:`MAX_METADATA_BYTES`
    (compact), whose keys match :data:`METADATA_KEY`; a copy through JSON, so what is stored is
    what is read back. :class:`~imageproc.InvalidInput` says what is wrong otherwise."""
    if not isinstance(value, Mapping):
        raise InvalidInput(f"metadata must be a JSON object, got {type(value).__name__}")
    for key in value:
        if not isinstance(key, str) or not METADATA_KEY.fullmatch(key):
            raise InvalidInput(
                f"metadata key {key!r} must be 1 to 64 ASCII letters, digits, '_' or '-'"
            )
    try:
        text = json.dumps(value, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError) as error:
        raise InvalidInput(f"metadata must hold only JSON values: {error}") from None
    if len(text.encode()) > MAX_METADATA_BYTES:
        raise InvalidInput(f"metadata is over {MAX_METADATA_BYTES} bytes as JSON")
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def matches_metadata(task: Task, wanted: Mapping[str, MetadataValue]) -> bool:
    """Whether ``task``'s metadata has every key of ``wanted`` with that value (``True`` is not
    ``1``, as in JSON)."""
    return all(
        key in task.metadata and _same_json(task.metadata[key], value)
        for key, value in wanted.items()
    )


def _same_json(a: object, b: object) -> bool:
    return type(a) is type(b) and a == b if isinstance(a, bool) or isinstance(b, bool) else a == b
