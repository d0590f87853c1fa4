"""Uploads that arrive together are submitted together (the HTTP adapter's side of group commit).

Each upload handled on its own took a thread of its own: with many at once, a dozen threads
fought for the GIL between their system calls, and the thread recording a group of tasks waited
longest. :class:`SubmitBatcher` instead hands the uploads waiting at a given moment to one thread,
which checks them one after the other, stores their originals concurrently and records their
tasks in one transaction (:meth:`imageproc.Processor.submit_many`). While a batch is in a thread,
new uploads gather for the next; a few batches may run at once, so that one waiting on the disk
does not hold the rest.

Like :mod:`imageproc.backends.sql._groupcommit`, there is no background task: the first waiting
request drives a batch itself and hands the turn on when it is done. It uses anyio only, as
Starlette does (the tests run it on asyncio).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Final

import anyio
import anyio.to_thread

from imageproc._processor import Processor, Upload
from imageproc._upload import Accepted
from imageproc.errors import copy_of

__all__ = ["SubmitBatcher"]

#: Uploads per batch, at most.
MAX_BATCH: Final = 32
#: Bytes of uploads per batch, at most (a bigger upload goes alone).
MAX_BYTES: Final = 64 * 1024 * 1024
#: Batches in threads at once, at most.
MAX_RUNNING: Final = 2


class _Slot:
    """One waiting upload: its result once a batch has run it."""

    __slots__ = ("accepted", "done", "error", "event", "size", "upload")

    def __init__(self, upload: Upload, size: int) -> None:
        self.upload = upload
        self.size = size
        self.event = anyio.Event()
        self.done = False
        self.accepted: Accepted | None = None
        self.error: BaseException | None = None


class SubmitBatcher:
    """Submit uploads to ``processor`` in batches of those waiting together.

    ``await batcher.submit(upload)`` returns how the upload was accepted (its task, and its
    idempotency key's record) or raises what :meth:`~imageproc.Processor.submit` would raise
    for that upload alone.
    """

    def __init__(
        self,
        processor: Processor,
        *,
        max_batch: int = MAX_BATCH,
        max_bytes: int = MAX_BYTES,
        max_running: int = MAX_RUNNING,
    ) -> None:
        if max_batch < 1 or max_bytes < 1 or max_running < 1:
            raise ValueError("max_batch, max_bytes and max_running must be positive")
        self.processor = processor
        self.max_batch = max_batch
        self.max_bytes = max_bytes
        self.max_running = max_running
        # Threads of its own: a batch never waits behind other work on anyio's shared pool.
        self._limiter = anyio.CapacityLimiter(max_running)
        self._waiting: deque[_Slot] = deque()
        self._running = 0

    async def submit(self, upload: Upload, *, size: int = 0) -> Accepted:
        """Submit one upload with whichever others are waiting; how it was accepted, or its
        error.

        ``size``: the upload's bytes, if known; a batch takes uploads up to :data:`MAX_BYTES`
        together (and always at least one), so that batches do not hold unbounded memory.
        """
        slot = _Slot(upload, size)
        self._waiting.append(slot)
        try:
            while not slot.done:
                if self._running < self.max_running and slot in self._waiting:
                    await self._run_batch()
                else:
                    await self._woken(slot)
        except BaseException:
            if not slot.done:
                if slot in self._waiting:
                    # Cancelled while waiting in line: never handed to a thread, so never
                    # submitted; it leaves the line.
                    self._waiting.remove(slot)
                    self._pass_turn()
                else:
                    # Cancelled while its batch runs: the thread may still be reading the
                    # upload, which the caller would close on the way out. Wait for the batch.
                    with anyio.CancelScope(shield=True):
                        while not slot.done:
                            await self._woken(slot)
            raise
        if slot.error is not None:
            raise slot.error
        assert slot.accepted is not None
        return slot.accepted

    @staticmethod
    async def _woken(slot: _Slot) -> None:
        # A batch sets done before it sets the event; a turn sets only the event. A fresh
        # event after each wake, so the next wake is not missed nor taken for this one.
        if slot.event.is_set():
            slot.event = anyio.Event()
        await slot.event.wait()

    def _take_batch(self) -> list[_Slot]:
        batch = [self._waiting.popleft()]
        size = batch[0].size
        while self._waiting and len(batch) < self.max_batch:
            size += self._waiting[0].size
            if size > self.max_bytes:
                break
            batch.append(self._waiting.popleft())
        return batch

    async def _run_batch(self) -> None:
        batch = self._take_batch()
        self._running += 1
        results: Sequence[Accepted | Exception] | Exception | None = None
        try:
            # Shielded, and on threads of its own: once taken from the line, the uploads are
            # submitted and each waiting request gets its answer, even if the request running
            # the batch is cancelled meanwhile.
            with anyio.CancelScope(shield=True):
                results = await anyio.to_thread.run_sync(
                    # What submit_many does, with each key's record for the answer.
                    self.processor._submission.accept_many,
                    [slot.upload for slot in batch],
                    limiter=self._limiter,
                )
        except Exception as error:  # a fault outside any one upload: each request gets it
            results = error
        finally:
            self._running -= 1
            for index, slot in enumerate(batch):
                if results is None:  # interrupted by a BaseException, which is the runner's own
                    result: Accepted | Exception = RuntimeError(
                        "the batch of this upload was stopped"
                    )
                elif isinstance(results, Exception):
                    # One exception raised in several requests would mix their tracebacks.
                    result = results if index == 0 else copy_of(results)
                else:
                    result = results[index]
                if isinstance(result, Accepted):
                    slot.accepted = result
                else:
                    slot.error = result
                slot.done = True
                slot.event.set()
            self._pass_turn()

    def _pass_turn(self) -> None:
        # The next waiting upload runs the next batch, if there is room for one.
        if self._waiting and self._running < self.max_running:
            self._waiting[0].event.set()
