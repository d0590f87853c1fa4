"""Group commit: many threads' writes share one transaction, and one sync of the database.

SQLite takes one writer at a time, and every commit syncs the write-ahead log. When sixteen
threads each record a task in a transaction of its own, they queue on the database lock (its
busy handler sleeps between tries) and the disk syncs once per task. :class:`GroupCommit` makes
them queue in the process instead, where waiting costs nothing, and hands everything that
arrived while one transaction ran to the next one::

    adds = GroupCommit(insert_all)      # insert_all(items) writes them in one transaction
    adds.run(item)                      # from any thread: returns once ``item`` is committed

There is no thread of its own (so nothing to start or stop): the first caller to find nobody
writing becomes the *leader* and writes a batch (its own item, and any that queued up meanwhile),
then passes the lead to the oldest caller still waiting, whose batch is everything that queued
during the write. A lone caller writes at once and waits for nobody; under load a batch is as
large as the load makes it (up to ``max_batch``), so the cost of a commit is shared by more
callers exactly when there are more of them.

Each caller returns only after the transaction holding its item committed, so nothing is
acknowledged before it is durable. ``write`` returns one result per item: None for success or
the exception that item's caller should get (a batch that fails as a whole gives every caller
that exception; the caller's code decides whether to split a failed batch to single out a bad
item).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Final, Generic, TypeVar

__all__ = ["GroupCommit"]

_T = TypeVar("_T")

#: Most items one transaction takes; more wait for the next one.
MAX_BATCH: Final = 64


class _Slot(Generic[_T]):
    """One caller's item, what became of it, and the event its caller waits on."""

    __slots__ = ("done", "error", "item", "lead", "woken")

    def __init__(self, item: _T) -> None:
        self.item = item
        self.done = False
        self.lead = False
        self.error: BaseException | None = None
        self.woken = threading.Event()


class GroupCommit(Generic[_T]):
    """Run ``write`` over batches of the items handed to :meth:`run` by concurrent threads.

    ``write(items)`` must commit the items in one transaction (or none of them) and return one
    entry per item: None when it is stored, or the exception its caller is to raise. An
    exception raised by ``write`` itself goes to every caller in the batch. At most one ``write``
    runs at a time.
    """

    def __init__(
        self,
        write: Callable[[Sequence[_T]], Sequence[BaseException | None]],
        *,
        max_batch: int = MAX_BATCH,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._write = write
        self._max_batch = max_batch
        self._lock = threading.Lock()
        self._waiting: list[_Slot[_T]] = []
        self._leading = False

    def run(self, item: _T) -> None:
        """Write ``item`` in the next transaction and return once that has committed; raises
        what ``write`` gave for it."""
        slot = _Slot(item)
        with self._lock:
            self._waiting.append(slot)
            lead = not self._leading
            self._leading = True
        if not lead:
            try:
                slot.woken.wait()
            except BaseException:
                # Interrupted while waiting (KeyboardInterrupt, a signal handler that raises):
                # leave without stranding the others.
                self._abandon(slot)
                raise
            if not slot.lead:
                return self._outcome(slot)
        self._lead()
        return self._outcome(slot)

    def _abandon(self, slot: _Slot[_T]) -> None:
        with self._lock:
            if slot in self._waiting:  # not written yet: it never will be
                self._waiting.remove(slot)
            if not slot.lead:
                return  # its batch is being written, and the leader will wake the others
            # It was made the next leader: pass the lead on, or let the next caller take it.
            slot.lead = False
            successor = self._waiting[0] if self._waiting else None
            if successor is not None:
                successor.lead = True
            self._leading = successor is not None
        if successor is not None:
            successor.woken.set()

    def _lead(self) -> None:
        with self._lock:
            batch = self._waiting[: self._max_batch]
            del self._waiting[: self._max_batch]
        results: Sequence[BaseException | None] | None = None
        try:
            written = self._write([s.item for s in batch])
            if len(written) != len(batch):
                raise RuntimeError(f"write returned {len(written)} results for {len(batch)}")
            results = written
        except BaseException as error:  # every caller learns its item was not written
            results = [error] * len(batch)
        finally:
            # Also when the leader itself is interrupted, at any point: the callers it wrote
            # for are woken, and the lead is handed on, or nobody would ever write again.
            if results is None:
                interrupted = RuntimeError("the transaction holding this item was interrupted")
                results = [interrupted] * len(batch)
            with self._lock:
                # Hand the lead on before waking anyone, so a new caller never writes alongside;
                # marked under the lock, so a successor that gives up sees it must pass it on.
                successor = self._waiting[0] if self._waiting else None
                if successor is not None:
                    successor.lead = True
                self._leading = successor is not None
            for slot, result in zip(batch, results, strict=True):
                slot.error = result
                slot.done = True
                slot.woken.set()
            if successor is not None:
                successor.woken.set()

    @staticmethod
    def _outcome(slot: _Slot[_T]) -> None:
        assert slot.done
        if slot.error is not None:
            raise slot.error
