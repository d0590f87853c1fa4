"""AsyncProcessor.wait on the SQL backends: a thousand waiters under a real event loop hold no
thread each, and ends recorded by another Processor (which this one's completions do not hear)
are found: on SQLite by the shared sweep, on PostgreSQL through ``LISTEN``/``NOTIFY``."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Collection
from pathlib import Path

import pytest

from imageproc import AsyncProcessor, Processor, Task, TaskStatus, Upload
from tests.support.loops import ThreadPeak, gather_bounded, run

pytestmark = pytest.mark.slow

KINDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
WAITERS = 1000
#: The AsyncProcessor's own pool: the only threads its waits may add.
POOL = 4
PIPELINE = "t=fit:16x16,jpeg:q70"


def database(kind: str, request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue("sqlite_url" if kind == "sqlite" else "postgres_url"))


def uploads(count: int) -> list[Upload]:
    from imageproc.testing import sample_image

    image = sample_image(32, 24)
    return [Upload(image, PIPELINE) for _ in range(count)]


class CountingSweep:
    """Counts the sweep's reads (``ended_among``) of a SQL backend, and the ids they asked for."""

    def __init__(self, processor: Processor) -> None:
        self.repository = processor.repository
        self.original = self.repository.ended_among  # type: ignore[attr-defined]
        self.calls = 0
        self.largest = 0
        self.repository.ended_among = self  # type: ignore[attr-defined]

    def __call__(self, task_ids: Collection[str]) -> list[Task]:
        self.calls += 1
        self.largest = max(self.largest, len(task_ids))
        result: list[Task] = self.original(task_ids)
        return result


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("workers_in", ["this", "another"])
def test_a_thousand_waiters_hold_no_thread_each(
    kind: str, workers_in: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = database(kind, request)
    storage = f"file://{tmp_path / 'media'}"
    # "another": the tasks are processed by a second Processor on the same database, whose
    # completions this one's never hears (as another process's): found by the sweep on SQLite,
    # by LISTEN/NOTIFY on PostgreSQL.
    other = (
        Processor.from_urls(url, storage, isolation="thread") if workers_in == "another" else None
    )

    async def scenario() -> tuple[list[Task], int, int, int]:
        async with AsyncProcessor.from_urls(
            url, storage, isolation="thread", threads=POOL
        ) as processor:
            sweep = CountingSweep(processor.sync)
            # Warm up: the first wait activates the completions (PostgreSQL: the listener thread).
            (first,) = await processor.submit_many(uploads(1))
            assert isinstance(first, Task)
            await processor.cancel(first.id)
            await processor.wait(first.id, timeout=10)

            results = await processor.submit_many(uploads(WAITERS))
            tasks = [r for r in results if isinstance(r, Task)]
            assert len(tasks) == WAITERS
            before = threading.active_count()
            async with ThreadPeak() as peak:
                waits = [asyncio.create_task(processor.wait(t.id, timeout=120)) for t in tasks]
                await asyncio.sleep(0.5)  # every waiter has read its task and waits
                during = threading.active_count()
                waiting = peak.peak
                if other is None:
                    await processor.start(4)
                else:
                    other.start(4)
                done = await gather_bounded(*waits, timeout=150)
            await processor.stop(10)
            if other is not None:
                await asyncio.to_thread(other.stop, 10)
            if kind == "sqlite" and other is not None:
                assert sweep.calls > 0
                assert sweep.largest > 1  # one read for many waiters at once
            return done, before, during, waiting

    try:
        done, before, during, waiting = run(scenario(), timeout=200)
    finally:
        if other is not None:
            other.close()
    assert {t.status for t in done} == {TaskStatus.SUCCEEDED}
    assert len({t.id for t in done}) == WAITERS
    # Waiting, 1,000 waiters add at most the AsyncProcessor's own pool of POOL threads.
    assert during - before <= POOL, (before, during)
    assert waiting - before <= POOL, (before, waiting)


@pytest.mark.parametrize("kind", KINDS)
def test_an_end_recorded_by_another_processor_wakes_the_waiter(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = database(kind, request)
    storage = f"file://{tmp_path / 'media'}"
    other = Processor.from_urls(url, storage, isolation="thread")

    async def scenario() -> tuple[Task, float]:
        async with AsyncProcessor.from_urls(url, storage, isolation="thread") as processor:
            sweep = CountingSweep(processor.sync)
            (task,) = await processor.submit_many(uploads(1))
            assert isinstance(task, Task)
            waiter = asyncio.create_task(processor.wait(task.id, timeout=20))
            await asyncio.sleep(0.3)
            assert not waiter.done()
            # The other Processor runs it in this thread: its end is published to ITS
            # completions only.
            started = time.monotonic()
            assert await asyncio.to_thread(other.run_until_idle) == 1
            done = await asyncio.wait_for(waiter, 20)
            latency = time.monotonic() - started
            if kind == "sqlite":
                assert sweep.calls > 0  # found by reading: nothing told this process
            return done, latency

    try:
        done, latency = run(scenario())
    finally:
        other.close()
    assert done.status == TaskStatus.SUCCEEDED
    assert latency < 5
