"""The Processor's retention: deleting finished tasks with their files, and sweeping orphaned
originals (the rules are :mod:`imageproc._retention`'s). :class:`Processor
<imageproc.Processor>` has these methods from :class:`Purging`.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from imageproc._clock import Clock
from imageproc._protocols import Repository, Storage
from imageproc._retention import (
    forget_deliveries,
    forget_expired_keys,
    purge_finished,
    purge_orphans,
)
from imageproc._retrying import RetryPolicy

__all__ = ["Purging"]

logger = logging.getLogger("imageproc")


class Purging:
    """The retention methods; the Processor provides what they use."""

    @property
    def repository(self) -> Repository:
        """Where tasks are recorded (the Processor's)."""
        raise NotImplementedError

    @property
    def storage(self) -> Storage:
        """Where originals and outputs are kept (the Processor's)."""
        raise NotImplementedError

    @property
    def clock(self) -> Clock:
        """Where timestamps come from (the Processor's)."""
        raise NotImplementedError

    @property
    def _storage_retry(self) -> RetryPolicy:
        raise NotImplementedError

    def purge(
        self,
        older_than: timedelta,
        *,
        batch: int = 500,
        orphans_older_than: timedelta | None = timedelta(hours=1),
    ) -> int:
        """Delete tasks that finished more than ``older_than`` ago, with their outputs, and each
        original no remaining task uses; then, unless ``orphans_older_than`` is None, the
        originals that no task refers to at all and that were stored more than that long ago
        (:meth:`purge_orphans`). Works ``batch`` tasks or originals at a time. Returns how many
        tasks were deleted (the originals swept are logged; :meth:`purge_orphans` returns them).

        Records go first and files after, so a crash in between leaves unreferenced files
        (wasted space), never a task whose files are gone; the sweep of orphans is what finds
        such files later, with the originals of tasks that were never recorded (a process
        killed between storing and recording, a task refused with
        :class:`~imageproc.QueueFull`). Its grace period exists because an original is stored
        moments *before* its task is recorded (and, when the task is written in a caller's own
        transaction, before that transaction commits): a young original that no task refers to
        yet may be about to be referred to, so only originals older than ``orphans_older_than``
        are swept. Keep it well beyond the longest a submit (or the caller's transaction) can
        take. Idempotency keys past ``idempotency_retention`` are forgotten too.
        """
        now = self.clock()
        deleted = purge_finished(
            self.repository, self.storage, self._storage_retry, now - older_than, batch=batch
        )
        if orphans_older_than is not None:
            self.purge_orphans(orphans_older_than, batch=batch)
        forget_expired_keys(self.repository, now, batch=batch)
        forget_deliveries(self.repository, now - older_than, batch=batch)
        return deleted

    def purge_orphans(self, older_than: timedelta, *, batch: int = 500) -> int:
        """Delete each stored original that no task refers to and that was last written more than
        ``older_than`` ago; returns how many were deleted (:meth:`purge` calls it).

        The originals are listed, and asked about ``batch`` at a time (one query each where the
        repository is a :class:`~imageproc.SourceUsage`); outputs are left alone. Needs a
        storage that is a :class:`~imageproc.ListableStorage` (the memory and fsspec ones are):
        with another, nothing is swept and 0 is returned, with a log line. ``older_than`` is a
        grace period, for the reason :meth:`purge` gives: an original is stored before its task
        is recorded, so a young one that no task refers to may be about to be.
        """
        if older_than < timedelta(0):
            raise ValueError("older_than must not be negative")
        cutoff = self.clock() - older_than
        removed = purge_orphans(
            self.repository, self.storage, self._storage_retry, cutoff, batch=batch
        )
        logger.info(
            "purge removed %d original(s) that no task refers to, older than %s",
            removed,
            older_than,
        )
        return removed
