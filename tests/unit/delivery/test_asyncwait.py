"""AsyncWaiters: asyncio waiters woken by the completion push, and one shared sweep per event
loop for the ends only reading finds."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import pytest

from imageproc import TaskNotFound, TaskStatus, WaitTimeout
from imageproc._clock import utcnow
from imageproc._task import Task
from imageproc.delivery._asyncwait import AsyncWaiters
from imageproc.delivery._completions import Completions
from tests.support.doubles import new_task
from tests.support.loops import gather_bounded, run, until

T = TypeVar("T")


def succeeded(task: Task) -> Task:
    now = utcnow()
    return task.claim(now).succeed((), now)


class Table:
    """A repository double: tasks by id, counting reads; ``batch`` gives it ``ended_among``."""

    def __init__(self, *tasks: Task) -> None:
        self.tasks = {task.id: task for task in tasks}
        self.gets = 0
        self.batches: list[list[str]] = []
        self.lock = threading.Lock()

    def get(self, task_id: str) -> Task:
        with self.lock:
            self.gets += 1
            if task_id not in self.tasks:
                raise TaskNotFound(task_id)
            return self.tasks[task_id]

    def end(self, task_id: str) -> Task:
        with self.lock:
            self.tasks[task_id] = done = succeeded(self.tasks[task_id])
        return done


class BatchTable(Table):
    def ended_among(self, task_ids: Collection[str]) -> list[Task]:
        with self.lock:
            self.batches.append(list(task_ids))
            found = (self.tasks.get(task_id) for task_id in task_ids)
            return [task for task in found if task is not None and task.status.is_final]


class Pool:
    """``run_blocking`` on a small thread pool, counting the calls."""

    def __init__(self) -> None:
        self.executor = ThreadPoolExecutor(max_workers=2)
        self.calls = 0

    async def __call__(self, fn: Callable[..., T], /, *args: Any) -> T:
        self.calls += 1
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)


def waiters_for(table: Table, completions: Completions | None, pool: Pool) -> AsyncWaiters:
    return AsyncWaiters(table.get, repository=table, completions=completions, run_blocking=pool)


def test_a_pushed_final_task_wakes_its_waiter_without_another_read() -> None:
    task = new_task()
    table, completions, pool = Table(task), Completions(), Pool()
    waiters = waiters_for(table, completions, pool)

    async def scenario() -> Task:
        waiter = asyncio.create_task(waiters.wait(task.id, timeout=5))
        await asyncio.sleep(0.05)
        done = succeeded(task)
        # Published from another thread, as a worker does.
        threading.Thread(target=completions.publish_tasks, args=([done],)).start()
        return await asyncio.wait_for(waiter, 5)

    assert run(scenario()).status == TaskStatus.SUCCEEDED
    assert table.gets == 1  # the first read only
    assert len(completions) == 0


def test_ends_only_reading_finds_are_found_by_one_sweep_for_all_waiters() -> None:
    # Another process ends the tasks: nothing is pushed; poll_interval says to read.
    tasks = [new_task() for _ in range(50)]
    table, pool = BatchTable(*tasks), Pool()
    completions = Completions(poll_interval=0.05)
    waiters = waiters_for(table, completions, pool)

    async def scenario() -> list[Task]:
        waits = [asyncio.create_task(waiters.wait(t.id, timeout=10)) for t in tasks]
        await until(lambda: len(waiters) == 50 and len(table.batches) >= 1)
        assert waiters.sweeping() == 1  # one sweep, not one loop per waiter
        sweeps_before = len(table.batches)
        assert sweeps_before <= 5
        assert all(len(batch) == 50 for batch in table.batches)  # every waited id, one read
        for task in tasks:
            table.end(task.id)
        done = await gather_bounded(*waits, timeout=10)
        assert waiters.sweeping() == 0  # no waiters: no sweep
        return done

    done = run(scenario())
    assert {t.status for t in done} == {TaskStatus.SUCCEEDED}
    assert table.gets == 50  # each waiter's first read; the ends came from the sweep's batch


def test_without_ended_among_the_sweep_gets_each_task_in_one_blocking_call() -> None:
    task = new_task()
    table, pool = Table(task), Pool()
    waiters = waiters_for(table, Completions(poll_interval=0.05), pool)

    async def scenario() -> Task:
        waiter = asyncio.create_task(waiters.wait(task.id, timeout=5))
        await asyncio.sleep(0.1)
        table.end(task.id)
        return await asyncio.wait_for(waiter, 5)

    assert run(scenario()).status == TaskStatus.SUCCEEDED


def test_an_end_known_by_id_only_is_read_at_once_by_the_sweep() -> None:
    # PostgreSQL's NOTIFY from another process: the id, not the task. No 10 s poll to wait for.
    task = new_task()
    table, pool = BatchTable(task), Pool()
    completions = Completions(poll_interval=10.0)
    waiters = waiters_for(table, completions, pool)

    async def scenario() -> float:
        waiter = asyncio.create_task(waiters.wait(task.id, timeout=5))
        await asyncio.sleep(0.05)
        table.end(task.id)
        started = time.monotonic()
        threading.Thread(target=completions.publish, args=([(task.id, None)],)).start()
        await asyncio.wait_for(waiter, 5)
        return time.monotonic() - started

    assert run(scenario()) < 1.0
    assert len(table.batches) == 1


def test_news_by_id_never_starves_the_full_read() -> None:
    # Ends of one task keep being heard by id while another ends unheard: the full read still
    # comes every poll_interval.
    heard, silent = new_task(), new_task()
    table, pool = BatchTable(heard, silent), Pool()
    completions = Completions(poll_interval=0.1)
    waiters = waiters_for(table, completions, pool)
    stop = threading.Event()

    def chatter() -> None:
        while not stop.wait(0.01):
            completions.publish([(heard.id, None)])  # "read it", but it has not ended

    async def scenario() -> float:
        noisy = asyncio.create_task(waiters.wait(heard.id, timeout=10))
        quiet = asyncio.create_task(waiters.wait(silent.id, timeout=10))
        await asyncio.sleep(0.05)
        talker = threading.Thread(target=chatter)
        talker.start()
        try:
            table.end(silent.id)
            started = time.monotonic()
            await asyncio.wait_for(quiet, 5)
            return time.monotonic() - started
        finally:
            stop.set()
            talker.join(5)
            noisy.cancel()

    assert run(scenario()) < 1.0
    assert any(len(batch) == 1 for batch in table.batches)  # news: the one id heard
    assert any(len(batch) == 2 for batch in table.batches)  # the poll: every waited id


def test_a_repository_without_completions_is_swept() -> None:
    task = new_task()
    table, pool = BatchTable(task), Pool()
    waiters = waiters_for(table, None, pool)

    async def scenario() -> Task:
        waiter = asyncio.create_task(waiters.wait(task.id, timeout=5))
        await asyncio.sleep(0.05)
        table.end(task.id)
        return await asyncio.wait_for(waiter, 5)

    assert run(scenario()).status == TaskStatus.SUCCEEDED


def test_a_task_purged_while_waited_for_is_not_found() -> None:
    task = new_task()
    table, pool = Table(task), Pool()
    waiters = waiters_for(table, Completions(poll_interval=0.05), pool)

    async def scenario() -> None:
        waiter = asyncio.create_task(waiters.wait(task.id, timeout=5))
        await asyncio.sleep(0.05)
        del table.tasks[task.id]
        with pytest.raises(TaskNotFound):
            await asyncio.wait_for(waiter, 5)

    run(scenario())


def test_the_timeout_is_a_wait_timeout_naming_the_status() -> None:
    task = new_task()
    waiters = waiters_for(Table(task), Completions(poll_interval=0.05), Pool())
    with pytest.raises(WaitTimeout, match=f"task {task.id} is still queued after 0.1s"):
        run(waiters.wait(task.id, timeout=0.1))
    assert len(waiters) == 0


def test_activate_runs_once_in_a_thread_for_many_first_waiters() -> None:
    tasks = [succeeded(new_task()) for _ in range(20)]
    loop_thread: list[threading.Thread] = []
    activations: list[threading.Thread] = []

    def activate(timeout: float) -> None:
        time.sleep(0.05)  # as a first LISTEN does
        activations.append(threading.current_thread())

    completions = Completions(activate=activate)
    waiters = waiters_for(Table(*tasks), completions, Pool())

    async def scenario() -> list[Task]:
        loop_thread.append(threading.current_thread())
        first = await gather_bounded(*(waiters.wait(t.id, timeout=5) for t in tasks), timeout=5)
        await waiters.wait(tasks[0].id, timeout=5)
        return first

    assert len(run(scenario())) == 20
    assert len(activations) == 1
    assert activations[0] is not loop_thread[0]


def test_news_for_a_closed_loop_is_dropped_quietly() -> None:
    task = new_task()
    completions = Completions()
    waiters = waiters_for(Table(task), completions, Pool())
    loop = asyncio.new_event_loop()
    subscription = waiters.subscribe(task.id, loop, lambda task_id, task: None)
    loop.close()
    completions.publish_tasks([succeeded(task)])  # no RuntimeError, nothing logged
    assert subscription is not None
    subscription.__exit__(None, None, None)
    assert len(completions) == 0
