"""Progress: how many variants a processing task has made, from the engine through the render
process, the worker's throttled reports and the queue, to the task's JSON and its followers."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import pytest

from imageproc import AsyncProcessor, ImageLimits, Pipeline, Task, TaskStatus, task_json
from imageproc._execution import PROGRESS_INTERVAL, Execution, Recorder
from imageproc._sandbox import InlineRenderer, ProcessRenderer
from imageproc.backends._memory import MemoryQueue, MemoryRepository, MemoryStorage
from imageproc.engine import _imaging as imaging
from imageproc.testing import sample_image

pytestmark = pytest.mark.timeout(60)

IMAGE = sample_image(96, 64)
THREE = Pipeline.parse("a=fit:48x48,png;b=fit:32x32,png;c=fit:16x16,png")


def test_the_engine_says_after_each_variant_how_many_are_made() -> None:
    told: list[int] = []
    rendered = imaging.render(IMAGE, THREE, ImageLimits(), progress=told.append)
    assert told == [1, 2, 3]
    assert [r.name for r in rendered] == ["a", "b", "c"]


def test_the_render_process_passes_progress_on_before_its_answer() -> None:
    told: list[int] = []
    rendered = ProcessRenderer(timeout=30).render(
        "t1", IMAGE, THREE, ImageLimits(), progress=told.append
    )
    assert told == [1, 2, 3]
    assert [r.name for r in rendered] == ["a", "b", "c"]
    # Without a listener the process sends no progress at all, and the answer is the same.
    again = ProcessRenderer(timeout=30).render("t2", IMAGE, THREE, ImageLimits())
    assert [r.data for r in again] == [r.data for r in rendered]


class PacedRenderer(InlineRenderer):
    """Renders for real, but each variant takes ``pause`` seconds more, and the test can look
    at the task after each one (``seen``)."""

    def __init__(self, pause: float, look: Callable[[], Task]) -> None:
        self.pause = pause
        self.look = look
        self.seen: list[int] = []

    def render(self, task_id, data, pipeline, limits, *, stage=None, claim="", progress=None):  # type: ignore[no-untyped-def,override]
        def paced(done: int) -> None:
            assert progress is not None
            threading.Event().wait(self.pause)
            progress(done)
            self.seen.append(self.look().variants_done)

        return super().render(
            task_id, data, pipeline, limits, stage=stage, claim=claim, progress=paced
        )


def test_a_slow_task_reports_its_variants_as_it_makes_them() -> None:
    repository = MemoryRepository()
    queue = MemoryQueue(repository)
    storage = MemoryStorage()
    storage.put("originals/x.jpg", IMAGE, content_type="image/jpeg")
    task = Task.new(
        pipeline=THREE,
        source_key="originals/x.jpg",
        source=imaging.probe(IMAGE, ImageLimits()),
        now=repository.clock(),
    )
    repository.add(task)
    [lease] = queue.claim("w", lease_seconds=60)
    assert lease.task.variants_done == 0
    renderer = PacedRenderer(PROGRESS_INTERVAL + 0.1, lambda: repository.get(task.id))
    execution = Execution(storage, Recorder(queue), clock=repository.clock, renderer=renderer)
    done = execution.run(lease)
    assert done is not None
    # Reported after the first and second variants (each came more than the interval after
    # the last report); not after the third, which the success itself says.
    assert renderer.seen == [1, 2, 2]
    assert done.status == TaskStatus.SUCCEEDED
    assert done.progress == (3, 3)
    assert task_json(done)["progress"] == {"variants_done": 3, "variants": 3}


def test_a_quick_task_writes_no_progress_at_all() -> None:
    repository = MemoryRepository()
    queue = MemoryQueue(repository)
    writes: list[int] = []
    original = queue.report_progress

    def counted(lease, done):  # type: ignore[no-untyped-def]
        writes.append(done)
        return original(lease, done)

    queue.report_progress = counted  # type: ignore[method-assign]
    storage = MemoryStorage()
    storage.put("originals/x.jpg", IMAGE, content_type="image/jpeg")
    repository.add(
        Task.new(
            pipeline=THREE,
            source_key="originals/x.jpg",
            source=imaging.probe(IMAGE, ImageLimits()),
            now=repository.clock(),
        )
    )
    [lease] = queue.claim("w", lease_seconds=60)
    execution = Execution(
        storage, Recorder(queue), clock=repository.clock, renderer=InlineRenderer()
    )
    assert execution.run(lease) is not None
    assert writes == []


def test_progress_is_refused_once_the_lease_is_gone_and_reset_by_a_new_claim() -> None:
    repository = MemoryRepository()
    queue = MemoryQueue(repository)
    task = Task.new(
        pipeline=THREE,
        source_key="originals/x.jpg",
        source=imaging.probe(IMAGE, ImageLimits()),
        now=repository.clock(),
    )
    repository.add(task)
    [lease] = queue.claim("w", lease_seconds=60)
    assert queue.report_progress(lease, 2)
    assert repository.get(lease.task.id).progress == (2, 3)
    queue.release(lease, lease.task.unclaim(repository.clock()))
    assert not queue.report_progress(lease, 3)  # the lease ended
    [again] = queue.claim("w", lease_seconds=60)
    assert again.task.variants_done == 0  # a new attempt starts from none


def test_async_processor_follow_yields_the_task_until_it_ends() -> None:
    async def main() -> list[Task]:
        async with AsyncProcessor.in_memory(isolation="thread") as processor:
            task = await processor.submit(IMAGE, THREE)
            following = processor.follow(task.id, poll=0.05, limit=30)
            seen = [await anext(following)]  # queued: nothing runs it yet
            await processor.start(workers=1)
            seen += [t async for t in following]
            await processor.stop()
            return seen

    seen = asyncio.run(main())
    assert seen[0].status == TaskStatus.QUEUED
    assert seen[0].progress == (0, 3)
    assert seen[-1].status == TaskStatus.SUCCEEDED
    assert seen[-1].progress == (3, 3)
