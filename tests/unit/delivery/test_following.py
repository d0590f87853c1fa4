"""``follow``, the status stream's changes of a task (``GET /status/{id}/events``): the changes
before its end found by reading, its end pushed through the shared ``AsyncWaiters`` (woken from
another thread, or found by the sweep without a push), its limit, and no subscription left
behind."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import pytest

from imageproc import BackendUnavailable, TaskStatus
from imageproc._clock import utcnow
from imageproc._task import Task
from imageproc.delivery._asyncwait import AsyncWaiters, follow
from imageproc.delivery._completions import Completions
from tests.support.doubles import new_task
from tests.support.loops import run
from tests.unit.delivery.test_asyncwait import Pool, Table

pytestmark = pytest.mark.timeout(30)


class Store(Table):
    """One task; ``read`` is the stream's own awaitable read, counted apart from the waiters'."""

    def __init__(self, task: Task) -> None:
        super().__init__(task)
        self.id = task.id
        self.reads = 0

    @property
    def task(self) -> Task:
        return self.tasks[self.id]

    @task.setter
    def task(self, task: Task) -> None:
        with self.lock:
            self.tasks[self.id] = task

    async def read(self, task_id: str) -> Task:
        assert task_id == self.id
        self.reads += 1
        return self.task


def waiters_of(store: Store, completions: Completions | None) -> AsyncWaiters:
    return AsyncWaiters(store.get, repository=store, completions=completions, run_blocking=Pool())


def in_thread(seconds: float, action: Callable[[], None]) -> threading.Thread:
    def go() -> None:
        time.sleep(seconds)
        action()

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    return thread


async def statuses(
    waiters: AsyncWaiters, store: Store, *, poll: float, limit: float
) -> list[TaskStatus]:
    return [
        task.status async for task in follow(waiters, store.read, store.id, poll=poll, limit=limit)
    ]


def test_follow_yields_each_change_and_ends_after_the_final_one() -> None:
    store, completions = Store(new_task()), Completions()
    waiters = waiters_of(store, completions)

    def work() -> None:
        time.sleep(0.2)
        store.task = store.task.claim(utcnow())
        time.sleep(0.3)
        store.task = store.task.succeed((), utcnow())
        completions.publish_tasks((store.task,))

    thread = in_thread(0, work)
    seen = run(statuses(waiters, store, poll=0.05, limit=20))
    thread.join(5)
    assert seen == [TaskStatus.QUEUED, TaskStatus.PROCESSING, TaskStatus.SUCCEEDED]
    assert len(completions) == 0
    assert len(waiters) == 0


def test_an_end_pushed_from_another_thread_ends_the_stream_before_its_next_read() -> None:
    store, completions = Store(new_task()), Completions()
    waiters = waiters_of(store, completions)

    def finish() -> None:
        store.task = store.task.claim(utcnow()).succeed((), utcnow())
        completions.publish_tasks((store.task,))

    thread = in_thread(0.2, finish)
    started = time.monotonic()
    seen = run(statuses(waiters, store, poll=30, limit=60))
    thread.join(5)
    assert seen == [TaskStatus.QUEUED, TaskStatus.SUCCEEDED]
    assert time.monotonic() - started < 3
    assert store.reads == 1  # the first; the end came pushed, not read by the stream


def test_without_completions_the_end_is_found_by_the_sweep() -> None:
    store = Store(new_task())
    waiters = waiters_of(store, None)
    thread = in_thread(0.2, lambda: store.end(store.id))
    started = time.monotonic()
    seen = run(statuses(waiters, store, poll=30, limit=60))
    thread.join(5)
    assert seen == [TaskStatus.QUEUED, TaskStatus.SUCCEEDED]
    assert time.monotonic() - started < 3


def test_follow_ends_at_its_limit_and_unsubscribes_when_abandoned() -> None:
    store, completions = Store(new_task()), Completions()
    waiters = waiters_of(store, completions)
    assert run(statuses(waiters, store, poll=0.05, limit=0.3)) == [TaskStatus.QUEUED]
    assert len(completions) == 0

    async def abandon() -> None:
        stream = follow(waiters, store.read, store.id, poll=0.05, limit=20)
        await anext(stream)
        pending = asyncio.ensure_future(anext(stream))  # waiting for the next change
        await asyncio.sleep(0.1)
        assert len(completions) == 1
        assert waiters.sweeping() == 1
        pending.cancel()
        await asyncio.wait({pending})
        await stream.aclose()
        assert len(completions) == 0

    run(abandon())
    assert len(waiters) == 0


def test_a_read_that_fails_ends_the_stream_with_its_error() -> None:
    store, completions = Store(new_task()), Completions()
    waiters = waiters_of(store, completions)

    async def fail(task_id: str) -> Task:
        raise BackendUnavailable("gone")

    seen: list[TaskStatus] = []
    reads = iter([store.read, fail])

    async def read(task_id: str) -> Task:
        return await next(reads, fail)(task_id)

    async def collect() -> None:
        async for task in follow(waiters, read, store.id, poll=0.05, limit=20):
            seen.append(task.status)

    with pytest.raises(BackendUnavailable):
        run(collect())
    assert seen == [TaskStatus.QUEUED]
    assert len(completions) == 0
