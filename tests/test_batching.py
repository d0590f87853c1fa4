from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, Sequence

import anyio
import pytest

from imageproc import Processor, Task, TaskStatus, Upload
from imageproc.batching import SubmitBatcher
from imageproc.testing import memory_processor, sample_image

TIMEOUT = 10


class Gated:
    """Wraps a processor's submit_many: records each batch's size, and holds the first
    ``held`` batches in their thread until the test opens the gate."""

    def __init__(self, processor: Processor, *, held: int = 1) -> None:
        self.real = processor.submit_many
        self.held = held
        self.sizes: list[int] = []
        self.gate = threading.Event()
        self.lock = threading.Lock()
        processor.submit_many = self  # type: ignore[method-assign]

    def __call__(self, uploads: Sequence[Upload]) -> list[Task | Exception]:
        with self.lock:
            self.sizes.append(len(uploads))
            hold = len(self.sizes) <= self.held
        if hold:
            assert self.gate.wait(TIMEOUT)
        return self.real(uploads)


async def until(condition: Callable[[], bool]) -> None:
    while not condition():
        await anyio.sleep(0.005)


def run(main: Callable[[], Awaitable[None]]) -> None:
    async def bounded() -> None:
        with anyio.fail_after(TIMEOUT):
            await main()

    anyio.run(bounded)


def test_uploads_waiting_together_are_submitted_as_one_batch() -> None:
    processor = memory_processor()
    gated = Gated(processor)
    batcher = SubmitBatcher(processor, max_running=1)
    tasks: dict[int, Task] = {}

    async def one(width: int) -> None:
        tasks[width] = await batcher.submit(Upload(sample_image(width, 50)))

    async def main() -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(one, 100)
            await until(lambda: gated.sizes == [1])
            for width in range(101, 106):
                group.start_soon(one, width)
            await until(lambda: len(batcher._waiting) == 5)
            gated.gate.set()

    run(main)
    assert gated.sizes == [1, 5]
    # Each request got its own upload's task back.
    assert {width: task.source.width for width, task in tasks.items()} == {
        width: width for width in range(100, 106)
    }
    assert len(processor.tasks(TaskStatus.QUEUED)) == 6


def test_an_upload_refused_in_a_batch_is_refused_alone() -> None:
    processor = memory_processor()
    gated = Gated(processor)
    batcher = SubmitBatcher(processor, max_running=1)
    outcomes: dict[str, object] = {}

    async def one(name: str, upload: Upload) -> None:
        try:
            outcomes[name] = await batcher.submit(upload)
        except Exception as error:
            outcomes[name] = error

    async def main() -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(one, "first", Upload(sample_image()))
            await until(lambda: gated.sizes == [1])
            group.start_soon(one, "bad", Upload(b"not an image"))
            group.start_soon(one, "good", Upload(sample_image(90)))
            await until(lambda: len(batcher._waiting) == 2)
            gated.gate.set()

    run(main)
    assert gated.sizes == [1, 2]
    assert isinstance(outcomes["first"], Task)
    assert isinstance(outcomes["good"], Task)
    assert type(outcomes["bad"]).__name__ == "InvalidImage"


def test_a_request_cancelled_while_waiting_is_not_submitted() -> None:
    processor = memory_processor()
    gated = Gated(processor)
    batcher = SubmitBatcher(processor, max_running=1)

    async def main() -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(batcher.submit, Upload(sample_image(100)))
            await until(lambda: gated.sizes == [1])
            with anyio.CancelScope() as scope:
                group.start_soon(cancel_when_waiting, scope)
                await batcher.submit(Upload(sample_image(200)))
            assert scope.cancelled_caught
            gated.gate.set()

    async def cancel_when_waiting(scope: anyio.CancelScope) -> None:
        await until(lambda: len(batcher._waiting) == 1)
        scope.cancel()

    run(main)
    assert gated.sizes == [1]
    assert [task.source.width for task in processor.tasks(TaskStatus.QUEUED)] == [100]
    assert not batcher._waiting


def test_a_fault_in_a_batch_reaches_every_request_in_it() -> None:
    processor = memory_processor()

    sizes: list[int] = []

    def broken(uploads: Sequence[Upload]) -> list[Task | Exception]:
        sizes.append(len(uploads))
        raise RuntimeError("a bug")

    processor.submit_many = broken  # type: ignore[method-assign]
    batcher = SubmitBatcher(processor, max_running=1)
    errors: list[BaseException] = []

    async def one() -> None:
        with pytest.raises(RuntimeError, match="a bug") as caught:
            await batcher.submit(Upload(sample_image()))
        errors.append(caught.value)

    async def main() -> None:
        async with anyio.create_task_group() as group:
            for _ in range(3):
                group.start_soon(one)

    run(main)
    assert len(errors) == 3
    assert sizes == [1, 2]
    assert len({id(error) for error in errors}) == 3  # one object each: tracebacks stay apart


def test_many_requests_at_once_all_get_their_task() -> None:
    processor = memory_processor()
    gated = Gated(processor, held=2)
    batcher = SubmitBatcher(processor, max_batch=3, max_running=2)
    tasks: list[Task] = []

    async def one(width: int) -> None:
        tasks.append(await batcher.submit(Upload(sample_image(width, 40))))

    async def main() -> None:
        async with anyio.create_task_group() as group:
            for width in range(60, 80):
                group.start_soon(one, width)
            # Two batches run at once (the turn is handed on), then the rest in batches of 3.
            await until(lambda: len(gated.sizes) == 2)
            gated.gate.set()

    run(main)
    assert sorted(task.source.width for task in tasks) == list(range(60, 80))
    assert max(gated.sizes) <= 3
    assert sum(gated.sizes) == 20


def test_batch_bounds_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        SubmitBatcher(memory_processor(), max_batch=0)
