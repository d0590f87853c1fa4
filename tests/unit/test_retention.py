"""Tests of retention's sweep of originals that no task refers to (``purge_orphans``); the
purge of finished tasks is tested through ``Processor.purge`` in test_processor.py."""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterator
from datetime import timedelta

import attrs
import pytest

from imageproc import InvalidKey, RetryPolicy, StorageError, StoredObject, Task, TaskStatus
from imageproc._clock import utcnow
from imageproc._retention import purge_orphans, sources_in_use
from imageproc.backends._memory import MemoryQueue, MemoryRepository, MemoryStorage
from imageproc.testing import FastForwardClock, FlakyStorage
from tests.support.doubles import new_task

RETRY = RetryPolicy(in_place_tries=1)
HOUR = 3600


def stored(storage: MemoryStorage, key: str) -> str:
    storage.put(key, b"bytes", content_type="image/jpeg")
    return key


def task_of(source_key: str) -> Task:
    return attrs.evolve(new_task(), source_key=source_key)


@attrs.define
class Setup:
    clock: FastForwardClock
    storage: MemoryStorage
    repository: MemoryRepository

    def sweep(self, grace: timedelta = timedelta(hours=1), *, batch: int = 500) -> int:
        before = self.clock() - grace
        return purge_orphans(self.repository, self.storage, RETRY, before, batch=batch)


@pytest.fixture
def setup() -> Setup:
    clock = FastForwardClock()
    return Setup(clock, MemoryStorage(clock=clock), MemoryRepository(clock=clock))


def test_only_old_originals_that_no_task_refers_to_are_deleted(setup: Setup) -> None:
    storage, repository = setup.storage, setup.repository
    orphan = stored(storage, "originals/aa/orphan.jpg")
    queued = stored(storage, "originals/bb/queued.jpg")
    succeeded = stored(storage, "originals/o1/cc/succeeded.jpg")
    output = stored(storage, "outputs/gone-task/thumb.jpg")  # its task was purged long ago
    repository.add(task_of(succeeded))
    [lease] = MemoryQueue(repository).claim("w", lease_seconds=30)
    MemoryQueue(repository).complete(lease, lease.task.succeed((), utcnow()))
    repository.add(task_of(queued))
    setup.clock.advance(2 * HOUR)
    young = stored(storage, "originals/dd/young.jpg")  # its task may be on its way

    assert setup.sweep() == 1
    assert storage.keys() == sorted([output, queued, succeeded, young])
    assert repository.get(lease.task.id).status == TaskStatus.SUCCEEDED
    assert not storage.exists(orphan)


def test_nothing_is_deleted_within_the_grace_period(setup: Setup) -> None:
    orphan = stored(setup.storage, "originals/aa/orphan.jpg")
    setup.clock.advance(HOUR - 60)
    assert setup.sweep() == 0
    assert setup.storage.exists(orphan)
    setup.clock.advance(120)
    assert setup.sweep() == 1
    assert not setup.storage.exists(orphan)


class CountingRepository(MemoryRepository):
    """Counts the batches it is asked about."""

    def __init__(self, *, clock: FastForwardClock) -> None:
        super().__init__(clock=clock)
        self.batches: list[list[str]] = []

    def sources_in_use(self, keys: Collection[str]) -> set[str]:
        self.batches.append(sorted(keys))
        return super().sources_in_use(keys)


def test_originals_are_asked_about_a_batch_per_query(setup: Setup) -> None:
    repository = CountingRepository(clock=setup.clock)
    setup.repository = repository
    orphans = [stored(setup.storage, f"originals/aa/{n}.jpg") for n in range(5)]
    kept = stored(setup.storage, "originals/bb/kept.jpg")
    repository.add(task_of(kept))
    setup.clock.advance(2 * HOUR)

    assert setup.sweep(batch=2) == 5
    assert [len(batch) for batch in repository.batches] == [2, 2, 2]
    assert sorted(key for batch in repository.batches for key in batch) == sorted([*orphans, kept])
    assert setup.storage.keys() == [kept]


class OneByOne:
    """A repository with nothing but ``source_in_use`` (no batch query)."""

    def __init__(self, repository: MemoryRepository) -> None:
        self.repository = repository
        self.asked: list[str] = []

    def source_in_use(self, source_key: str) -> bool:
        self.asked.append(source_key)
        return self.repository.source_in_use(source_key)


def test_a_repository_without_the_batch_query_is_asked_key_by_key(setup: Setup) -> None:
    orphan = stored(setup.storage, "originals/aa/orphan.jpg")
    kept = stored(setup.storage, "originals/bb/kept.jpg")
    setup.repository.add(task_of(kept))
    setup.clock.advance(2 * HOUR)
    one_by_one = OneByOne(setup.repository)

    assert sources_in_use(one_by_one, [orphan, kept]) == {kept}  # type: ignore[arg-type]
    before = setup.clock() - timedelta(hours=1)
    assert purge_orphans(one_by_one, setup.storage, RETRY, before, batch=10) == 1  # type: ignore[arg-type]
    assert sorted(one_by_one.asked) == sorted([orphan, kept, orphan, kept])
    assert setup.storage.keys() == [kept]


def test_a_storage_that_cannot_list_is_skipped_with_a_log_line(
    setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    orphan = stored(setup.storage, "originals/aa/orphan.jpg")
    setup.clock.advance(2 * HOUR)
    unlistable = FlakyStorage(setup.storage, failures=0)
    before = setup.clock() - timedelta(hours=1)

    with caplog.at_level(logging.INFO, logger="imageproc"):
        assert purge_orphans(setup.repository, unlistable, RETRY, before, batch=10) == 0
    assert "FlakyStorage cannot list its objects" in caplog.text
    assert setup.storage.exists(orphan)


class RefusingStorage(MemoryStorage):
    """Lists a key that its delete refuses (as a link out of a local root is)."""

    def delete(self, key: str) -> None:
        if key.endswith("refused.jpg"):
            raise InvalidKey("storage key resolves outside the storage root")
        super().delete(key)


def test_a_key_the_storage_refuses_to_delete_does_not_stop_the_sweep(
    setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    storage = RefusingStorage(clock=setup.clock)
    setup.storage = storage
    refused = stored(storage, "originals/aa/refused.jpg")
    orphan = stored(storage, "originals/bb/orphan.jpg")
    setup.clock.advance(2 * HOUR)

    assert setup.sweep() == 1
    assert storage.keys() == [refused]
    assert not storage.exists(orphan)
    assert "not deleting 'originals/aa/refused.jpg'" in caplog.text


def test_a_batch_must_hold_a_key(setup: Setup) -> None:
    with pytest.raises(ValueError, match="batch"):
        setup.sweep(batch=0)


def test_the_listing_is_retried_like_any_storage_call(setup: Setup) -> None:
    class FlakyListing(MemoryStorage):
        failures = 1

        def list_objects(self, prefix: str) -> Iterator[StoredObject]:
            if self.failures:
                self.failures -= 1
                raise StorageError("listing timed out", transient=True)
            return super().list_objects(prefix)

    storage = FlakyListing(clock=setup.clock)
    orphan = stored(storage, "originals/aa/orphan.jpg")
    setup.clock.advance(2 * HOUR)
    retry = RetryPolicy(in_place_tries=2, in_place_wait=0.001)
    before = setup.clock() - timedelta(hours=1)

    assert purge_orphans(setup.repository, storage, retry, before, batch=10) == 1
    assert storage.failures == 0
    assert not storage.exists(orphan)


def test_purge_forgets_settled_webhook_deliveries_and_keeps_pending_ones() -> None:
    from imageproc import DeliveryStatus, DeliveryStore, Webhooks
    from imageproc.testing import memory_processor, sample_image

    hook = "https://93.184.216.34/hook"  # a public address: nothing is sent (no sender runs)
    with memory_processor(webhooks=Webhooks(secrets=[Webhooks.new_secret()])) as processor:
        first = processor.submit(sample_image(32, 24), "png", callback_url=hook)
        second = processor.submit(sample_image(24, 32), "png", callback_url=hook)
        processor.cancel(first.id)
        store = processor.repository
        assert isinstance(store, DeliveryStore)
        [taken] = store.claim_deliveries(processor.clock(), limit=1, hold=timedelta(seconds=30))
        assert store.settle_delivery(taken.succeeded(processor.clock(), 204))
        processor.cancel(second.id)  # its delivery stays pending
        processor.purge(timedelta(0), orphans_older_than=None)
        assert processor.deliveries(DeliveryStatus.DELIVERED) == []
        [pending] = processor.deliveries(DeliveryStatus.PENDING)
        assert pending.task_id == second.id
