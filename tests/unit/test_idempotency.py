"""Tests of idempotency keys: the key rules and the request fingerprint
(``imageproc._idempotency``), and submit under a key on the in-memory backends."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imageproc import (
    ConfigurationError,
    IdempotencyConflict,
    InvalidInput,
    Pipeline,
    Processor,
    QueueFull,
    QueueLimits,
    TaskNotFound,
    TaskStatus,
    Upload,
)
from imageproc._idempotency import MAX_KEY_LENGTH, checked_key, fingerprint
from imageproc.backends._memory import MemoryQueue, MemoryRepository, MemoryStorage
from imageproc.testing import FAST_OPTIONS, FastForwardClock, sample_image
from tests.support.strategies import pipelines

THUMB = "thumb=fit:64x64,webp"


def build(
    *, clock: FastForwardClock | None = None, **options: Any
) -> tuple[Processor, MemoryStorage, FastForwardClock]:
    clock = clock or FastForwardClock()
    repository = MemoryRepository(clock=clock)
    storage = MemoryStorage()
    processor = Processor(
        storage, MemoryQueue(repository), repository, clock=clock, **{**FAST_OPTIONS, **options}
    )
    return processor, storage, clock


# -- the key rules --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("", "must not be empty"),
        ("k" * (MAX_KEY_LENGTH + 1), "at most 255"),
        ("tab\there", "printable ASCII"),
        ("new\nline", "printable ASCII"),
        ("clé", "printable ASCII"),
        ("\x7f", "printable ASCII"),
        (42, "must be text"),
    ],
)
def test_bad_keys_are_refused_with_what_is_wrong(key: object, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        checked_key(key)


@given(st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=255))
def test_every_printable_ascii_key_up_to_255_is_accepted(key: str) -> None:
    assert checked_key(key) == key


# -- the fingerprint ------------------------------------------------------------------------------

REQUEST: dict[str, Any] = {
    "sha256": "ab" * 32,
    "pipeline": Pipeline.parse(THUMB),
    "priority": 0,
    "not_before": None,
    "metadata": {"user": "42"},
    "dedupe": False,
}


@pytest.mark.parametrize(
    ("field", "other"),
    [
        ("sha256", "cd" * 32),
        ("pipeline", Pipeline.parse("thumb=fit:65x64,webp")),
        ("priority", 1),
        ("not_before", timedelta(seconds=60)),
        ("metadata", {"user": "43"}),
        ("dedupe", True),
    ],
)
def test_any_change_to_the_request_changes_the_fingerprint(field: str, other: object) -> None:
    assert fingerprint(**REQUEST) != fingerprint(**{**REQUEST, field: other})


def test_the_same_request_has_the_same_fingerprint_however_spelt() -> None:
    same_time = datetime(2026, 12, 7, 20, 0, tzinfo=UTC)
    first = {**REQUEST, "metadata": {"a": 1, "b": 2}, "not_before": same_time}
    # Keys in another order, the time in another zone, the pipeline parsed again.
    second = {
        **REQUEST,
        "metadata": {"b": 2, "a": 1},
        "not_before": same_time.astimezone(datetime.now().astimezone().tzinfo),
        "pipeline": Pipeline.parse(THUMB),
    }
    assert fingerprint(**first) == fingerprint(**second)


@given(pipelines(), pipelines())
def test_fingerprints_differ_exactly_when_pipelines_differ(a: Pipeline, b: Pipeline) -> None:
    same = fingerprint(**{**REQUEST, "pipeline": a}) == fingerprint(**{**REQUEST, "pipeline": b})
    assert same is (a == b)


# -- submit under a key ---------------------------------------------------------------------------


def test_the_same_key_and_request_returns_the_first_task_whatever_its_state() -> None:
    processor, _, _ = build()
    image = sample_image()
    first = processor.submit(image, THUMB, idempotency_key="upload-1")
    again = processor.submit(image, THUMB, idempotency_key="upload-1")
    assert again.id == first.id
    assert len(processor.tasks(TaskStatus.QUEUED)) == 1
    processor.run_until_idle()
    done = processor.submit(image, THUMB, idempotency_key="upload-1")
    assert (done.id, done.status) == (first.id, TaskStatus.SUCCEEDED)  # as it is now
    assert len(processor.tasks(TaskStatus.SUCCEEDED)) == 1
    assert len(processor.tasks(TaskStatus.QUEUED)) == 0


def test_a_preset_and_its_pipeline_text_are_the_same_request() -> None:
    processor, _, _ = build(presets={"thumb": THUMB})
    first = processor.submit(sample_image(), "thumb", idempotency_key="k")
    assert processor.submit(sample_image(), THUMB, idempotency_key="k").id == first.id


@pytest.mark.parametrize(
    "change",
    [
        {"source": sample_image(641)},
        {"pipeline": "thumb=fit:65x64,webp"},
        {"priority": 5},
        {"metadata": {"user": "other"}},
        {"not_before": timedelta(minutes=5)},
        {"dedupe": True},
    ],
)
def test_the_same_key_with_another_request_is_a_conflict_and_stores_nothing(
    change: dict[str, Any],
) -> None:
    processor, storage, _ = build()
    first = processor.submit(sample_image(), THUMB, idempotency_key="k", metadata={"user": "a"})
    stored = storage.keys()
    request: dict[str, Any] = {
        "source": sample_image(),
        "pipeline": THUMB,
        "metadata": {"user": "a"},
        **change,
    }
    with pytest.raises(IdempotencyConflict, match="'k' was already used for a different request"):
        processor.submit(**request, idempotency_key="k")
    assert storage.keys() == stored  # the other image's original was not stored
    assert [task.id for task in processor.tasks(TaskStatus.QUEUED)] == [first.id]


def test_a_conflict_is_invalid_input_and_permanent() -> None:
    assert issubclass(IdempotencyConflict, InvalidInput)
    assert IdempotencyConflict("x").transient is False
    assert IdempotencyConflict.code == "idempotency_conflict"


def test_keys_are_scoped_to_the_owner() -> None:
    processor, _, _ = build()
    ann = processor.submit(sample_image(), THUMB, owner="ann", idempotency_key="k")
    bob = processor.submit(sample_image(641), THUMB, owner="bob", idempotency_key="k")
    nobody = processor.submit(sample_image(642), THUMB, idempotency_key="k")
    assert len({ann.id, bob.id, nobody.id}) == 3


def test_a_key_is_forgotten_after_the_retention_period_and_purge_removes_it() -> None:
    processor, _, clock = build(idempotency_retention=timedelta(hours=1))
    repository = processor.repository
    assert isinstance(repository, MemoryRepository)
    first = processor.submit(sample_image(), THUMB, idempotency_key="k")
    clock.advance(59 * 60)
    assert processor.submit(sample_image(), THUMB, idempotency_key="k").id == first.id
    assert processor.purge(timedelta(days=30)) == 0
    assert repository.find_key("", "k", now=clock()) is not None  # live keys stay
    clock.advance(61)
    # Past the retention: the key means nothing any more, even for another request.
    other = processor.submit(sample_image(641), THUMB, idempotency_key="k")
    assert other.id != first.id
    clock.advance(3601)
    processor.purge(timedelta(days=30))
    assert repository._keys == {}


def test_the_default_retention_is_a_day() -> None:
    processor, _, clock = build()
    first = processor.submit(sample_image(), THUMB, idempotency_key="k")
    clock.advance(23.9 * 3600)
    assert processor.submit(sample_image(), THUMB, idempotency_key="k").id == first.id
    clock.advance(0.2 * 3600)
    assert processor.submit(sample_image(), THUMB, idempotency_key="k").id != first.id


def test_a_replay_of_a_purged_task_says_so() -> None:
    processor, _, clock = build(idempotency_retention=timedelta(days=7))
    first = processor.submit(sample_image(), THUMB, idempotency_key="k")
    processor.run_until_idle()
    clock.advance(3600)
    assert processor.purge(timedelta(minutes=1)) == 1
    with pytest.raises(TaskNotFound, match=f"task {first.id}, which idempotency key 'k'"):
        processor.submit(sample_image(), THUMB, idempotency_key="k")
    # Still a conflict for another request: the key is remembered, not the task.
    with pytest.raises(IdempotencyConflict):
        processor.submit(sample_image(641), THUMB, idempotency_key="k")


def test_a_bad_key_is_refused_before_anything_is_stored() -> None:
    processor, storage, _ = build()
    with pytest.raises(InvalidInput, match="must not be empty"):
        processor.submit(sample_image(), THUMB, idempotency_key="")
    assert storage.keys() == []


def test_a_refused_task_does_not_remember_its_key() -> None:
    processor, _, _ = build(queue_limits=QueueLimits(max_queued=1))
    processor.submit(sample_image(), THUMB)
    with pytest.raises(QueueFull):
        processor.submit(sample_image(641), THUMB, idempotency_key="k")
    processor.run_until_idle()
    # Room again: the same request under the same key is a first request, not a replay.
    task = processor.submit(sample_image(641), THUMB, idempotency_key="k")
    assert task.status == TaskStatus.QUEUED


def test_dedupe_under_a_key_remembers_the_task_it_found() -> None:
    processor, _, _ = build()
    done = processor.submit(sample_image(), THUMB)
    processor.run_until_idle()
    found = processor.submit(sample_image(), THUMB, dedupe=True, idempotency_key="k")
    assert (found.id, found.status) == (done.id, TaskStatus.SUCCEEDED)
    record = processor.repository.find_key("", "k", now=processor.clock())  # type: ignore[attr-defined]
    # The answer's created_at is the task's; the key's retention runs from its own first use.
    assert record.created_at == done.created_at
    assert record.remembered_at > done.created_at
    assert processor.submit(sample_image(), THUMB, dedupe=True, idempotency_key="k").id == done.id
    assert processor.tasks(TaskStatus.QUEUED) == []


def test_submit_many_takes_a_key_per_upload() -> None:
    processor, _, _ = build()
    first = processor.submit(sample_image(), THUMB, idempotency_key="a")
    results = processor.submit_many(
        [
            Upload(sample_image(), THUMB, idempotency_key="a"),  # a replay
            Upload(sample_image(641), THUMB, idempotency_key="b"),  # new
            Upload(sample_image(641), THUMB, idempotency_key="b"),  # the same again, in one batch
            Upload(sample_image(642), THUMB, idempotency_key="a"),  # a conflict
            Upload(sample_image(643), THUMB),  # no key
        ]
    )
    replay, new, again, conflict, plain = results
    assert not isinstance(replay, Exception)
    assert replay.id == first.id
    assert not isinstance(new, Exception)
    assert not isinstance(again, Exception)
    assert again.id == new.id
    assert isinstance(conflict, IdempotencyConflict)
    assert not isinstance(plain, Exception)
    assert len(processor.tasks(TaskStatus.QUEUED)) == 3


def test_a_repository_that_cannot_remember_keys_is_a_clear_error() -> None:
    class Forgetful(MemoryRepository):
        add_keyed = None  # type: ignore[assignment]

    repository = Forgetful()
    processor = Processor(MemoryStorage(), MemoryQueue(repository), repository, **FAST_OPTIONS)
    with pytest.raises(ConfigurationError, match="Forgetful has no add_keyed"):
        processor.submit(sample_image(), idempotency_key="k")


def test_the_retention_must_be_positive() -> None:
    with pytest.raises(ConfigurationError, match="idempotency_retention"):
        build(idempotency_retention=timedelta(0))


def test_sixteen_threads_under_one_key_make_one_task_and_all_get_it() -> None:
    processor, _, _ = build()
    image = sample_image()
    barrier = threading.Barrier(16)
    ids: list[str] = []

    def submit() -> None:
        barrier.wait(timeout=10)
        ids.append(processor.submit(image, THUMB, idempotency_key="same").id)

    threads = [threading.Thread(target=submit) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(ids) == 16
    assert len(set(ids)) == 1
    assert [task.id for task in processor.tasks(TaskStatus.QUEUED)] == ids[:1]
