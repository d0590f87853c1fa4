"""Execution of one lease, and the Recorder that commits outcomes together."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pytest

from imageproc import BackendUnavailable, Lease, LeaseLost, Task, TaskStatus
from imageproc._clock import utcnow
from imageproc._execution import Recorder
from imageproc._retrying import RetryPolicy
from imageproc.backends._memory import MemoryQueue, MemoryRepository
from tests.support.doubles import new_task

TIMEOUT = 10.0


class GatedQueue(MemoryQueue):
    """A memory queue whose first ``record_many`` waits at a gate, so that outcomes handed over
    meanwhile pile up for the next write; it notes the size of every write."""

    def __init__(self, repository: MemoryRepository) -> None:
        super().__init__(repository)
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.batches: list[int] = []

    def record_many(self, results: Sequence[tuple[Lease, Task]]) -> list[bool]:
        self.batches.append(len(results))
        self.entered.set()
        assert self.gate.wait(TIMEOUT)
        return super().record_many(results)


def leased(queue: MemoryQueue, count: int) -> list[Lease]:
    for _ in range(count):
        queue.repository.add(new_task())
    return queue.claim("w", lease_seconds=60, limit=count)


def test_outcomes_handed_over_during_a_write_share_the_next_one() -> None:
    queue = GatedQueue(MemoryRepository())
    recorder = Recorder(queue)
    first, *rest = leased(queue, 5)
    pending = [recorder.record_soon(first, first.task.succeed((), utcnow()))]
    assert queue.entered.wait(TIMEOUT)  # the first write is under way, and held at the gate
    pending += [recorder.record_soon(lease, lease.task.succeed((), utcnow())) for lease in rest]
    queue.gate.set()
    assert [future.result(TIMEOUT) for future in pending] == [True] * 5
    assert queue.batches == [1, 4]
    assert {queue.repository.get(lease.task.id).status for lease in [first, *rest]} == {
        TaskStatus.SUCCEEDED
    }


def test_a_lost_lease_is_reported_and_its_outcome_not_written() -> None:
    queue = MemoryQueue(MemoryRepository())
    recorder = Recorder(queue)
    (lease,) = leased(queue, 1)
    recorder.record(lease, lease.task.succeed((), utcnow()))
    assert recorder.record_soon(lease, lease.task.succeed((), utcnow())).result(TIMEOUT) is False
    with pytest.raises(LeaseLost):
        recorder.record(lease, lease.task.succeed((), utcnow()))


class DownQueue(MemoryQueue):
    def __init__(self, repository: MemoryRepository, failures: int) -> None:
        super().__init__(repository)
        self.failures = failures
        self.calls = 0

    def record_many(self, results: Sequence[tuple[Lease, Task]]) -> list[bool]:
        self.calls += 1
        if self.calls <= self.failures:
            raise BackendUnavailable("database unavailable")
        return super().record_many(results)


def test_a_transient_failure_is_retried_in_place_for_the_whole_batch() -> None:
    queue = DownQueue(MemoryRepository(), failures=2)
    recorder = Recorder(queue, retry=RetryPolicy(in_place_tries=3, in_place_wait=0))
    (lease,) = leased(queue, 1)
    recorder.record(lease, lease.task.succeed((), utcnow()))
    assert queue.calls == 3


def test_every_caller_of_a_failed_write_gets_an_error_of_its_own() -> None:
    class Down(GatedQueue):
        def record_many(self, results: Sequence[tuple[Lease, Task]]) -> list[bool]:
            super().record_many([])  # note the batch, wait at the gate...
            self.batches[-1] = len(results)
            raise BackendUnavailable("database unavailable")  # ...and fail it

    queue = Down(MemoryRepository())
    recorder = Recorder(queue, retry=RetryPolicy(in_place_tries=1))
    first, *rest = leased(queue, 3)
    futures = [recorder.record_soon(first, first.task.succeed((), utcnow()))]
    assert queue.entered.wait(TIMEOUT)
    futures += [recorder.record_soon(lease, lease.task.succeed((), utcnow())) for lease in rest]
    queue.gate.set()
    errors = [future.exception(TIMEOUT) for future in futures]
    assert queue.batches == [1, 2]
    assert all(isinstance(error, BackendUnavailable) for error in errors)
    assert errors[1] is not errors[2]  # one exception raised in two threads would mix tracebacks


def test_only_a_final_or_requeued_task_can_be_recorded() -> None:
    queue = MemoryQueue(MemoryRepository())
    (lease,) = leased(queue, 1)
    with pytest.raises(ValueError, match="status"):
        Recorder(queue).record_soon(lease, lease.task)  # still processing
    other = new_task()
    with pytest.raises(ValueError, match="lease is on task"):
        Recorder(queue).record_soon(lease, other)
