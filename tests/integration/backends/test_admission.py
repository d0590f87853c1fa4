"""Queue limits hold under concurrency: checked and reserved in the transaction that records."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import attrs
import pytest

from imageproc import QueueFull, QueueLimits, Repository, TaskError, TaskStatus
from imageproc._task import Task
from imageproc.backends.sql._backend import SQLBackend
from tests.support.backends import Backend
from tests.support.doubles import new_task


def owned(owner: str | None) -> Task:
    return attrs.evolve(new_task(), owner=owner)


def queued(backend: Backend) -> int:
    return backend.repository.queue_stats().queued


def burst(repository: Repository, limits: QueueLimits, threads: int = 16) -> int:
    """How many of ``threads`` adds, started at one moment, were recorded."""
    start = threading.Barrier(threads)

    def add(_: int) -> bool:
        start.wait(10)
        try:
            repository.add(new_task(), limits=limits)
        except QueueFull:
            return False
        return True

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(add, range(threads), timeout=60)).count(True)


def test_a_burst_of_adds_never_passes_the_limit(backend: Backend) -> None:
    assert burst(backend.repository, QueueLimits(max_queued=5)) == 5
    assert queued(backend) == 5


def test_one_owner_cannot_fill_the_queue_for_the_others(backend: Backend) -> None:
    limits = QueueLimits(max_queued=10, max_queued_per_owner=2)
    for _ in range(2):
        backend.repository.add(owned("greedy"), limits=limits)
    with pytest.raises(QueueFull, match="limit is 2"):
        backend.repository.add(owned("greedy"), limits=limits)
    backend.repository.add(owned("polite"), limits=limits)
    backend.repository.add(owned(None), limits=limits)  # no owner: only the total counts
    assert queued(backend) == 4


def test_add_many_fits_whole_or_not_at_all(backend: Backend) -> None:
    limits = QueueLimits(max_queued=3)
    backend.repository.add(new_task(), limits=limits)
    with pytest.raises(QueueFull):
        backend.repository.add_many([new_task() for _ in range(3)], limits=limits)
    assert queued(backend) == 1
    backend.repository.add_many([new_task() for _ in range(2)], limits=limits)
    assert queued(backend) == 3


def test_a_retry_counts_as_a_new_task_a_worker_requeue_does_not(backend: Backend) -> None:
    limits = QueueLimits(max_queued=1)
    failed_task = new_task()
    backend.repository.add(failed_task)
    (lease,) = backend.queue.claim("w", lease_seconds=30)
    failed = lease.task.fail(TaskError("invalid_image", "no"), backend.clock())
    backend.queue.complete(lease, failed)
    backend.repository.add(new_task(), limits=limits)  # the queue is full now
    with pytest.raises(QueueFull):
        backend.repository.update(failed.retry(backend.clock()), expected=failed, limits=limits)
    assert backend.repository.get(failed.id).status == TaskStatus.FAILED
    # Without limits (an operator's own call) it goes through.
    assert backend.repository.update(failed.retry(backend.clock()), expected=failed) is True


@pytest.mark.postgres
def test_the_limit_holds_on_a_server_that_defaults_to_repeatable_read(
    request: pytest.FixtureRequest,
) -> None:
    url = request.getfixturevalue("postgres_url")
    backend = SQLBackend(
        url, connect_args={"options": "-c default_transaction_isolation=repeatable\\ read"}
    )
    request.addfinalizer(backend.close)
    with backend.engine.connect() as conn:
        level = conn.exec_driver_sql("SHOW default_transaction_isolation").scalar()
    assert level == "repeatable read"
    assert burst(backend, QueueLimits(max_queued=5)) == 5
    assert backend.queue_stats().queued == 5
