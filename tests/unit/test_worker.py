"""Tests of ``_worker.WorkerPool``: claims, heartbeats, autoscaling and graceful stop."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Sequence
from typing import Any

import pytest

from imageproc import BackendUnavailable, BatchQueue, Lease, Processor, Queue, TaskStatus
from imageproc._clock import utcnow
from imageproc._execution import Recorder
from imageproc._worker import WorkerPool
from imageproc.backends._memory import MemoryQueue, MemoryRepository, MemoryStorage
from imageproc.testing import FAST_OPTIONS, FastForwardClock, sample_image
from tests.support.doubles import (
    CountingQueue,
    SlowStorage,
    new_task,
    run_to_completion,
    wait_until,
)

TINY = sample_image(64, 48)


def build(delay: float = 0.0, **options: object) -> tuple[Processor, CountingQueue]:
    # The repository keeps the Processor's clock, so a test can fast-forward both.
    repository = MemoryRepository(clock=options.get("clock", utcnow))  # type: ignore[arg-type]
    queue = CountingQueue(MemoryQueue(repository))
    storage = SlowStorage(MemoryStorage(), delay) if delay else MemoryStorage()
    proc = Processor(storage, queue, repository, **{**FAST_OPTIONS, **options})  # type: ignore[arg-type]
    return proc, queue


def statuses(proc: Processor, ids: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for task_id in ids:
        status = proc.get(task_id).status
        counts[status] = counts.get(status, 0) + 1
    return counts


def test_200_tasks_on_4_threads_each_completed_exactly_once() -> None:
    proc, queue = build()
    ids = run_to_completion(proc, 200, workers=4)
    assert queue.completed == dict.fromkeys(ids, 1)
    assert all(proc.get(task_id).attempts == 1 for task_id in ids)


def test_a_crashed_workers_task_is_finished_by_another_after_its_lease_expires() -> None:
    clock = FastForwardClock()
    proc, queue = build(clock=clock)
    task = proc.submit(TINY)
    (crashed,) = proc.queue.claim("crashed-worker", lease_seconds=30)  # ...and never finishes
    proc.start(workers=1)
    try:
        time.sleep(0.1)  # the idle worker looks for work a few times...
        assert proc.get(task.id).attempts == 1  # ...and leaves the leased task alone
        clock.advance(31)  # the crashed worker's lease runs out
        done = proc.wait(task.id, timeout=10)
    finally:
        proc.stop(timeout=5)
    assert (done.status, done.attempts) == (TaskStatus.SUCCEEDED, 2)
    assert queue.completed[task.id] == 1
    assert proc.process(crashed) is None  # the crashed worker, back from the dead, records nothing
    assert queue.completed[task.id] == 1


def test_heartbeats_keep_a_long_task_from_being_taken_over() -> None:
    proc, queue = build(delay=1.0, lease_seconds=0.3)
    task = proc.submit(TINY)
    proc.start(workers=2)
    try:
        done = proc.wait(task.id, timeout=10)
    finally:
        proc.stop(timeout=5)
    assert (done.status, done.attempts) == (TaskStatus.SUCCEEDED, 1)
    assert queue.completed[task.id] == 1


def test_stop_lets_tasks_in_flight_finish() -> None:
    proc, queue = build(delay=0.3)
    ids = [proc.submit(TINY).id for _ in range(2)]
    proc.start(workers=2)
    wait_until(lambda: proc.pool is not None and proc.pool.busy == 2)
    proc.stop(timeout=10)
    assert statuses(proc, ids) == {TaskStatus.SUCCEEDED: 2}
    assert queue.completed == dict.fromkeys(ids, 1)


def test_stop_with_tasks_still_running_loses_none() -> None:
    proc, queue = build(delay=0.5)
    ids = [proc.submit(TINY).id for _ in range(6)]
    proc.start(workers=3)
    wait_until(lambda: proc.pool is not None and proc.pool.busy == 3)
    proc.stop(timeout=0.05)  # too short: the three in flight are released
    assert statuses(proc, ids) == {TaskStatus.QUEUED: 6}
    assert sum(queue.completed.values()) == 0

    proc.start(workers=3)
    try:
        for task_id in ids:
            assert proc.wait(task_id, timeout=20).status == TaskStatus.SUCCEEDED
    finally:
        proc.stop(timeout=10)
    time.sleep(0.6)  # let the abandoned threads of the first pool try to record, and fail
    assert queue.completed == dict.fromkeys(ids, 1)


def test_the_pool_grows_under_load_and_shrinks_when_idle() -> None:
    proc, _ = build(delay=0.2)
    ids = [proc.submit(TINY).id for _ in range(12)]
    proc.start(workers=(1, 4), idle_timeout=0.2)
    pool = proc.pool
    assert pool is not None
    try:
        wait_until(lambda: pool.size == 4, timeout=10)
        for task_id in ids:
            assert proc.wait(task_id, timeout=20).status == TaskStatus.SUCCEEDED
        wait_until(lambda: pool.size == 1, timeout=10)
    finally:
        proc.stop(timeout=5)


def test_workers_survive_an_unreachable_backend() -> None:
    class Outage(CountingQueue):
        failures = 3

        def claim(self, worker: str, *, lease_seconds: float, limit: int = 1) -> list[Lease]:
            if self.failures:
                self.failures -= 1
                raise BackendUnavailable("database restarting")
            return super().claim(worker, lease_seconds=lease_seconds, limit=limit)

    repository = MemoryRepository()
    queue = Outage(MemoryQueue(repository))
    proc = Processor(MemoryStorage(), queue, repository, **FAST_OPTIONS)  # type: ignore[arg-type]
    task = proc.submit(TINY)
    with proc:
        proc.start(workers=1)
        assert proc.wait(task.id, timeout=10).status == TaskStatus.SUCCEEDED
    assert queue.failures == 0
    assert proc.pool is None  # leaving the with block stopped the workers


def test_start_twice_is_refused(processor: Processor) -> None:
    processor.start(workers=1)
    with pytest.raises(RuntimeError, match="already running"):
        processor.start(workers=1)


@pytest.mark.parametrize("workers", [0, (2, 1), (0, 3)])
def test_bad_pool_sizes_are_refused(processor: Processor, workers: int | tuple[int, int]) -> None:
    with pytest.raises(ValueError, match="min_workers"):
        processor.start(workers=workers)


class ClaimLog(CountingQueue):
    """Notes every claim's limit and how many it leased, and every renewal call."""

    def __init__(self, queue: MemoryQueue) -> None:
        super().__init__(queue)
        self.claims: list[tuple[int, int]] = []
        self.renewals: list[int] = []
        self.single_renewals = 0

    def claim(self, worker: str, *, lease_seconds: float, limit: int = 1) -> list[Lease]:
        leases = super().claim(worker, lease_seconds=lease_seconds, limit=limit)
        self.claims.append((limit, len(leases)))
        return leases

    def renew_many(self, leases: Sequence[Lease], *, lease_seconds: float) -> list[Lease | None]:
        self.renewals.append(len(leases))
        return super().renew_many(leases, lease_seconds=lease_seconds)

    def renew(self, lease: Lease, *, lease_seconds: float) -> Lease:
        self.single_renewals += 1
        return super().renew(lease, lease_seconds=lease_seconds)


def gated_pool(queue: Queue, workers: int, **options: Any) -> tuple[WorkerPool, threading.Event]:
    """A pool whose step records success once ``gate`` is set, so leases stay in flight."""
    gate = threading.Event()
    recorder = Recorder(queue)

    def step(lease: Lease) -> None:
        assert gate.wait(10)
        recorder.record(lease, lease.task.succeed((), utcnow()))

    return WorkerPool(queue, step, min_workers=workers, **options), gate


def test_the_pool_claims_for_all_idle_workers_at_once_and_never_more() -> None:
    repository = MemoryRepository()
    queue = ClaimLog(MemoryQueue(repository))
    pool, gate = gated_pool(queue, 4, poll_interval=0.02)
    pool.start()
    try:
        # All four idle, the queue empty: the claimer asks for four and finds none.
        wait_until(lambda: (4, 0) in queue.claims)
        tasks = [new_task() for _ in range(10)]
        repository.add_many(tasks)
        wait_until(lambda: pool.busy == 4)
        time.sleep(0.1)  # were the claimer to lease beyond its idle workers, it would by now
        claimed = [claim for claim in queue.claims if claim[1]]
        assert claimed == [(4, 4)]  # one claim for all four idle workers, and no more
        gate.set()
        wait_until(lambda: len(queue.completed) == 10)
    finally:
        pool.stop(timeout=5)
    assert queue.completed == {task.id: 1 for task in tasks}
    assert all(leased <= limit <= 4 for limit, leased in queue.claims)


def test_the_heartbeat_renews_every_lease_in_flight_with_one_call() -> None:
    repository = MemoryRepository()
    queue = ClaimLog(MemoryQueue(repository))
    repository.add_many([new_task() for _ in range(3)])
    pool, gate = gated_pool(queue, 3, lease_seconds=60)  # too long to beat by itself here
    pool.start()
    try:
        wait_until(lambda: pool.busy == 3)
        pool.beat()
        assert (queue.renewals, queue.single_renewals) == ([3], 0)
    finally:
        gate.set()
        pool.stop(timeout=5)


class PlainQueue:
    """A queue with the protocol's methods only (no renew_many or record_many), as a user's own
    queue written against the earlier protocol would be."""

    def __init__(self, queue: MemoryQueue) -> None:
        self._queue = queue
        self.claim = queue.claim
        self.renew = queue.renew
        self.complete = queue.complete
        self.release = queue.release
        self.wait = queue.wait


def test_a_queue_without_batch_methods_still_works() -> None:
    repository = MemoryRepository()
    plain = PlainQueue(MemoryQueue(repository))
    assert isinstance(plain, Queue)
    assert not isinstance(plain, BatchQueue)
    proc = Processor(MemoryStorage(), plain, repository, **FAST_OPTIONS)  # type: ignore[arg-type]
    run_to_completion(proc, 6, workers=2)
    task = proc.submit(TINY)
    assert proc.run_until_idle() == 1
    assert proc.get(task.id).status == TaskStatus.SUCCEEDED


@pytest.mark.parametrize("idle_timeout", [-1.0, math.inf, math.nan])
def test_an_idle_timeout_that_is_not_a_number_of_seconds_is_refused(idle_timeout: float) -> None:
    repository = MemoryRepository()
    with pytest.raises(ValueError, match="idle_timeout"):
        WorkerPool(MemoryQueue(repository), print, idle_timeout=idle_timeout)


def test_idle_workers_at_the_minimum_sleep_even_with_no_idle_timeout() -> None:
    repository = MemoryRepository()
    pool, gate = gated_pool(MemoryQueue(repository), 2, idle_timeout=0.0)
    gate.set()
    pool.start()
    try:
        time.sleep(0.1)  # settle into the idle wait
        used = time.process_time()
        time.sleep(0.5)
        assert time.process_time() - used < 0.2  # spinning workers would burn the whole 0.5 s
        task = new_task()
        repository.add(task)
        wait_until(lambda: repository.get(task.id).status == TaskStatus.SUCCEEDED)
    finally:
        pool.stop(timeout=5)
