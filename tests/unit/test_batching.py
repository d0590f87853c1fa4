"""Tests of ``http._batching.SubmitBatcher``: uploads that arrive together are submitted
together."""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio
import pytest

from imageproc import Processor, Task, TaskStatus, Upload
from imageproc._upload import Accepted
from imageproc.http._batching import SubmitBatcher
from imageproc.testing import memory_processor, sample_image

TIMEOUT = 10


class Gated:
    """Wraps what the batcher calls (what submit_many does, answered with each upload's
    acceptance): records each batch's size, and holds the first
    ``held`` batches in their thread until the test opens their gate (``gates[n]`` for the
    n-th batch; ``gate`` is the first)."""

    def __init__(self, processor: Processor, *, held: int = 1) -> None:
        self.real = processor._submission.accept_many
        self.sizes: list[int] = []
        self.gates = [threading.Event() for _ in range(held)]
        self.gate = self.gates[0]
        self.lock = threading.Lock()
        processor._submission.accept_many = self  # type: ignore[method-assign]

    def open_all(self) -> None:
        for gate in self.gates:
            gate.set()

    def __call__(self, uploads: Sequence[Upload]) -> list[Accepted | Exception]:
        with self.lock:
            self.sizes.append(len(uploads))
            number = len(self.sizes) - 1
        if number < len(self.gates):
            assert self.gates[number].wait(TIMEOUT)
        return self.real(uploads)


async def submitted(batcher: SubmitBatcher, upload: Upload) -> Task:
    """The task the batcher accepted ``upload`` with."""
    accepted = await batcher.submit(upload)
    assert accepted.task is not None
    return accepted.task


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
        tasks[width] = await submitted(batcher, Upload(sample_image(width, 50)))

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
            outcomes[name] = await submitted(batcher, upload)
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

    def broken(uploads: Sequence[Upload]) -> list[Accepted | Exception]:
        sizes.append(len(uploads))
        raise RuntimeError("a bug")

    processor._submission.accept_many = broken  # type: ignore[method-assign]
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
        tasks.append(await submitted(batcher, Upload(sample_image(width, 40))))

    async def main() -> None:
        async with anyio.create_task_group() as group:
            for width in range(60, 80):
                group.start_soon(one, width)
            # Two batches run at once, then the rest in batches of 3 as the turn is handed on.
            await until(lambda: len(gated.sizes) == 2)
            await anyio.sleep(0.05)
            assert len(gated.sizes) == 2  # no third batch while two are running
            gated.open_all()

    run(main)
    assert sorted(task.source.width for task in tasks) == list(range(60, 80))
    assert max(gated.sizes) <= 3
    assert sum(gated.sizes) == 20


def test_a_cancelled_request_running_a_batch_still_answers_the_others() -> None:
    processor = memory_processor()
    gated = Gated(processor, held=2)
    batcher = SubmitBatcher(processor, max_running=1)
    outcomes: dict[str, object] = {}

    async def one(name: str, width: int) -> None:
        try:
            outcomes[name] = await submitted(batcher, Upload(sample_image(width, 30)))
        except Exception as error:
            outcomes[name] = error

    async def main() -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(one, "a", 100)
            await until(lambda: gated.sizes == [1])
            with anyio.CancelScope() as runner:
                group.start_soon(one, "c", 300)
                waiting = anyio.Event()

                async def run_b() -> None:
                    waiting.set()
                    await one("b", 200)

                # b waits first, so b runs the next batch, which takes c along.
                group.start_soon(run_b)
                await until(lambda: len(batcher._waiting) == 2)
                gated.gates[0].set()
                await until(lambda: gated.sizes == [1, 2])
                runner.cancel()
            gated.gates[1].set()

    run(main)
    assert isinstance(outcomes["a"], Task)
    assert isinstance(outcomes["c"], Task), outcomes["c"]
    assert len(processor.tasks(TaskStatus.QUEUED)) == 3


def test_a_cancellation_at_the_handover_does_not_fail_the_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    processor = memory_processor()
    gated = Gated(processor)
    batcher = SubmitBatcher(processor, max_running=1)
    outcomes: dict[str, object] = {}
    runners: list[anyio.CancelScope] = []
    real_run_sync = anyio.to_thread.run_sync
    calls = 0

    async def cancel_then_run(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 2:  # b's batch: b is cancelled just as it hands the batch over
            runners[0].cancel()
        return await real_run_sync(*args, **kwargs)

    monkeypatch.setattr(anyio.to_thread, "run_sync", cancel_then_run)

    async def one(name: str, width: int) -> None:
        try:
            outcomes[name] = await submitted(batcher, Upload(sample_image(width, 30)))
        except Exception as error:
            outcomes[name] = error

    async def run_b() -> None:
        with anyio.CancelScope() as runner:
            runners.append(runner)
            await one("b", 200)

    async def main() -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(one, "a", 100)
            await until(lambda: gated.sizes == [1])
            group.start_soon(run_b)
            await until(lambda: len(batcher._waiting) == 1)
            group.start_soon(one, "c", 300)
            await until(lambda: len(batcher._waiting) == 2)
            gated.gate.set()

    run(main)
    assert gated.sizes == [1, 2]
    assert isinstance(outcomes["c"], Task), outcomes["c"]
    assert len(processor.tasks(TaskStatus.QUEUED)) == 3


def test_a_request_cancelled_while_its_batch_runs_waits_for_the_batch() -> None:
    processor = memory_processor()
    gated = Gated(processor, held=2)
    batcher = SubmitBatcher(processor, max_running=1)
    returned: list[str] = []

    async def one(name: str, width: int) -> None:
        try:
            await batcher.submit(Upload(sample_image(width, 30)))
        finally:
            returned.append(name)  # where the HTTP handler closes the upload

    async def main() -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(one, "a", 100)
            await until(lambda: gated.sizes == [1])
            group.start_soon(one, "b", 200)
            scope = anyio.CancelScope()
            group.start_soon(cancelled_c, scope)
            await until(lambda: len(batcher._waiting) == 2)
            gated.gates[0].set()
            await until(lambda: gated.sizes == [1, 2])  # b runs b and c
            scope.cancel()
            await anyio.sleep(0.05)
            assert "c" not in returned  # c's upload is still being read
            gated.gates[1].set()

    async def cancelled_c(scope: anyio.CancelScope) -> None:
        with scope:
            await one("c", 300)

    run(main)
    assert sorted(returned) == ["a", "b", "c"]
    widths = sorted(task.source.width for task in processor.tasks(TaskStatus.QUEUED))
    assert widths == [100, 200, 300]


def test_a_batch_takes_uploads_up_to_its_byte_bound() -> None:
    processor = memory_processor()
    gated = Gated(processor)
    batcher = SubmitBatcher(processor, max_bytes=100, max_running=1)

    async def main() -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(lambda: batcher.submit(Upload(sample_image(100)), size=10))
            await until(lambda: gated.sizes == [1])
            for width, size in ((101, 60), (102, 60), (103, 30), (104, 500)):
                group.start_soon(
                    lambda w=width, n=size: batcher.submit(Upload(sample_image(w)), size=n)
                )
                await until(lambda w=width: len(batcher._waiting) == w - 100)
            gated.gate.set()

    run(main)
    # 60 alone (60 + 60 is over 100), then 60 + 30, then the 500 alone (a big one still goes).
    assert gated.sizes == [1, 1, 2, 1]


def test_batch_bounds_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        SubmitBatcher(memory_processor(), max_batch=0)
