"""Uploads that arrive together are submitted together (the HTTP adapter's side of group commit).

Each upload handled on its own took a thread of its own: with many at once, a dozen threads
fought for the GIL between their system calls, and the thread recording a group of tasks waited
longest. :class:`SubmitBatcher` instead hands the uploads waiting at a given moment to one thread,
which checks them one after the other, stores their originals concurrently and records their
tasks in one transaction (:meth:`imageproc.Processor.submit_many`). While a batch is in a thread,
new uploads gather for the next; a few batches may run at once, so that one waiting on the disk
does not hold the rest.

Like :mod:`imageproc.backends.groupcommit`, there is no background task: the first waiting
request drives a batch itself and hands the turn on when it is done. It runs under any event loop
anyio supports.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Sequence
from typing import Final

import anyio
import anyio.to_thread

from imageproc.errors import ImageprocError, copies_for
from imageproc.processor import Processor, Upload
from imageproc.task import Task

__all__ = ["SubmitBatcher"]

#: Uploads per batch, at most.
MAX_BATCH: Final = 32
#: Batches in threads at once, at most.
MAX_RUNNING: Final = 2


class _Slot:
    """One waiting upload: its result once a batch has run it."""

    __slots__ = ("done", "error", "event", "task", "upload")

    def __init__(self, upload: Upload) -> None:
        self.upload = upload
        self.event = anyio.Event()
        self.done = False
        self.task: Task | None = None
        self.error: BaseException | None = None


class SubmitBatcher:
    """Submit uploads to ``processor`` in batches of those waiting together.

    ``await batcher.submit(upload)`` returns the task or raises what
    :meth:`~imageproc.Processor.submit` would raise for that upload alone.
    """

    def __init__(
        self, processor: Processor, *, max_batch: int = MAX_BATCH, max_running: int = MAX_RUNNING
    ) -> None:
        if max_batch < 1 or max_running < 1:
            raise ValueError("max_batch and max_running must be positive")
        self.processor = processor
        self.max_batch = max_batch
        self.max_running = max_running
        self._waiting: deque[_Slot] = deque()
        self._running = 0

    async def submit(self, upload: Upload) -> Task:
        """Submit one upload with whichever others are waiting; its task, or its error."""
        slot = _Slot(upload)
        self._waiting.append(slot)
        try:
            while not slot.done:
                if self._running < self.max_running and slot in self._waiting:
                    await self._run_batch()
                else:
                    await slot.event.wait()
                    # Woken without a result: it is this slot's turn to run a batch.
                    slot.event = anyio.Event()
        except BaseException:
            if not slot.done:
                # Cancelled while waiting: the upload was never handed to a thread, so it is
                # not submitted; take it out of the line.
                with contextlib.suppress(ValueError):
                    self._waiting.remove(slot)
                self._pass_turn()
            raise
        if slot.error is not None:
            raise slot.error
        assert slot.task is not None
        return slot.task

    async def _run_batch(self) -> None:
        batch = [self._waiting.popleft() for _ in range(min(self.max_batch, len(self._waiting)))]
        self._running += 1
        results: Sequence[Task | Exception] | Exception | None = None
        try:
            # Not abandoned on cancellation: once handed over, the uploads are submitted and
            # each waiting request gets its answer.
            results = await anyio.to_thread.run_sync(
                self.processor.submit_many, [slot.upload for slot in batch]
            )
        except Exception as error:  # a fault outside any one upload: each request gets it
            results = error
        finally:
            self._running -= 1
            for index, slot in enumerate(batch):
                if results is None:  # interrupted by a BaseException, which is the runner's own
                    result: Task | Exception = RuntimeError("the batch of this upload was stopped")
                elif isinstance(results, Exception):
                    # One exception raised in several requests would mix their tracebacks.
                    result = results if index == 0 else _shared_fault(results)
                else:
                    result = results[index]
                if isinstance(result, Task):
                    slot.task = result
                else:
                    slot.error = result
                slot.done = True
                slot.event.set()
            self._pass_turn()

    def _pass_turn(self) -> None:
        # The next waiting upload runs the next batch, if there is room for one.
        if self._waiting and self._running < self.max_running:
            self._waiting[0].event.set()


def _shared_fault(error: Exception) -> Exception:
    if isinstance(error, ImageprocError):
        return copies_for(error, 2)[1]
    fault = RuntimeError(f"submitting the batch of this upload failed: {error!r}")
    fault.__cause__ = error
    return fault
