"""Waiting for a task on an asyncio event loop, with no thread held while it waits: what the
HTTP adapter's long-poll (``GET /status/{id}?wait=N``) and status stream
(``GET /status/{id}/events``) stand on.

The waiting is the completion push's (:mod:`imageproc.delivery._completions`): a callback,
called in the publishing thread, hands the news to the loop with ``call_soon_threadsafe``, and
the waiter awaits an :class:`asyncio.Event`. Reading the task is the caller's ``read``, an
awaitable that runs the blocking read in a thread for just that long. The backend's first
``LISTEN`` (``Completions.subscribe`` activates it, and that may block) runs once in a thread;
later subscriptions are made on the loop without waiting for it.

Self-contained on purpose (no Starlette, no processor): an asyncio API of the processor may
grow its own waiting, and the two can then be made one.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Final

from imageproc._task import Task
from imageproc.delivery._completions import Completions

__all__ = ["EndWatch", "follow", "wait_for_end", "watching"]

#: An awaitable read of a task by id (the blocking read run in a thread).
Read = Callable[[str], Awaitable[Task]]

#: Seconds the first subscription to a backend's completions may take to start listening
#: (PostgreSQL's first ``LISTEN``), in a thread; past it, ends are found by polling.
ACTIVATE_TIMEOUT: Final = 5.0
#: How a waiter polls when the backend pushes no completions (a custom repository): from the
#: first pause, doubling up to the last.
POLL_FIRST: Final = 0.05
POLL_MAX: Final = 1.0

# The Completions whose activation has been run once in a thread: later subscriptions to them
# activate with a timeout of 0, which never blocks the loop.
_activated: weakref.WeakSet[Completions] = weakref.WeakSet()


def _noop(_task_id: str, _task: Task | None) -> None:
    return None


class EndWatch:
    """What one waiter on the loop has heard of a task's end.

    :meth:`on_end` is the completion callback (any thread); :meth:`wait` awaits news on the loop.
    ``ended`` is the final task when a publisher had it, so it need not be read again.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, completions: Completions | None) -> None:
        self._loop = loop
        self._woken = asyncio.Event()
        self._completions = completions
        self._pause = POLL_FIRST
        self.ended: Task | None = None

    def on_end(self, _task_id: str, task: Task | None) -> None:
        """The completion callback: runs in the publishing thread, so it only hands over."""
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            self._loop.call_soon_threadsafe(self._arrive, task)

    def _arrive(self, task: Task | None) -> None:
        if task is not None and task.status.is_final:
            self.ended = task
        self._woken.set()

    def clear(self) -> None:
        """Forget news heard so far: call it before reading the task."""
        self._woken.clear()

    def poll_interval(self) -> float:
        """Seconds until the task must be read again even without news (``inf``: never)."""
        if self._completions is None:
            pause, self._pause = self._pause, min(self._pause * 2, POLL_MAX)
            return pause
        interval = self._completions.poll_interval
        return math.inf if interval is None else interval

    async def wait(self, seconds: float) -> bool:
        """Wait for news for at most ``seconds``; whether any came."""
        if self._woken.is_set():
            return True
        if seconds <= 0:
            return False
        try:
            async with asyncio.timeout(seconds):
                await self._woken.wait()
        except TimeoutError:
            return False
        return True


@contextlib.asynccontextmanager
async def watching(completions: Completions | None, task_id: str) -> AsyncIterator[EndWatch]:
    """An :class:`EndWatch` subscribed to the end of ``task_id`` for the ``async with`` block.

    Enter it *before* reading the task, so an end between the read and the wait is heard.
    Without ``completions`` nothing is pushed: the watch only paces the polling.
    """
    watch = EndWatch(asyncio.get_running_loop(), completions)
    if completions is None:
        yield watch
        return
    if completions not in _activated:
        # The first LISTEN may block: in a thread, subscribed and unsubscribed at once there, so
        # nothing is left subscribed if this request is cancelled meanwhile.
        await asyncio.to_thread(_activate, completions, task_id)
        _activated.add(completions)
    with completions.subscribe(task_id, watch.on_end, timeout=0):
        yield watch


def _activate(completions: Completions, task_id: str) -> None:
    with completions.subscribe(task_id, _noop, timeout=ACTIVATE_TIMEOUT):
        pass


async def wait_for_end(
    read: Read,
    task_id: str,
    *,
    timeout: float,
    completions: Completions | None,
    stopping: Callable[[], bool] = lambda: False,
) -> Task:
    """The task as soon as it is in a final status, or as it is after ``timeout`` seconds, or
    once ``stopping()`` is true when it is read (the server is stopping: wake the waiters with
    ``completions.publish_all()``).

    Woken by ``completions`` (reading again every ``completions.poll_interval`` seconds, if it
    says so), or polling with backoff without them. The first read's errors (no such task)
    propagate.
    """
    deadline = time.monotonic() + timeout
    async with watching(completions, task_id) as watch:
        while True:
            watch.clear()
            task = watch.ended or await read(task_id)
            remaining = deadline - time.monotonic()
            if task.status.is_final or remaining <= 0 or stopping():
                return task
            await watch.wait(min(remaining, watch.poll_interval()))


async def follow(
    read: Read,
    task_id: str,
    *,
    completions: Completions | None,
    poll: float,
    limit: float,
) -> AsyncIterator[Task]:
    """The task now, then each time its status (or attempt) changes, ending after a final one
    or once ``limit`` seconds have passed.

    A final status is pushed by ``completions``; the changes before it (queued → processing)
    are found by reading every ``poll`` seconds.
    """
    deadline = time.monotonic() + limit
    async with watching(completions, task_id) as watch:
        last: tuple[str, int] | None = None
        while True:
            watch.clear()
            task = watch.ended or await read(task_id)
            seen = (str(task.status), task.attempts)
            if seen != last:
                last = seen
                yield task
            remaining = deadline - time.monotonic()
            if task.status.is_final or remaining <= 0:
                return
            await watch.wait(min(remaining, poll, watch.poll_interval()))
