"""What an upload is: the image and the options ``submit`` takes with it (:class:`Upload`), how
it was accepted (:class:`Accepted`), and the reading of both: the image's bytes within the size
limit, and the time a scheduled task becomes claimable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, Any, Final

import attrs

from imageproc._idempotency import IdempotencyRecord
from imageproc._task import Task
from imageproc.errors import InvalidImage, InvalidInput, TaskNotFound
from imageproc.pipeline._pipeline import Pipeline

__all__ = [
    "MAX_SCHEDULE",
    "Accepted",
    "PipelineSpec",
    "Source",
    "Upload",
    "read_source",
    "scheduled_at",
]

#: What ``submit`` accepts as an image: its bytes, a binary file object, or a path.
Source = bytes | bytearray | memoryview | IO[bytes] | str | os.PathLike[str]
#: A :class:`Pipeline`, its text form, a preset name, or None for the default.
PipelineSpec = Pipeline | str | None


@attrs.frozen(eq=False)
class Upload:
    """One image for :meth:`Processor.submit_many`, with what :meth:`Processor.submit` takes
    besides it."""

    #: The image: its bytes, a binary file object, or a path.
    source: Source
    #: A :class:`Pipeline`, its text, a preset name, or None for the Processor's default.
    pipeline: PipelineSpec = None
    #: Higher goes first.
    priority: int = 0
    #: Who the task belongs to (the HTTP adapter's API key owner), or None.
    owner: str | None = None
    #: Not claimable before this time (a timezone-aware datetime) or this long from now; None:
    #: at once. At most 366 days ahead.
    not_before: datetime | timedelta | None = None
    #: A small JSON object the application attaches (at most 4 KiB, keys of ASCII letters,
    #: digits, ``_`` and ``-``): stored on the task, shown with it, searchable with ``tasks``.
    metadata: Mapping[str, Any] | None = None
    #: Return the owner's task for the same bytes and pipeline, if one succeeded or is under
    #: way, instead of queueing the work again.
    dedupe: bool = False
    #: A key the client chose for this request (1 to 255 printable ASCII characters): the same
    #: key with the same request again returns the first one's task; with a different request,
    #: :class:`~imageproc.IdempotencyConflict`. Per owner, remembered for
    #: ``idempotency_retention``.
    idempotency_key: str | None = None
    #: Where the task's status is POSTed (a signed webhook) once it ends; checked at submit
    #: (:class:`~imageproc.UnsafeURL`). None: the owner's default, if the Processor's
    #: :class:`~imageproc.Webhooks` names one.
    callback_url: str | None = None
    #: The application's SQLAlchemy ``Connection`` or ``Session`` on the task database: the
    #: task is written in its transaction, claimable once that commits, gone if it rolls back.
    connection: object = None


@attrs.frozen
class Accepted:
    """How one upload was accepted: its task, and for an upload under an idempotency key the
    key's record and whether this was a replay of an earlier request."""

    #: The task, as it is now; None only for a replay whose task retention has purged already.
    task: Task | None
    #: The idempotency key's record, for an upload under a key.
    record: IdempotencyRecord | None = None
    #: Whether an earlier request under the same key was answered with this task.
    replayed: bool = False

    def task_or_raise(self) -> Task:
        """The task; :class:`~imageproc.TaskNotFound` if it is gone (see :attr:`task`)."""
        if self.task is None:
            assert self.record is not None
            raise TaskNotFound(
                f"task {self.record.task_id}, which idempotency key {self.record.key!r} was"
                " answered with, has been purged"
            )
        return self.task


#: How far ahead a task may be scheduled: further is more likely a mistake (seconds for
#: milliseconds) than a plan, and a queue is not a calendar.
MAX_SCHEDULE: Final = timedelta(days=366)


def scheduled_at(not_before: datetime | timedelta | None, now: datetime) -> datetime | None:
    """The time a task asked to wait until ``not_before`` becomes claimable, checked:
    :class:`~imageproc.InvalidInput` for a naive datetime, a negative delay, or more than
    :data:`MAX_SCHEDULE` ahead. A time already past means at once."""
    if not_before is None:
        return None
    if isinstance(not_before, timedelta):
        if not_before < timedelta(0):
            raise InvalidInput(f"not_before must not be a negative delay, got {not_before}")
        at = now + not_before
    elif isinstance(not_before, datetime):
        if not_before.tzinfo is None or not_before.utcoffset() is None:
            raise InvalidInput(
                "not_before must be timezone-aware (such as 2026-12-07T20:00:00+00:00)"
            )
        at = not_before
    else:
        raise InvalidInput(
            f"not_before must be a datetime or a timedelta, got {type(not_before).__name__}"
        )
    if at - now > MAX_SCHEDULE:
        raise InvalidInput(f"not_before may be at most {MAX_SCHEDULE.days} days ahead")
    return at if at > now else None


def read_source(source: Source, limit: int) -> bytes:
    """The bytes of ``source``, reading at most one byte past ``limit`` so an oversize upload is
    refused without holding all of it."""
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
    elif isinstance(source, str | os.PathLike):
        try:
            with Path(source).open("rb") as file:
                data = file.read(limit + 1)
        except OSError as error:
            raise InvalidImage(f"cannot read {os.fspath(source)!r}: {error.strerror}") from error
    elif hasattr(source, "read"):
        # One read() may return less than asked (raw files, sockets): read to the end or limit.
        chunks, size = [], 0
        while size <= limit:
            chunk = source.read(limit + 1 - size)
            if chunk is None:
                raise InvalidImage("the file object has no data ready (non-blocking?)")
            if not isinstance(chunk, bytes):
                raise InvalidImage("the file object must be opened in binary mode")
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        data = b"".join(chunks)
    else:
        # A wrong argument, not a bad image: Python's convention is a TypeError.
        raise TypeError(
            f"an image is bytes, a binary file object or a path, not {type(source).__name__}"
        )
    if len(data) > limit:
        raise InvalidImage(f"upload is over the limit of {limit} bytes")
    return data
