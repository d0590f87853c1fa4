"""Tests of ``AsyncProcessor``: each method answers as the Processor's does, raises the same
exceptions, and never blocks the event loop; ``wait`` holds no thread per waiter."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest

from imageproc import (
    AsyncProcessor,
    ConfigurationError,
    IdempotencyConflict,
    IllegalTransition,
    InvalidImage,
    InvalidPipeline,
    Processor,
    Task,
    TaskNotFound,
    TaskStatus,
    Upload,
    WaitTimeout,
)
from imageproc.backends._memory import MemoryQueue, MemoryRepository, MemoryStorage
from imageproc.testing import FAST_OPTIONS, memory_processor, sample_image
from tests.support.doubles import SlowStorage
from tests.support.loops import Heartbeat, ThreadPeak, gather_bounded, run, until

PIPELINE = "thumb=fit:64x64,webp:q80"
#: A heartbeat gap longer than this means something blocked the loop: below the shortest
#: blocking call these tests make (a 0.3 s storage read; opening from URLs, with its
#: migration, takes about 0.5 s), above the delays a busy machine's thread scheduling gives a
#: tick of a loop that is not blocked (up to 0.12 s seen with three suites at once on 2 cores).
BLOCKED = 0.25


def memory_async(**options: object) -> AsyncProcessor:
    """An AsyncProcessor over a fast test Processor (workers in threads, no render process)."""
    return AsyncProcessor(
        memory_processor(isolation="thread", **options),  # type: ignore[arg-type]
        owns=True,
    )


def test_each_method_answers_as_the_processors_does() -> None:
    async def scenario() -> None:
        async with memory_async() as processor:
            sync = processor.sync
            image = sample_image(320, 240)
            task = await processor.submit(
                image,
                PIPELINE,
                priority=3,
                owner="alice",
                not_before=timedelta(0),
                metadata={"user": "42"},
                idempotency_key="k-1",
            )
            assert (task.priority, task.owner, dict(task.metadata)) == (3, "alice", {"user": "42"})
            assert await processor.get(task.id) == sync.get(task.id)
            # The same key and request again: the same task, as the Processor answers it.
            again = await processor.submit(
                image,
                PIPELINE,
                priority=3,
                owner="alice",
                not_before=timedelta(0),
                metadata={"user": "42"},
                idempotency_key="k-1",
            )
            assert again.id == task.id
            dup = await processor.submit(image, PIPELINE, owner="alice", dedupe=True)
            assert dup.id == task.id
            many = await processor.submit_many(
                [Upload(sample_image(100, 80), PIPELINE), Upload(b"nope", PIPELINE)]
            )
            assert isinstance(many[0], Task)
            assert isinstance(many[1], InvalidImage)
            queued = await processor.tasks(TaskStatus.QUEUED)
            assert queued == sync.tasks(TaskStatus.QUEUED)
            assert {t.id for t in queued} == {task.id, many[0].id}
            assert await processor.tasks(TaskStatus.QUEUED, metadata={"user": "42"}) == [
                sync.get(task.id)
            ]
            assert await processor.read(task.source_key) == image

            cancelled = await processor.cancel(many[0].id)
            assert cancelled.status == TaskStatus.CANCELLED
            assert cancelled == sync.get(many[0].id)
            truncated = await processor.submit(image[: len(image) // 2], PIPELINE)

            await processor.start(2)
            done = await processor.wait(task.id, timeout=10)
            assert done.status == TaskStatus.SUCCEEDED
            assert done == sync.get(task.id)
            (output,) = done.outputs
            assert await processor.read(output.key) == sync.read(output.key)
            assert (await processor.wait(truncated.id, timeout=10)).status == TaskStatus.FAILED
            retried = await processor.retry(truncated.id)
            assert (retried.status, retried.attempts) == (TaskStatus.QUEUED, 0)
            again_failed = await processor.wait(truncated.id, timeout=10)
            assert (again_failed.status, again_failed.attempts) == (TaskStatus.FAILED, 1)
            await processor.stop(5)
            assert sync.pool is None
            assert await processor.purge(timedelta(0), orphans_older_than=None) == 3
            with pytest.raises(TaskNotFound):
                await processor.get(task.id)

    run(scenario())


def test_errors_propagate_as_the_processors_exceptions() -> None:
    async def scenario() -> None:
        async with memory_async() as processor:
            with pytest.raises(InvalidPipeline):
                await processor.submit(sample_image(), "thumb=fit:huge")
            with pytest.raises(InvalidImage, match="not a readable image"):
                await processor.submit(b"<html>nope</html>")
            with pytest.raises(TaskNotFound):
                await processor.get("no-such-task")
            with pytest.raises(TaskNotFound):
                await processor.wait("no-such-task", timeout=5)
            task = await processor.submit(sample_image(), idempotency_key="k")
            with pytest.raises(IdempotencyConflict):
                await processor.submit(sample_image(200, 100), idempotency_key="k")
            await processor.cancel(task.id)
            with pytest.raises(IllegalTransition):
                await processor.cancel(task.id)
            with pytest.raises(IllegalTransition):
                await processor.retry((await processor.submit(sample_image())).id)

    run(scenario())


def test_wait_times_out_with_wait_timeout_and_leaves_nothing_subscribed() -> None:
    async def scenario() -> None:
        async with memory_async() as processor:
            task = await processor.submit(sample_image())  # no workers: it stays queued
            started = time.monotonic()
            with pytest.raises(WaitTimeout, match=r"still queued after 0\.2s") as caught:
                await processor.wait(task.id, timeout=0.2)
            assert 0.2 <= time.monotonic() - started < 2
            assert isinstance(caught.value, TimeoutError)
            completions = processor.sync.repository.completions  # type: ignore[attr-defined]
            assert len(completions) == 0
            assert processor._waiters is not None
            assert len(processor._waiters) == 0

    run(scenario())


def test_a_cancelled_waiter_unsubscribes() -> None:
    async def scenario() -> None:
        async with memory_async() as processor:
            task = await processor.submit(sample_image())
            waiter = asyncio.create_task(processor.wait(task.id, timeout=30))
            completions = processor.sync.repository.completions  # type: ignore[attr-defined]
            await until(lambda: len(completions) == 1)
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter
            assert len(completions) == 0

    run(scenario())


def test_waiters_of_one_task_share_one_subscription_and_all_wake() -> None:
    async def scenario() -> None:
        async with memory_async() as processor:
            task = await processor.submit(sample_image(), PIPELINE)
            waiters = [asyncio.create_task(processor.wait(task.id, timeout=10)) for _ in range(5)]
            repository = processor.sync.repository
            await until(lambda: len(processor._waiters or ()) == 5)
            assert len(repository.completions) == 1  # type: ignore[attr-defined]
            await processor.start(1)
            done = await gather_bounded(*waiters, timeout=10)
            assert {t.status for t in done} == {TaskStatus.SUCCEEDED}
            await processor.stop(5)

    run(scenario())


def test_the_loop_is_not_blocked_by_image_work_storage_or_waits() -> None:
    # A storage whose reads take 0.3 s and images big enough that checking one takes a while:
    # done on the loop, either would stop the heartbeat for that long.
    repository = MemoryRepository()
    storage = SlowStorage(MemoryStorage(), delay=0.3)
    sync = Processor(
        storage,  # type: ignore[arg-type]
        MemoryQueue(repository),
        repository,
        isolation="thread",
        **FAST_OPTIONS,
    )
    big = sample_image(3000, 2000, "PNG")

    async def scenario() -> Heartbeat:
        async with AsyncProcessor(sync, owns=True) as processor, Heartbeat() as heartbeat:
            tasks = [await processor.submit(big, PIPELINE) for _ in range(3)]
            await processor.read(tasks[0].source_key)  # 0.3 s in a thread
            await processor.start(2)
            done = await gather_bounded(
                *(processor.wait(t.id, timeout=30) for t in tasks), timeout=40
            )
            assert {t.status for t in done} == {TaskStatus.SUCCEEDED}
            late = await processor.submit(big, PIPELINE)
            await asyncio.sleep(0.05)  # a worker has claimed it and sleeps in storage.get
            await processor.stop(10)  # waits for that task in flight, off the loop
            assert (await processor.get(late.id)).status == TaskStatus.SUCCEEDED
        return heartbeat

    heartbeat = run(scenario())
    assert heartbeat.ticks > 50
    assert heartbeat.max_gap < BLOCKED, heartbeat.max_gap


def test_opening_from_urls_migrates_off_the_loop(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'tasks.db'}"

    async def scenario() -> Heartbeat:
        processor = AsyncProcessor.from_urls(
            url, f"file://{tmp_path / 'media'}", isolation="thread"
        )
        with pytest.raises(RuntimeError, match="not open yet"):
            processor.sync  # noqa: B018 - nothing built yet: from_urls does nothing blocking
        async with Heartbeat() as heartbeat, processor:
            assert processor.sync.repository.schema_revision() is not None  # type: ignore[attr-defined]
            task = await processor.submit(sample_image(), PIPELINE)
            await processor.start(1)
            assert (await processor.wait(task.id, timeout=10)).status == TaskStatus.SUCCEEDED
        with pytest.raises(RuntimeError, match="closed"):
            await processor.get(task.id)
        return heartbeat

    heartbeat = run(scenario())
    assert heartbeat.max_gap < BLOCKED, heartbeat.max_gap


def test_the_first_call_opens_one_from_urls_without_async_with(tmp_path: Path) -> None:
    async def scenario() -> None:
        processor = AsyncProcessor.from_urls(
            f"sqlite:///{tmp_path / 'tasks.db'}", "memory://", isolation="thread"
        )
        try:
            tasks = await asyncio.gather(*(processor.submit(sample_image()) for _ in range(3)))
            assert len({t.id for t in tasks}) == 3
        finally:
            await processor.aclose()

    run(scenario())


def test_a_bad_url_raises_when_opened() -> None:
    async def scenario() -> None:
        processor = AsyncProcessor.from_urls("nosuchdb://x", "memory://")
        with pytest.raises(ConfigurationError, match="nosuchdb"):
            await processor.open()
        await processor.aclose()

    run(scenario())


def test_a_wrapped_processor_is_shared_and_left_open() -> None:
    sync = memory_processor(isolation="thread")

    async def scenario() -> Task:
        async with AsyncProcessor(sync) as processor:
            assert processor.sync is sync
            task = await processor.submit(sample_image())
            await processor.start(1)
        return task

    task = run(scenario())
    # aclose left the Processor to its owner: its workers still run.
    assert sync.wait(task.id, timeout=10).status == TaskStatus.SUCCEEDED
    sync.close()


def test_one_async_processor_serves_several_event_loops_in_turn() -> None:
    processor = memory_async()

    async def one(run_workers: bool) -> TaskStatus:
        task = await processor.submit(sample_image())
        if run_workers:
            await processor.start(1)
        return (await processor.wait(task.id, timeout=10)).status

    assert run(one(True)) == TaskStatus.SUCCEEDED
    assert run(one(False)) == TaskStatus.SUCCEEDED
    assert processor._waiters is not None
    assert len(processor._waiters._loops) == 0  # nothing kept of the loops that have ended
    run(processor.aclose())


def test_calls_carry_the_callers_context_variables() -> None:
    seen = contextvars.ContextVar("seen", default="unset")
    found: list[str] = []
    sync = memory_processor()
    original = sync.repository.get

    def get(task_id: str) -> Task:
        found.append(seen.get())
        return original(task_id)

    sync.repository.get = get  # type: ignore[method-assign]

    async def scenario() -> None:
        async with AsyncProcessor(sync, owns=True) as processor:
            task = await processor.submit(sample_image())
            seen.set("request-7")
            await processor.get(task.id)

    run(scenario())
    assert found == ["request-7"]


def test_threads_must_be_positive() -> None:
    with pytest.raises(ValueError, match="threads"):
        AsyncProcessor(memory_processor(), threads=0)


def test_a_thousand_waiters_hold_no_thread_each() -> None:
    count = 1000

    async def scenario() -> tuple[int, int, int]:
        async with AsyncProcessor(
            memory_processor(isolation="thread"), owns=True, threads=4
        ) as processor:
            results = await processor.submit_many(
                [Upload(sample_image(32, 24), "t=fit:16x16,jpeg")] * count
            )
            tasks = [r for r in results if isinstance(r, Task)]
            assert len(tasks) == count
            before = threading.active_count()
            async with ThreadPeak() as threads:
                waits = [asyncio.create_task(processor.wait(t.id, timeout=60)) for t in tasks]
                # Every waiter reads its task once (through the pool of 4) and then waits; none
                # has an end yet. Bounded: on a loaded machine the reads take a while.
                await until(lambda: len(processor._waiters or ()) == count)
                during = threading.active_count()
                await processor.start(4)  # four worker threads (and their pool's manager)
                done = await gather_bounded(*waits, timeout=60)
            await processor.stop(10)
        assert {t.status for t in done} == {TaskStatus.SUCCEEDED}
        return before, during, threads.peak

    before, during, peak = run(scenario())
    # Waiting: the AsyncProcessor's 4 pool threads at most (reading each task once); 1,000
    # waiters are not 1,000 threads.
    assert during - before <= 4, (before, during)
    # Then 4 workers and the pool's own thread or two join.
    assert peak - before <= 4 + 4 + 3, (before, peak)
