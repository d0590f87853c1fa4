"""The asyncio waiting of the long-poll and the status stream (``_httpwait``): woken by the
completion push from another thread, polling without it, never blocking the loop on a slow first
``LISTEN``, and leaving no subscription behind."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

from imageproc import TaskStatus
from imageproc._clock import utcnow
from imageproc._task import Task
from imageproc.delivery import _httpwait
from imageproc.delivery._completions import Completions
from imageproc.delivery._httpwait import follow, wait_for_end
from tests.support.doubles import new_task

pytestmark = pytest.mark.timeout(30)

T = TypeVar("T")


def run(make: Callable[[], Awaitable[T]], timeout: float = 10) -> T:
    async def bounded() -> T:
        async with asyncio.timeout(timeout):
            return await make()

    return asyncio.run(bounded())


class Store:
    """The task as a backend holds it; ``read`` is the awaitable read, counted."""

    def __init__(self, task: Task) -> None:
        self.task = task
        self.reads = 0

    async def read(self, task_id: str) -> Task:
        assert task_id == self.task.id
        self.reads += 1
        return self.task


def claimed(task: Task) -> Task:
    return task.claim(utcnow())


def succeeded(task: Task) -> Task:
    now = utcnow()
    return task.claim(now).succeed((), now)


def in_thread(seconds: float, action: Callable[[], None]) -> threading.Thread:
    def go() -> None:
        time.sleep(seconds)
        action()

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    return thread


def test_an_end_published_from_another_thread_wakes_the_waiter() -> None:
    store, completions = Store(new_task()), Completions()

    def finish() -> None:
        store.task = succeeded(store.task)
        completions.publish_tasks((store.task,))

    thread = in_thread(0.2, finish)
    started = time.monotonic()
    task = run(lambda: wait_for_end(store.read, store.task.id, timeout=20, completions=completions))
    thread.join(5)
    assert task.status == TaskStatus.SUCCEEDED
    assert time.monotonic() - started < 3
    assert store.reads == 1  # the pushed task is not read again
    assert len(completions) == 0


def test_the_waiter_answers_the_task_as_it_is_after_the_timeout() -> None:
    store, completions = Store(new_task()), Completions()
    started = time.monotonic()
    task = run(
        lambda: wait_for_end(store.read, store.task.id, timeout=0.3, completions=completions)
    )
    assert task.status == TaskStatus.QUEUED
    assert 0.25 < time.monotonic() - started < 3
    assert len(completions) == 0


def test_without_completions_the_waiter_polls() -> None:
    store = Store(new_task())
    thread = in_thread(0.2, lambda: setattr(store, "task", succeeded(store.task)))
    task = run(lambda: wait_for_end(store.read, store.task.id, timeout=20, completions=None))
    thread.join(5)
    assert task.status == TaskStatus.SUCCEEDED
    assert store.reads > 1


def test_a_slow_first_listen_does_not_block_the_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    activations: list[float] = []

    def activate(timeout: float) -> None:
        activations.append(timeout)
        if timeout:
            time.sleep(0.5)  # the first LISTEN

    completions = Completions(activate=activate)
    store = Store(new_task())
    monkeypatch.setattr(_httpwait, "_activated", type(_httpwait._activated)())

    async def both() -> int:
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.02)
                ticks += 1

        ticker = asyncio.create_task(tick())
        await wait_for_end(store.read, store.task.id, timeout=0.1, completions=completions)
        await wait_for_end(store.read, store.task.id, timeout=0.1, completions=completions)
        ticker.cancel()
        return ticks

    ticks = run(both)
    assert ticks >= 15  # the loop went on while the first activation waited in a thread
    # Once in a thread with a real timeout; then on the loop, never waiting.
    assert activations[0] == _httpwait.ACTIVATE_TIMEOUT
    assert activations[1:] == [0, 0]


def test_follow_yields_each_change_and_ends_after_the_final_one() -> None:
    store, completions = Store(new_task()), Completions()

    def work() -> None:
        time.sleep(0.2)
        store.task = claimed(store.task)
        time.sleep(0.3)
        store.task = store.task.succeed((), utcnow())
        completions.publish_tasks((store.task,))

    async def collect() -> list[TaskStatus]:
        return [
            task.status
            async for task in follow(
                store.read, store.task.id, completions=completions, poll=0.05, limit=20
            )
        ]

    thread = in_thread(0, work)
    statuses = run(collect)
    thread.join(5)
    assert statuses == [TaskStatus.QUEUED, TaskStatus.PROCESSING, TaskStatus.SUCCEEDED]
    assert len(completions) == 0


def test_follow_ends_at_its_limit_and_unsubscribes_when_abandoned() -> None:
    store, completions = Store(new_task()), Completions()

    async def collect() -> list[TaskStatus]:
        return [
            task.status
            async for task in follow(
                store.read, store.task.id, completions=completions, poll=0.05, limit=0.3
            )
        ]

    assert run(collect) == [TaskStatus.QUEUED]

    async def abandon() -> None:
        stream = follow(store.read, store.task.id, completions=completions, poll=0.05, limit=20)
        await anext(stream)
        assert len(completions) == 1
        await stream.aclose()

    run(abandon)
    assert len(completions) == 0
