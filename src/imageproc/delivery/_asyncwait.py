"""Waiting for tasks to end on an asyncio event loop, with no thread and no polling loop held per
waiter: what ``AsyncProcessor.wait``, and the HTTP adapter's long-poll
(``GET /status/{id}?wait=N``) and status stream (``GET /status/{id}/events``, :func:`follow`)
stand on.

One :class:`AsyncWaiters` serves every waiter of an ``AsyncProcessor``, on each event loop that
waits (they are kept apart by loop). Per loop it holds:

* the waiters, a future each, by task id; the first waiter of an id subscribes one callback to
  the backend's :class:`~imageproc.delivery._completions.Completions`, the last one leaving
  unsubscribes it. The callback runs in the publishing thread and only hands the news to the
  loop (``call_soon_threadsafe``): a final task is given to its waiters at once; an end known by
  id only (another process, a listener that reconnected) asks the sweep to read it.
* one sweep, an asyncio task that runs while there are waiters: every
  ``Completions.poll_interval`` (ends this process cannot hear of: SQLite written by another
  process, PostgreSQL while its listener is down) it reads the ended tasks among all the waited
  ids in ONE blocking call (one query where the repository has ``ended_among``, else a ``get``
  per id in that same call) and wakes their waiters; when ends arrive by id only, it reads at
  once, in the same way, just the ids heard since its last read. Without completions at all (a
  custom repository), it reads every :data:`UNPUSHED_POLL` seconds.

Every blocking call (the first read of each task, the sweep's read, getting ready to listen)
goes through ``run_blocking``, which the caller points at a thread pool. ``activate`` (the first
``LISTEN`` on PostgreSQL) runs once, in that pool, before the first subscription.

:func:`follow` yields a task's changes of status: those before its end (queued → processing)
found by reading it every few seconds, its end waited for through an :class:`AsyncWaiters`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from contextlib import AbstractContextManager
from typing import Any, Final, Protocol, TypeVar, runtime_checkable

from imageproc._task import Task
from imageproc.delivery._completions import Completions
from imageproc.errors import TaskNotFound, WaitTimeout

__all__ = ["UNPUSHED_POLL", "AsyncWaiters", "EndedAmong", "follow"]

logger = logging.getLogger("imageproc.completions")

#: Seconds between the sweep's reads for a repository that pushes no completions at all.
UNPUSHED_POLL: Final = 0.05
#: How long the first waiter gives a backend to start listening (as ``Processor.wait`` does).
ACTIVATE_TIMEOUT: Final = 5.0
#: The sweep's idle check while every end is pushed (``poll_interval`` None): it reads nothing.
_PUSHED_RECHECK: Final = 1.0

T = TypeVar("T")


class RunBlocking(Protocol):
    """Runs a blocking call off the loop (in a thread pool); awaiting it gives its result."""

    def __call__(self, fn: Callable[..., T], /, *args: Any) -> Awaitable[T]:
        """``fn(*args)``, run in a thread."""
        ...


@runtime_checkable
class EndedAmong(Protocol):
    """A repository that reads the ended tasks among many ids at once (the SQL and memory ones):
    the sweep's one query."""

    def ended_among(self, task_ids: Collection[str]) -> list[Task]:
        """The tasks among ``task_ids`` that are in a final status."""
        ...


class AsyncWaiters:
    """The waiters of one ``AsyncProcessor``: ``await waiters.wait(task_id, timeout)``.

    ``get`` reads one task (blocking), ``repository`` is asked for ``ended_among`` by the sweep,
    ``completions`` pushes ends (None: nothing is pushed, the sweep reads), ``run_blocking(fn,
    *args)`` awaits ``fn(*args)`` run in a thread.
    """

    def __init__(
        self,
        get: Callable[[str], Task],
        *,
        repository: object,
        completions: Completions | None,
        run_blocking: RunBlocking,
    ) -> None:
        self._get = get
        self._repository = repository
        self._completions = completions
        self._run = run_blocking
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopWaiters] = (
            weakref.WeakKeyDictionary()
        )
        self._activated = False

    def __len__(self) -> int:
        """How many waiters there are now, on every loop."""
        return sum(len(waiters) for waiters in list(self._loops.values()))

    def sweeping(self) -> int:
        """How many sweeps run now (one per loop with waiters at most)."""
        return sum(waiters.sweeping for waiters in list(self._loops.values()))

    async def wait(self, task_id: str, timeout: float) -> Task:
        """The task once it is in a final status; :class:`~imageproc.WaitTimeout` after
        ``timeout`` seconds, :class:`~imageproc.TaskNotFound` if there is no such task."""
        deadline = time.monotonic() + timeout
        loop = asyncio.get_running_loop()
        if self._completions is not None and not self._activated:
            await self._waiters_on(loop).activated()
        waiters = self._waiters_on(loop)
        status: object = "not read yet"
        future = waiters.add(task_id)
        try:
            async with asyncio.timeout_at(loop.time() + max(0.0, deadline - time.monotonic())):
                # Subscribed (above) before the first read, so an end in between is not missed.
                task = await self._run(self._get, task_id)
                while not task.status.is_final:
                    status = task.status
                    heard = await future
                    if heard is not None and heard.status.is_final:
                        task = heard
                    else:  # only the id is known, or it ended and was purged: read it
                        future = waiters.renew(task_id, future)
                        task = await self._run(self._get, task_id)
                return task
        except TimeoutError:
            raise WaitTimeout(f"task {task_id} is still {status} after {timeout}s") from None
        finally:
            waiters.remove(task_id, future)
            if not waiters and self._loops.get(loop) is waiters:
                del self._loops[loop]  # it refers to its loop: keep no loop alive for nothing

    def _waiters_on(self, loop: asyncio.AbstractEventLoop) -> _LoopWaiters:
        waiters = self._loops.get(loop)
        if waiters is None:
            waiters = self._loops[loop] = _LoopWaiters(self, loop)
        return waiters

    async def activate(self) -> None:
        """Get the backend ready to push ends (may block: in a thread), then never again."""
        if self._completions is not None:
            await self._run(self._completions.activate, ACTIVATE_TIMEOUT)
        self._activated = True

    # -- used by the per-loop waiters ---------------------------------------------------------

    def subscribe(
        self,
        task_id: str,
        loop: asyncio.AbstractEventLoop,
        heard: Callable[[str, Task | None], None],
    ) -> AbstractContextManager[None] | None:
        if self._completions is None:
            return None

        def on_end(ended_id: str, task: Task | None) -> None:
            # In the publishing thread: hand the news to the loop, nothing more.
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits there now
                loop.call_soon_threadsafe(heard, ended_id, task)

        subscription = self._completions.subscribe(task_id, on_end, activate=False)
        subscription.__enter__()
        return subscription

    def poll_interval(self) -> float | None:
        if self._completions is None:
            return UNPUSHED_POLL
        return self._completions.poll_interval

    def read_ended(self, task_ids: list[str]) -> list[tuple[str, Task | None]]:
        """Blocking, in a thread: the ended tasks among ``task_ids``; with a repository that
        has no ``ended_among``, one ``get`` each (a missing task is reported, id only)."""
        if isinstance(self._repository, EndedAmong):
            return [(task.id, task) for task in self._repository.ended_among(task_ids)]
        ended: list[tuple[str, Task | None]] = []
        for task_id in task_ids:
            try:
                task = self._get(task_id)
            except TaskNotFound:
                ended.append((task_id, None))
                continue
            if task.status.is_final:
                ended.append((task_id, task))
        return ended

    async def run_blocking(self, fn: Callable[..., T], *args: object) -> T:
        """``fn(*args)`` off the loop."""
        return await self._run(fn, *args)


class _LoopWaiters:
    """The waiters on one event loop, their subscriptions, and the loop's one sweep."""

    def __init__(self, owner: AsyncWaiters, loop: asyncio.AbstractEventLoop) -> None:
        self._owner = owner
        self._loop = loop
        self._futures: dict[str, list[asyncio.Future[Task | None]]] = {}
        self._subscriptions: dict[str, AbstractContextManager[None] | None] = {}
        self._sweep: asyncio.Task[None] | None = None
        self._sweep_now = asyncio.Event()
        #: Ids whose end was heard without the task: the sweep reads just these, at once.
        self._news: set[str] = set()
        self._activation: asyncio.Task[None] | None = None

    async def activated(self) -> None:
        """Once the backend is ready to push: the first waiters on this loop share one call."""
        if self._activation is None or (
            self._activation.done() and self._activation.exception() is not None
        ):
            self._activation = self._loop.create_task(self._owner.activate())
        await asyncio.shield(self._activation)

    def __len__(self) -> int:
        return sum(len(futures) for futures in self._futures.values())

    @property
    def sweeping(self) -> int:
        return int(self._sweep is not None and not self._sweep.done())

    def add(self, task_id: str) -> asyncio.Future[Task | None]:
        future: asyncio.Future[Task | None] = self._loop.create_future()
        futures = self._futures.setdefault(task_id, [])
        futures.append(future)
        if len(futures) == 1:
            self._subscriptions[task_id] = self._owner.subscribe(task_id, self._loop, self._heard)
        if self._sweep is None or self._sweep.done():
            self._sweep = self._loop.create_task(self._run_sweep(), name="imageproc-wait-sweep")
        return future

    def renew(
        self, task_id: str, future: asyncio.Future[Task | None]
    ) -> asyncio.Future[Task | None]:
        """A fresh future in place of a used one, staying subscribed."""
        fresh: asyncio.Future[Task | None] = self._loop.create_future()
        futures = self._futures[task_id]
        futures[futures.index(future)] = fresh
        return fresh

    def remove(self, task_id: str, future: asyncio.Future[Task | None]) -> None:
        futures = self._futures.get(task_id, [])
        if future in futures:
            futures.remove(future)
        if not futures:
            self._futures.pop(task_id, None)
            subscription = self._subscriptions.pop(task_id, None)
            if subscription is not None:
                subscription.__exit__(None, None, None)
        if not self._futures and self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None

    def _heard(self, task_id: str, task: Task | None) -> None:
        # On the loop: a final task goes to its waiters; an id alone is for the sweep to read.
        if task is not None and task.status.is_final:
            self._wake(task_id, task)
        elif task_id in self._futures:
            self._news.add(task_id)
            self._sweep_now.set()

    def _wake(self, task_id: str, task: Task | None) -> None:
        for future in self._futures.get(task_id, ()):
            if not future.done():
                future.set_result(task)

    async def _run_sweep(self) -> None:
        last_full = self._loop.time()
        while self._futures:
            interval = self._owner.poll_interval()
            period = _PUSHED_RECHECK if interval is None else interval
            remaining = last_full + period - self._loop.time()
            if remaining > 0 and not self._sweep_now.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):
                        await self._sweep_now.wait()
            # Every poll_interval, every waited task (ends nobody told us of), however much
            # news by id keeps arriving meanwhile; between, just the ids heard (a NOTIFY names
            # one task, not all). With every end pushed (no poll_interval), only the news.
            full = self._loop.time() >= last_full + period
            if full:
                last_full = self._loop.time()
            if full and interval is not None:
                ids = list(self._futures)
            else:
                ids = [task_id for task_id in self._news if task_id in self._futures]
            self._sweep_now.clear()
            self._news.clear()
            if not ids:
                continue
            try:
                ended = await self._owner.run_blocking(self._owner.read_ended, ids)
            except Exception:
                # A database hiccup: the waiters keep their deadlines; read again next time.
                logger.warning("the wait sweep could not read %d task(s)", len(ids), exc_info=True)
                continue
            for task_id, task in ended:
                self._wake(task_id, task)


async def follow(
    waiters: AsyncWaiters,
    read: Callable[[str], Awaitable[Task]],
    task_id: str,
    *,
    poll: float,
    limit: float,
) -> AsyncIterator[Task]:
    """The task now, then each time its status, attempt or progress changes, ending after a
    final one or once ``limit`` seconds have passed.

    ``read`` is an awaitable read of the task (its errors propagate, as do those of the
    waiters' reads). The final status comes through ``waiters`` (one wait for the whole
    stream); the changes before it are found by ``read`` every ``poll`` seconds.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    task = await read(task_id)
    yield task
    last = (str(task.status), task.attempts, task.variants_done)
    if task.status.is_final:
        return
    # Started after the first read and event: this stream's reads stay in their order.
    ended = loop.create_task(waiters.wait(task_id, max(0.0, deadline - loop.time())))
    try:
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            await asyncio.wait({ended}, timeout=min(poll, remaining))
            if ended.done():
                try:
                    task = ended.result()
                except WaitTimeout:  # the limit
                    return
            else:
                task = await read(task_id)
            seen = (str(task.status), task.attempts, task.variants_done)
            if seen != last:
                last = seen
                yield task
            if task.status.is_final:
                return
    finally:
        if not ended.done():
            ended.cancel()
            # Its subscription is given back before the stream is over.
            await asyncio.wait({ended})
        if not ended.cancelled():
            ended.exception()  # retrieved: never logged as unretrieved
