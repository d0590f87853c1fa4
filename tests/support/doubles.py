"""Test doubles that observe or slow down the real in-memory backends."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Sequence
from datetime import timedelta
from typing import BinaryIO

import attrs

from imageproc import Lease, ObjectInfo, Processor, Queue, SourceInfo, Storage, Task, TaskStatus
from imageproc._clock import utcnow
from imageproc.pipeline._pipeline import DEFAULT_PIPELINE
from imageproc.testing import sample_image


class CountingQueue:
    """Delegates to a real queue and counts the completions that were actually recorded."""

    def __init__(self, queue: Queue) -> None:
        self.queue = queue
        self.completed: Counter[str] = Counter()
        self.released: list[Task] = []
        self._lock = threading.Lock()

    def claim(self, worker: str, *, lease_seconds: float, limit: int = 1) -> list[Lease]:
        return self.queue.claim(worker, lease_seconds=lease_seconds, limit=limit)

    def renew(self, lease: Lease, *, lease_seconds: float) -> Lease:
        return self.queue.renew(lease, lease_seconds=lease_seconds)

    def renew_many(self, leases: Sequence[Lease], *, lease_seconds: float) -> list[Lease | None]:
        return self.queue.renew_many(leases, lease_seconds=lease_seconds)

    def record_many(self, results: Sequence[tuple[Lease, Task]]) -> list[bool]:
        recorded = self.queue.record_many(results)
        for held, (_, task) in zip(recorded, results, strict=True):
            if held:
                self._count(task)
        return recorded

    def complete(self, lease: Lease, task: Task) -> None:
        self.queue.complete(lease, task)  # raises LeaseLost before we count it
        self._count(task)

    def _count(self, task: Task) -> None:
        with self._lock:
            if task.status.is_final:
                self.completed[task.id] += 1
            else:
                self.released.append(task)

    def release(self, lease: Lease, task: Task) -> None:
        self.queue.release(lease, task)
        self._count(task)

    def wait(self, timeout: float) -> None:
        self.queue.wait(timeout)


class SlowStorage:
    """Delegates to a real storage; ``get`` takes ``delay`` seconds (a slow task)."""

    def __init__(self, storage: Storage, delay: float) -> None:
        self.storage = storage
        self.delay = delay

    def put(self, key: str, data: bytes, *, content_type: str) -> ObjectInfo:
        return self.storage.put(key, data, content_type=content_type)

    def get(self, key: str) -> bytes:
        time.sleep(self.delay)
        return self.storage.get(key)

    def open(self, key: str) -> BinaryIO:
        return self.storage.open(key)

    def stat(self, key: str) -> ObjectInfo:
        return self.storage.stat(key)

    def exists(self, key: str) -> bool:
        return self.storage.exists(key)

    def delete(self, key: str) -> None:
        self.storage.delete(key)

    def url(self, key: str, *, expires: timedelta) -> str | None:
        return self.storage.url(key, expires=expires)


def wait_until(predicate: object, timeout: float = 10.0, interval: float = 0.01) -> None:
    """Poll ``predicate`` until it is true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


def run_to_completion(processor: Processor, count: int, *, workers: int = 4) -> list[str]:
    """Submit ``count`` small tasks, run ``workers`` threads until every one has succeeded (60 s
    at most each), stop them, and return the task ids."""
    image = sample_image(64, 48)
    ids = [processor.submit(image, "fit:32x32,png").id for _ in range(count)]
    processor.start(workers=workers)
    try:
        for task_id in ids:
            assert processor.wait(task_id, timeout=60).status == TaskStatus.SUCCEEDED
    finally:
        processor.stop(timeout=10)
    return ids


def new_task(priority: int = 0, *, age: float = 0.0, due_in: float | None = None) -> Task:
    """A queued task created ``age`` seconds ago, due ``due_in`` seconds from now (default: at
    its creation)."""
    now = utcnow()
    task = Task.new(
        pipeline=DEFAULT_PIPELINE,
        source_key="originals/ab/ab.jpg",
        source=SourceInfo("JPEG", 1, 1, 1, "ab" * 32),
        now=now - timedelta(seconds=age),
        priority=priority,
    )
    if due_in is not None:
        task = attrs.evolve(task, available_at=now + timedelta(seconds=due_in))
    return task
