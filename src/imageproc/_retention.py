"""Retention: deleting finished tasks, then their outputs and the originals no task uses any more;
and sweeping the originals that no task ever referred to.

Records go first and files after, so a crash in between leaves unreferenced files (wasted
space), never a task whose files are gone. Those files, and the originals of tasks that were
never recorded (a process killed between storing and recording, a task refused by the queue
limits, a caller's transaction rolled back), are what :func:`purge_orphans` finds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from datetime import datetime
from itertools import islice

from imageproc._keys import ORIGINALS
from imageproc._protocols import (
    DeliveryStore,
    IdempotencyStore,
    ListableStorage,
    Repository,
    SourceUsage,
    Storage,
)
from imageproc._retrying import RetryPolicy
from imageproc.errors import InvalidKey

__all__ = [
    "forget_deliveries",
    "forget_expired_keys",
    "purge_finished",
    "purge_orphans",
    "sources_in_use",
]

logger = logging.getLogger("imageproc")


def purge_finished(
    repository: Repository, storage: Storage, retry: RetryPolicy, before: datetime, *, batch: int
) -> int:
    """Delete the tasks that finished before ``before``, ``batch`` at a time, with their
    outputs and each original no remaining task uses; how many tasks were deleted."""
    deleted = 0
    while purged := repository.purge(before, limit=batch):
        deleted += len(purged)
        for task in purged:
            for output in task.outputs:
                retry.call(storage.delete, output.key)
        for source_key in {task.source_key for task in purged}:
            if not repository.source_in_use(source_key):
                retry.call(storage.delete, source_key)
        if len(purged) < batch:
            break
    return deleted


def forget_deliveries(repository: Repository, before: datetime, *, batch: int) -> int:
    """Forget the webhook deliveries delivered or dead that were written before ``before``,
    ``batch`` at a time (if ``repository`` keeps an outbox); pending ones stay, however old."""
    if not isinstance(repository, DeliveryStore):
        return 0
    return _in_batches(lambda: repository.purge_deliveries(before, limit=batch), batch)


def forget_expired_keys(repository: Repository, now: datetime, *, batch: int) -> int:
    """Forget the idempotency keys expired at ``now``, ``batch`` at a time (if ``repository``
    remembers keys at all); how many were."""
    if not isinstance(repository, IdempotencyStore):
        return 0
    return _in_batches(lambda: repository.purge_keys(now, limit=batch), batch)


def _in_batches(forget: Callable[[], int], batch: int) -> int:
    """Call ``forget`` (which forgets up to ``batch`` things and says how many) until it forgets
    fewer than a batch; how many in all."""
    forgotten = 0
    while (count := forget()) > 0:
        forgotten += count
        if count < batch:
            break
    return forgotten


def purge_orphans(
    repository: Repository, storage: Storage, retry: RetryPolicy, before: datetime, *, batch: int
) -> int:
    """Delete each original (a key under :data:`~imageproc._keys.ORIGINALS`) last written
    before ``before`` that no task refers to; how many were deleted.

    The folder is listed once; its old objects are then taken ``batch`` at a time, asked about
    with one query per batch (:func:`sources_in_use`), and those no task refers to deleted, so
    no more than one batch is held beyond the listing. Outputs are never looked at. Storage
    calls are retried by ``retry``, repository calls not (as in :func:`purge_finished`). A storage
    that cannot list (not a :class:`~imageproc.ListableStorage`) is skipped: 0, and a log line.
    """
    if batch < 1:
        raise ValueError(f"batch must be at least 1, got {batch}")
    if not isinstance(storage, ListableStorage):
        logger.info(
            "%s cannot list its objects: originals that no task refers to are not swept",
            type(storage).__name__,
        )
        return 0
    listing = retry.call(storage.list_objects, ORIGINALS)
    old = (stored.key for stored in listing if stored.modified < before)
    deleted = 0
    while chunk := list(islice(old, batch)):
        # Asked just before the batch is deleted, to keep short the window in which a submit of
        # the same bytes finds the original stored (so does not write it again) and records a
        # task on it; purge_finished has the same window. The submit's side narrows it further:
        # having recorded a task on an original it found stored, it checks the original is
        # still there and puts it back if not (Submission._keep_original).
        in_use = sources_in_use(repository, chunk)
        for key in chunk:
            if key in in_use:
                continue
            try:
                retry.call(storage.delete, key)
            except InvalidKey:
                # Listed but refused (a symbolic link on the way leads out of a local root):
                # not imageproc's to delete, and no reason to stop sweeping the rest.
                logger.warning("not deleting %r: the storage refuses its key", key)
                continue
            deleted += 1
    return deleted


def sources_in_use(repository: Repository, keys: Collection[str]) -> set[str]:
    """Those of ``keys`` that some task of ``repository`` refers to: one call if it is a
    :class:`~imageproc.SourceUsage`, else :meth:`~imageproc.Repository.source_in_use` key by
    key."""
    if isinstance(repository, SourceUsage):
        return repository.sources_in_use(keys)
    return {key for key in keys if repository.source_in_use(key)}
