"""Retention: deleting finished tasks, then their outputs and the originals no task uses any more.

Records go first and files after, so a crash in between leaves unreferenced files (wasted
space), never a task whose files are gone.
"""

from __future__ import annotations

from datetime import datetime

from imageproc._protocols import IdempotencyStore, Repository, Storage
from imageproc._retrying import RetryPolicy

__all__ = ["forget_expired_keys", "purge_finished"]


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


def forget_expired_keys(repository: Repository, now: datetime, *, batch: int) -> int:
    """Forget the idempotency keys expired at ``now``, ``batch`` at a time (if ``repository``
    remembers keys at all); how many were."""
    if not isinstance(repository, IdempotencyStore):
        return 0
    forgotten = 0
    while (count := repository.purge_keys(now, limit=batch)) > 0:
        forgotten += count
        if count < batch:
            break
    return forgotten
