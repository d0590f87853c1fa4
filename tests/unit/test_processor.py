"""Tests of ``Processor``: submit, get, wait, cancel, retry, read, purge and the workers it
starts."""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path

import attrs
import pytest
from PIL import Image

from imageproc import (
    BackendUnavailable,
    ConfigurationError,
    IllegalTransition,
    InvalidImage,
    InvalidInput,
    InvalidPipeline,
    Pipeline,
    PipelineLimits,
    Processor,
    QueueFull,
    QueueLimits,
    StorageError,
    Task,
    TaskNotFound,
    TaskStatus,
    Upload,
    WaitTimeout,
)
from imageproc import _keys as keys
from imageproc._clock import utcnow
from imageproc._events import Events
from imageproc._protocols import ObjectInfo
from imageproc.backends._memory import MemoryQueue, MemoryRepository, MemoryStorage
from imageproc.testing import (
    FAST_OPTIONS,
    FastForwardClock,
    FlakyStorage,
    memory_processor,
    sample_image,
)
from tests.support.doubles import CountingQueue

PIPELINE = "thumb=fit:256x256,webp:q80;large=resize:1000x,jpeg:q85"


def build(storage: object = None, **options: object) -> tuple[Processor, CountingQueue]:
    # The repository keeps the Processor's clock, so a test can fast-forward both.
    repository = MemoryRepository(clock=options.get("clock", utcnow))  # type: ignore[arg-type]
    queue = CountingQueue(MemoryQueue(repository))
    proc = Processor(
        storage or MemoryStorage(),  # type: ignore[arg-type]
        queue,
        repository,
        **{**FAST_OPTIONS, **options},  # type: ignore[arg-type]
    )
    return proc, queue


def test_submit_then_process_gives_the_outputs(processor: Processor) -> None:
    task = processor.submit(sample_image(2000, 1500), PIPELINE, owner="alice")
    assert (task.status, task.owner, task.attempts) == (TaskStatus.QUEUED, "alice", 0)
    assert (task.source.format, task.source.width, task.source.height) == ("JPEG", 2000, 1500)
    assert processor.run_until_idle() == 1

    done = processor.get(task.id)
    assert done.status == TaskStatus.SUCCEEDED
    assert done.attempts == 1
    assert done.finished_at is not None
    assert done.started_at is not None
    assert [(o.name, o.format, o.width, o.height) for o in done.outputs] == [
        ("thumb", "webp", 256, 192),
        ("large", "jpeg", 1000, 750),
    ]
    for output in done.outputs:
        data = processor.read(output.key)
        assert len(data) == output.bytes
        with Image.open(io.BytesIO(data)) as image:
            assert image.size == (output.width, output.height)
        with processor.open(output.key) as stream:
            assert stream.read() == data


def test_default_pipeline_is_one_jpeg_800_wide(processor: Processor) -> None:
    task = processor.submit(sample_image(1600, 1200))
    processor.run_until_idle()
    (output,) = processor.get(task.id).outputs
    assert (output.format, output.width, output.height) == ("jpeg", 800, 600)


def test_sources_may_be_bytes_files_or_paths(processor: Processor, tmp_path: Path) -> None:
    data = sample_image(300, 200, "PNG")
    path = tmp_path / "in.png"
    path.write_bytes(data)
    tasks = [
        processor.submit(data),
        processor.submit(io.BytesIO(data)),
        processor.submit(path),
        processor.submit(str(path)),
    ]
    # The same bytes are stored once, under their digest.
    assert len({task.source_key for task in tasks}) == 1
    assert processor.read(tasks[0].source_key) == data


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (b"", "empty upload"),
        # The "header" declares a 25120x29813 GIF: refused for its size before anything else.
        (b"GIF89a but not really", "over the limit of 50000000 pixels"),
        (b"<html>nope</html>", "not a readable image"),
    ],
)
def test_bad_uploads_are_refused_and_nothing_is_stored(source: bytes, message: str) -> None:
    storage = MemoryStorage()
    proc, _ = build(storage)
    with pytest.raises(InvalidImage, match=message):
        proc.submit(source)
    assert storage.keys() == []
    assert len(proc.repository) == 0  # type: ignore[arg-type]


def test_a_bad_pipeline_is_refused_before_anything_is_stored() -> None:
    storage = MemoryStorage()
    proc, _ = build(storage)
    with pytest.raises(InvalidPipeline):
        proc.submit(sample_image(), "thumb=fit:huge")
    assert storage.keys() == []


def test_a_pipeline_text_is_judged_by_each_processors_own_limits() -> None:
    # Parsed pipelines are remembered across processors: the limits must still be each one's.
    text = "a=fit:100x100;b=fit:200x200;c=fit:300x300"
    roomy = memory_processor()
    tight = memory_processor(pipeline_limits=PipelineLimits(max_variants=2))
    for _ in range(2):  # the second time from the remembered parse
        assert roomy.submit(sample_image(), text).pipeline == Pipeline.parse(text)
        with pytest.raises(InvalidPipeline, match="variants"):
            tight.submit(sample_image(), text)


def test_an_upload_over_the_limit_is_refused_without_reading_it_all(tmp_path: Path) -> None:
    from imageproc import ImageLimits

    proc, _ = build(image_limits=ImageLimits(max_bytes=1000))
    stream = io.BytesIO(sample_image(800, 600, "PNG"))
    with pytest.raises(InvalidImage, match="over the limit of 1000 bytes"):
        proc.submit(stream)
    assert stream.tell() == 1001


def test_a_missing_path_is_an_invalid_image(processor: Processor, tmp_path: Path) -> None:
    with pytest.raises(InvalidImage, match="cannot read"):
        processor.submit(tmp_path / "nope.jpg")


def test_a_truncated_image_fails_with_invalid_image(processor: Processor) -> None:
    data = sample_image(800, 600)
    task = processor.submit(data[: len(data) // 2])
    processor.run_until_idle()
    failed = processor.get(task.id)
    assert failed.status == TaskStatus.FAILED
    assert failed.attempts == 1
    assert failed.error is not None
    assert failed.error.code == "invalid_image"


def test_storage_failing_twice_transiently_still_succeeds() -> None:
    flaky = FlakyStorage(MemoryStorage(), failures=2, methods=frozenset({"get"}))
    proc, queue = build(flaky)
    task = proc.submit(sample_image())
    proc.run_until_idle()
    assert proc.get(task.id).status == TaskStatus.SUCCEEDED
    assert proc.get(task.id).attempts == 1  # retried in place, not requeued
    assert flaky.failed == 2
    assert queue.released == []


def test_storage_always_failing_transiently_ends_dead_with_growing_delays() -> None:
    flaky = FlakyStorage(MemoryStorage(), failures=None, methods=frozenset({"get"}))
    proc, queue = build(flaky, max_attempts=5, in_place_tries=2)
    task = proc.submit(sample_image())
    proc.start(workers=2)
    try:
        dead = proc.wait(task.id, timeout=20)
    finally:
        proc.stop(timeout=5)
    assert dead.status == TaskStatus.DEAD
    assert dead.attempts == 5
    assert dead.error is not None
    assert dead.error.code == "storage_error"
    assert flaky.failed == 5 * 2
    delays = [(t.available_at - t.updated_at).total_seconds() for t in queue.released]
    assert len(delays) == 4
    assert delays == sorted(delays)
    assert delays[-1] >= 4 * delays[0]
    assert queue.completed[task.id] == 1


def test_a_permanent_storage_failure_fails_after_one_attempt() -> None:
    flaky = FlakyStorage(
        MemoryStorage(),
        failures=None,
        error=StorageError("access denied", transient=False),
        methods=frozenset({"get"}),
    )
    proc, queue = build(flaky)
    task = proc.submit(sample_image())
    proc.run_until_idle()
    failed = proc.get(task.id)
    assert (failed.status, failed.attempts, flaky.failed) == (TaskStatus.FAILED, 1, 1)
    assert failed.error is not None
    assert failed.error.message == "access denied"
    assert queue.released == []


def test_an_unexpected_exception_is_recorded_without_its_details() -> None:
    class Exploding(MemoryStorage):
        def get(self, key: str) -> bytes:
            raise RuntimeError("secret /internal/path")

    proc, _ = build(Exploding(), max_attempts=1)
    task = proc.submit(sample_image())
    proc.run_until_idle()
    dead = proc.get(task.id)
    assert dead.status == TaskStatus.DEAD
    assert dead.error is not None
    assert dead.error.code == "internal_error"
    assert "/internal" not in dead.error.message


def test_higher_priority_goes_first(processor: Processor) -> None:
    low = processor.submit(sample_image(64, 64), priority=0)
    high = processor.submit(sample_image(64, 64), priority=10)
    mid = processor.submit(sample_image(64, 64), priority=5)
    processor.run_until_idle()
    started = sorted((processor.get(t.id).started_at, t.id) for t in (low, high, mid))
    assert [task_id for _, task_id in started] == [high.id, mid.id, low.id]


def test_cancel_a_queued_task(processor: Processor) -> None:
    task = processor.submit(sample_image())
    assert processor.cancel(task.id).status == TaskStatus.CANCELLED
    assert processor.run_until_idle() == 0
    assert processor.get(task.id).status == TaskStatus.CANCELLED
    with pytest.raises(IllegalTransition):
        processor.cancel(task.id)


def test_cancel_while_processing_discards_the_result() -> None:
    proc, queue = build()
    task = proc.submit(sample_image())
    (lease,) = proc.queue.claim("w", lease_seconds=30)
    proc.cancel(task.id)
    assert proc.process(lease) is None
    assert proc.get(task.id).status == TaskStatus.CANCELLED
    assert queue.completed[task.id] == 0


def test_retry_a_dead_task() -> None:
    flaky = FlakyStorage(MemoryStorage(), failures=1, methods=frozenset({"get"}))
    proc, _ = build(flaky, max_attempts=1, in_place_tries=1)
    task = proc.submit(sample_image())
    proc.run_until_idle()
    assert proc.get(task.id).status == TaskStatus.DEAD
    [dead] = proc.tasks(TaskStatus.DEAD)  # the dead-letter set
    assert (dead.id, dead.error and dead.error.code) == (task.id, "storage_error")
    retried = proc.retry(task.id)
    assert (retried.status, retried.attempts) == (TaskStatus.QUEUED, 0)
    proc.run_until_idle()
    assert proc.get(task.id).status == TaskStatus.SUCCEEDED
    with pytest.raises(IllegalTransition):
        proc.retry(task.id)


def test_get_and_wait(processor: Processor) -> None:
    with pytest.raises(TaskNotFound):
        processor.get("missing")
    task = processor.submit(sample_image())
    with pytest.raises(WaitTimeout):
        processor.wait(task.id, timeout=0.05)
    with pytest.raises(TimeoutError):
        processor.wait(task.id, timeout=0.01)
    processor.run_until_idle()
    assert processor.wait(task.id, timeout=1).status == TaskStatus.SUCCEEDED


def test_a_priority_the_database_cannot_hold_is_refused_before_storing() -> None:
    proc = memory_processor()
    with pytest.raises(InvalidInput, match="priority must be a whole number from -2147483648"):
        proc.submit(sample_image(), priority=2**31)
    assert proc.submit(sample_image(), priority=-(2**31)).priority == -(2**31)
    assert len(proc.repository) == 1  # type: ignore[arg-type]


class _CountingStorage(MemoryStorage):
    def __init__(self) -> None:
        super().__init__()
        self.puts: list[str] = []

    def put(self, key: str, data: bytes, *, content_type: str) -> ObjectInfo:
        self.puts.append(key)
        return super().put(key, data, content_type=content_type)


class _StorageCalls(MemoryStorage):
    """Records each call a submit makes: what it does to storage, whatever the answer."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def exists(self, key: str) -> bool:
        self.calls.append("exists")
        return super().exists(key)

    def put(self, key: str, data: bytes, *, content_type: str) -> ObjectInfo:
        self.calls.append("put")
        return super().put(key, data, content_type=content_type)

    def work_of(self, submit: Callable[[], Task]) -> tuple[Task, list[str]]:
        self.calls.clear()
        task = submit()
        return task, list(self.calls)


def test_another_owners_bytes_cost_a_first_upload() -> None:
    # Were originals shared, bob's upload of alice's bytes would skip the write, and the time it
    # saved would tell bob that someone had uploaded them.
    storage = _StorageCalls()
    proc, _ = build(storage)
    image = sample_image()
    alice, first = storage.work_of(lambda: proc.submit(image, owner="alice"))
    bob, second = storage.work_of(lambda: proc.submit(image, owner="bob"))
    assert first == second == ["exists", "put"]
    assert alice.source_key != bob.source_key
    assert proc.read(alice.source_key) == proc.read(bob.source_key) == image
    # The same owner still shares one original (asked for again once the task is recorded, in
    # case the sweep of orphans took it meanwhile).
    again, repeat = storage.work_of(lambda: proc.submit(image, owner="alice"))
    assert (again.source_key, repeat) == (alice.source_key, ["exists", "exists"])
    # So does everyone without an owner (a library with no owners).
    nobody, _ = storage.work_of(lambda: proc.submit(image))
    assert proc.submit(image).source_key == nobody.source_key
    batch = proc.submit_many([Upload(image, owner="carol"), Upload(image, owner="alice")])
    assert [t.source_key for t in batch if isinstance(t, Task)][1:] == [alice.source_key]
    assert len(set(storage.keys())) == 4


def test_purge_keeps_another_owners_copy_of_the_same_bytes() -> None:
    from datetime import timedelta

    storage = MemoryStorage()
    proc, _ = build(storage)
    image = sample_image(300, 200)
    alice = proc.submit(image, "png", owner="alice")
    proc.run_until_idle()
    bob = proc.submit(image, "png", owner="bob")  # still queued
    assert proc.purge(older_than=timedelta(0)) == 1
    assert storage.keys() == [bob.source_key]
    assert proc.read(bob.source_key) == image
    assert not proc.repository.source_in_use(alice.source_key)


def test_a_task_keeps_the_source_key_it_was_recorded_with() -> None:
    # Tasks recorded before originals had owners' namespaces point at the shared key: they are
    # processed, and purged, from there.
    from datetime import timedelta

    storage = MemoryStorage()
    proc, _ = build(storage)
    image = sample_image(300, 200)
    legacy = proc.submit(image, "png", owner="alice")
    old_key = keys.source_key(legacy.source.sha256, "png")  # the key before namespaces
    storage.put(old_key, image, content_type="image/png")
    storage.delete(legacy.source_key)
    recorded = attrs.evolve(legacy, source_key=old_key)
    assert proc.repository.update(recorded, expected=legacy)
    proc.run_until_idle()
    assert proc.get(legacy.id).status == TaskStatus.SUCCEEDED
    assert proc.purge(older_than=timedelta(0)) == 1
    assert storage.keys() == []


class _Submitted(Events):
    def __init__(self) -> None:
        self.ids: list[str] = []

    def submitted(self, task: Task) -> None:
        self.ids.append(task.id)


def test_submit_many_answers_each_upload_in_order() -> None:
    storage = MemoryStorage()
    events = _Submitted()
    proc, _ = build(storage, events=events)
    results = proc.submit_many(
        [
            Upload(sample_image(), "thumb=fit:64x64,png"),
            Upload(b"not an image"),
            Upload(sample_image(320, 200), priority=5, owner="bob"),
            Upload(sample_image(), "fit:huge"),
            Upload(sample_image(), priority=10**10),
        ]
    )
    first, not_image, third, bad_pipeline, bad_priority = results
    assert isinstance(first, Task)
    assert first.pipeline == Pipeline.parse("thumb=fit:64x64,png")
    assert isinstance(third, Task)
    assert (third.priority, third.owner, third.source.width) == (5, "bob", 320)
    assert isinstance(not_image, InvalidImage)
    assert isinstance(bad_pipeline, InvalidPipeline)
    assert isinstance(bad_priority, InvalidInput)
    queued = proc.tasks(TaskStatus.QUEUED)
    assert {task.id for task in queued} == {first.id, third.id}
    assert sorted(storage.keys()) == sorted({first.source_key, third.source_key})
    assert events.ids == [first.id, third.id]


def test_submit_many_stores_the_same_bytes_once_for_two_tasks() -> None:
    storage = _CountingStorage()
    proc, _ = build(storage)
    image = sample_image()
    one, two, other = proc.submit_many([Upload(image), Upload(image), Upload(sample_image(99))])
    assert isinstance(one, Task)
    assert isinstance(two, Task)
    assert isinstance(other, Task)
    assert one.id != two.id
    assert one.source_key == two.source_key
    assert sorted(storage.puts) == sorted([one.source_key, other.source_key])


def test_an_original_that_cannot_be_stored_fails_only_its_own_upload() -> None:
    failing = FlakyStorage(
        MemoryStorage(),
        failures=1,
        error=StorageError("disk full", transient=False),
        methods=frozenset({"put"}),
    )
    proc, _ = build(failing)
    results = proc.submit_many([Upload(sample_image(200)), Upload(sample_image(300))])
    # The two are stored concurrently: either may be the one that fails.
    [refused] = [result for result in results if isinstance(result, StorageError)]
    [task] = [result for result in results if isinstance(result, Task)]
    assert "disk full" in str(refused)
    assert [queued.id for queued in proc.tasks(TaskStatus.QUEUED)] == [task.id]


class _UnreachableRepository(MemoryRepository):
    def add_many(self, tasks: Sequence[Task]) -> None:
        raise BackendUnavailable("database unavailable: connection refused")


def test_tasks_that_cannot_be_recorded_each_get_an_error_of_their_own() -> None:
    repository = _UnreachableRepository()
    storage = MemoryStorage()
    proc = Processor(storage, MemoryQueue(repository), repository, **FAST_OPTIONS)  # type: ignore[arg-type]
    results = proc.submit_many([Upload(sample_image(200)), Upload(sample_image(300))])
    assert all(isinstance(result, BackendUnavailable) for result in results)
    # Raised in two requests at once, one object would mix their tracebacks.
    assert results[0] is not results[1]
    assert proc.tasks(TaskStatus.QUEUED) == []


class _BrokenForOneKey(MemoryStorage):
    """Raises an error that is not imageproc's for the first original it is asked to store."""

    def __init__(self) -> None:
        super().__init__()
        self.broken: str | None = None

    def put(self, key: str, data: bytes, *, content_type: str) -> ObjectInfo:
        if self.broken in (None, key):
            self.broken = key
            raise OSError("a bug in a storage of one's own")
        return super().put(key, data, content_type=content_type)


def test_an_unexpected_storage_fault_fails_only_its_own_upload() -> None:
    proc, _ = build(_BrokenForOneKey())
    results = proc.submit_many([Upload(sample_image(200)), Upload(sample_image(300))])
    assert sorted(type(result).__name__ for result in results) == ["OSError", "Task"]


class _PickyRepository(MemoryRepository):
    """One transaction for several tasks fails on any task owned by "bad" (as a database
    refuses a value it cannot hold); alone, only that task is refused."""

    def add_many(self, tasks: Sequence[Task]) -> None:
        if any(task.owner == "bad" for task in tasks):
            raise ValueError("a value the database cannot hold")
        super().add_many(tasks)

    def add(self, task: Task) -> None:
        if task.owner == "bad":
            raise ValueError("a value the database cannot hold")
        super().add(task)


def test_a_task_the_database_refuses_is_refused_alone() -> None:
    repository = _PickyRepository()
    proc = Processor(MemoryStorage(), MemoryQueue(repository), repository, **FAST_OPTIONS)  # type: ignore[arg-type]
    good, bad, other = proc.submit_many(
        [
            Upload(sample_image(200)),
            Upload(sample_image(300), owner="bad"),
            Upload(sample_image(99)),
        ]
    )
    assert isinstance(good, Task)
    assert isinstance(other, Task)
    assert isinstance(bad, ValueError)
    assert {task.id for task in proc.tasks(TaskStatus.QUEUED)} == {good.id, other.id}


def test_submit_many_after_close_refuses_each_upload() -> None:
    proc, _ = build()
    proc.close()
    results = proc.submit_many([Upload(sample_image(200)), Upload(sample_image(300))])
    assert [str(result) for result in results] == ["the Processor is closed"] * 2


def test_submit_many_of_nothing_is_nothing() -> None:
    proc, _ = build()
    assert proc.submit_many([]) == []


def test_presets() -> None:
    proc = memory_processor(presets={"avatar": "fit:128x128,webp"}, presets_only=True)
    task = proc.submit(sample_image(), "avatar")
    assert str(task.pipeline) == "default=fit:128x128,webp"
    assert proc.submit(sample_image(), Pipeline.parse("fit:128x128,webp")).pipeline == task.pipeline
    with pytest.raises(InvalidPipeline, match=r"only presets are accepted here \(avatar\)"):
        proc.submit(sample_image(), "fit:4000x4000,png")
    # The same work in any form is the preset: text as well as a Pipeline value (or JSON).
    assert proc.submit(sample_image(), "fit:128x128,webp").pipeline == task.pipeline
    with pytest.raises(InvalidPipeline, match="only presets"):
        proc.submit(sample_image(), "fit:128x128,,webp")
    open_proc = memory_processor(presets={"avatar": "fit:128x128,webp"})
    assert open_proc.submit(sample_image(), "png").pipeline == Pipeline.parse("png")
    with pytest.raises(InvalidPipeline, match=r"'avatr' is neither a preset \(avatar\) nor a"):
        open_proc.submit(sample_image(), "avatr")
    with pytest.raises(InvalidPipeline, match="unknown operation, format or option 'fitt'"):
        open_proc.submit(sample_image(), "fitt:10x10")


def test_from_urls_refuses_what_it_does_not_know() -> None:
    proc = Processor.from_urls("memory://", "memory://")
    assert isinstance(proc.storage, MemoryStorage)
    with pytest.raises(ConfigurationError, match="unsupported database URL"):
        Processor.from_urls("mysql://x", "memory://")
    with pytest.raises(ConfigurationError, match="unsupported storage URL"):
        Processor.from_urls("memory://", "no-such-protocol://x")


@pytest.mark.parametrize(
    "options",
    [{"max_attempts": 0}, {"lease_seconds": 0}, {"in_place_tries": 0}],
)
def test_bad_options_are_refused(options: dict[str, float]) -> None:
    with pytest.raises(ConfigurationError):
        memory_processor(**options)


def test_backoff_grows_and_is_capped() -> None:
    proc = memory_processor(backoff_base=1.0, backoff_max=8.0)
    for attempt, full in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (9, 8.0)]:
        for _ in range(20):
            assert full / 2 <= proc.backoff(attempt) <= full


def test_a_pipeline_that_would_make_a_huge_image_is_refused_at_submit(
    processor: Processor,
) -> None:
    tall = sample_image(16, 2000, "PNG")  # 32,000 pixels, far under the limit...
    with pytest.raises(InvalidPipeline, match=r"would make a 4096x512000 image"):
        processor.submit(tall, "resize:4096x,upscale,png")  # ...asking for 2 gigapixels


def test_a_file_object_that_returns_short_reads_is_read_whole(processor: Processor) -> None:
    class Trickle(io.RawIOBase):
        def __init__(self, data: bytes) -> None:
            self.data = io.BytesIO(data)

        def readable(self) -> bool:
            return True

        def read(self, size: int = -1) -> bytes:
            return self.data.read(min(size, 1000) if size >= 0 else 1000)

    data = sample_image(400, 300, "PNG")
    task = processor.submit(Trickle(data))
    assert processor.read(task.source_key) == data
    assert task.source.bytes == len(data)


def test_purge_deletes_old_finished_tasks_with_their_files() -> None:
    from datetime import timedelta

    storage = MemoryStorage()
    proc, _ = build(storage)
    image = sample_image(300, 200)
    first = proc.submit(image, "png")
    proc.run_until_idle()
    second = proc.submit(image, "png")  # same original, still queued
    assert proc.purge(older_than=timedelta(days=1)) == 0  # nothing that old

    assert proc.purge(older_than=timedelta(0)) == 1
    with pytest.raises(TaskNotFound):
        proc.get(first.id)
    # The finished task's outputs are gone, but the original is still used by the queued one.
    assert storage.keys() == [first.source_key]

    proc.run_until_idle()
    assert proc.get(second.id).status == TaskStatus.SUCCEEDED
    assert proc.purge(older_than=timedelta(0)) == 1
    assert storage.keys() == []


def test_purge_sweeps_originals_no_task_refers_to_after_the_grace_period(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FastForwardClock()
    storage = MemoryStorage(clock=clock)
    proc, _ = build(storage, clock=clock, queue_limits=QueueLimits(max_queued=1))
    queued = proc.submit(sample_image(300, 200), "png")
    refused = sample_image(200, 300)
    with pytest.raises(QueueFull):
        proc.submit(refused, "png")  # its original was stored before the task was refused
    [orphan] = set(storage.keys()) - {queued.source_key}

    assert proc.purge(older_than=timedelta(days=1)) == 0
    assert proc.read(orphan) == refused  # young: its task may be about to be recorded
    clock.advance(2 * 3600)
    with caplog.at_level(logging.INFO, logger="imageproc"):
        assert proc.purge(older_than=timedelta(days=1)) == 0  # still the count of tasks
    assert storage.keys() == [queued.source_key]
    assert "purge removed 1 original(s) that no task refers to" in caplog.text


def test_purge_leaves_orphans_alone_when_told_to() -> None:
    clock = FastForwardClock()
    proc = memory_processor(clock=clock)
    proc.storage.put("originals/ab/orphan.png", b"png", content_type="image/png")
    clock.advance(2 * 3600)
    assert proc.purge(older_than=timedelta(0), orphans_older_than=None) == 0
    assert proc.purge(older_than=timedelta(0), orphans_older_than=timedelta(days=1)) == 0
    assert proc.storage.exists("originals/ab/orphan.png")
    assert proc.purge_orphans(timedelta(hours=1)) == 1
    assert not proc.storage.exists("originals/ab/orphan.png")
    with pytest.raises(ValueError, match="negative"):
        proc.purge_orphans(timedelta(seconds=-1))


class Recorder(Events):
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def submitted(self, task: Task) -> None:
        self.calls.append(("submitted", task.status))

    def finished(self, task: Task) -> None:
        self.calls.append(("finished", task.status))

    def retried(self, task: Task) -> None:
        self.calls.append(("retried", task.status))

    def stage(self, name: str, seconds: float) -> None:
        assert seconds >= 0
        self.calls.append(("stage", name))


def test_events_follow_a_task() -> None:
    recorder = Recorder()
    flaky = FlakyStorage(MemoryStorage(), failures=1, methods=frozenset({"get"}))
    clock = FastForwardClock()
    proc, _ = build(flaky, events=recorder, in_place_tries=1, clock=clock)
    proc.submit(sample_image())
    proc.run_until_idle()  # the first attempt fails on fetch and is put back
    clock.advance(1)  # past its backoff delay
    proc.run_until_idle()
    assert recorder.calls == [
        ("submitted", "queued"),
        ("retried", "queued"),
        ("stage", "fetch"),
        ("stage", "decode"),
        ("stage", "transform"),
        ("stage", "encode"),
        ("stage", "store"),
        ("finished", "succeeded"),
    ]


def test_a_failing_hook_does_not_fail_the_task() -> None:
    class Broken(Events):
        def finished(self, task: Task) -> None:
            raise RuntimeError("metrics backend down")

    proc, _ = build(events=Broken())
    task = proc.submit(sample_image())
    proc.run_until_idle()
    assert proc.get(task.id).status == TaskStatus.SUCCEEDED


def test_submitting_something_that_is_not_an_image_source_is_a_type_error(
    processor: Processor,
) -> None:
    with pytest.raises(TypeError, match="bytes, a binary file object or a path, not int"):
        processor.submit(42)  # type: ignore[arg-type]


# -- scheduling ----------------------------------------------------------------------------------


def test_a_scheduled_task_is_queued_but_not_claimed_before_its_time() -> None:
    clock = FastForwardClock()
    proc, _ = build(clock=clock)
    task = proc.submit(sample_image(), not_before=timedelta(minutes=5))
    assert task.status == TaskStatus.QUEUED
    assert task.available_at == task.created_at + timedelta(minutes=5)
    assert proc.run_until_idle() == 0
    clock.advance(299)
    assert proc.run_until_idle() == 0
    clock.advance(2)
    assert proc.run_until_idle() == 1
    assert proc.get(task.id).status == TaskStatus.SUCCEEDED


def test_a_schedule_by_datetime_and_one_already_past() -> None:
    clock = FastForwardClock()
    proc, _ = build(clock=clock)
    at = clock() + timedelta(hours=1)
    later = proc.submit(sample_image(), not_before=at.astimezone(timezone(timedelta(hours=9))))
    assert later.available_at == at
    past = proc.submit(sample_image(), not_before=clock() - timedelta(days=1))
    assert past.available_at == past.created_at
    assert proc.run_until_idle() == 1  # only the one already due


@pytest.mark.parametrize(
    ("not_before", "message"),
    [
        (datetime(2030, 1, 1), "timezone-aware"),  # naive: no zone
        (timedelta(seconds=-1), "negative"),
        (timedelta(days=367), "at most 366 days"),
        (300, "datetime or a timedelta"),
    ],
)
def test_a_bad_schedule_is_refused_and_stores_nothing(not_before: object, message: str) -> None:
    storage = MemoryStorage()
    proc, _ = build(storage)
    with pytest.raises(InvalidInput, match=message):
        proc.submit(sample_image(), not_before=not_before)  # type: ignore[arg-type]
    assert proc.tasks(TaskStatus.QUEUED) == []
    assert storage.keys() == []


# -- metadata ------------------------------------------------------------------------------------


def test_metadata_is_kept_on_the_task_and_found_by_tasks() -> None:
    proc, _ = build()
    mine = proc.submit(sample_image(), metadata={"user": "42", "album": 7})
    proc.submit(sample_image(), metadata={"user": "43"})
    proc.submit(sample_image())
    assert proc.get(mine.id).metadata == {"user": "42", "album": 7}
    assert [t.id for t in proc.tasks(TaskStatus.QUEUED, metadata={"user": "42"})] == [mine.id]
    assert proc.tasks(TaskStatus.QUEUED, metadata={"album": "7"}) == []
    assert len(proc.tasks(TaskStatus.QUEUED)) == 3


def test_metadata_is_copied_through_json() -> None:
    proc, _ = build()
    given = {"pair": (1, 2)}
    task = proc.submit(sample_image(), metadata=given)
    assert task.metadata == {"pair": [1, 2]}  # what a database gives back, too
    given["pair"] = (3, 4)
    assert proc.get(task.id).metadata == {"pair": [1, 2]}


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        (["user", "42"], "must be a JSON object"),
        ({"": 1}, "must be 1 to 64"),
        ({"a b": 1}, "must be 1 to 64"),
        ({"k" * 65: 1}, "must be 1 to 64"),
        ({1: "x"}, "must be 1 to 64"),
        ({"x": {1, 2}}, "only JSON values"),
        ({"x": float("nan")}, "only JSON values"),
        ({"x": "y" * 5000}, "over 4096 bytes"),
    ],
)
def test_bad_metadata_is_refused_and_stores_nothing(metadata: object, message: str) -> None:
    storage = MemoryStorage()
    proc, _ = build(storage)
    with pytest.raises(InvalidInput, match=message):
        proc.submit(sample_image(), metadata=metadata)  # type: ignore[arg-type]
    assert proc.tasks(TaskStatus.QUEUED) == []
    assert storage.keys() == []


# -- dedupe ---------------------------------------------------------------------------------------

THUMB = "thumb=fit:64x64,webp"


def test_dedupe_returns_the_task_already_under_way_or_done() -> None:
    proc, _ = build()
    image = sample_image()
    first = proc.submit(image, THUMB, dedupe=True)
    assert proc.submit(image, THUMB, dedupe=True).id == first.id  # still queued
    proc.run_until_idle()
    again = proc.submit(image, THUMB, dedupe=True)
    assert again.id == first.id
    assert again.status == TaskStatus.SUCCEEDED
    assert len(proc.tasks(TaskStatus.QUEUED)) == 0


def test_dedupe_makes_new_work_for_another_pipeline_owner_or_a_failed_task() -> None:
    proc, _ = build()
    image = sample_image()
    first = proc.submit(image, THUMB, owner="ann", dedupe=True)
    others = [
        proc.submit(image, "thumb=fit:65x64,webp", owner="ann", dedupe=True),
        proc.submit(image, THUMB, owner="bob", dedupe=True),
        proc.submit(image, THUMB, owner="ann"),  # dedupe is off by default
    ]
    assert len({first.id, *(task.id for task in others)}) == 4
    for task in [first, *others]:
        proc.cancel(task.id)  # a cancelled task (as a failed or dead one) is not reused
    fresh = proc.submit(image, THUMB, owner="ann", dedupe=True)
    assert fresh.id not in {first.id, *(task.id for task in others)}
    assert fresh.status == TaskStatus.QUEUED


def test_dedupe_in_submit_many_and_without_a_lookup() -> None:
    proc, _ = build()
    image = sample_image()
    first = proc.submit(image, THUMB, dedupe=True)
    found, new = proc.submit_many(
        [Upload(image, THUMB, dedupe=True), Upload(sample_image(32, 32), THUMB, dedupe=True)]
    )
    assert isinstance(found, Task)
    assert found.id == first.id
    assert isinstance(new, Task)
    assert new.id != first.id

    class NoLookup:  # a repository written before dedupe: no find_by_source
        def __init__(self, inner: MemoryRepository) -> None:
            self.inner = inner

        def __getattr__(self, name: str) -> object:
            if name == "find_by_source":
                raise AttributeError(name)
            return getattr(self.inner, name)

    repository = MemoryRepository()
    old = Processor(MemoryStorage(), MemoryQueue(repository), NoLookup(repository), **FAST_OPTIONS)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="find_by_source"):
        old.submit(image, THUMB, dedupe=True)
    assert old.submit(image, THUMB).status == TaskStatus.QUEUED
