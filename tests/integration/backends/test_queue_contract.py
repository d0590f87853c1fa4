"""The Repository + Queue contract, run against every implementation."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import timedelta

import attrs
import pytest

from imageproc import LeaseLost, Output, SourceUsage, TaskError, TaskNotFound, TaskStatus
from imageproc._clock import utcnow
from imageproc.pipeline._pipeline import Pipeline
from tests.support.backends import Backend
from tests.support.doubles import new_task

LEASE = 30.0
SHORT = 0.15


def test_add_then_get(backend: Backend) -> None:
    task = new_task()
    backend.repository.add(task)
    assert backend.repository.get(task.id) == task
    with pytest.raises(TaskNotFound):
        backend.repository.get("no-such-task")


def test_add_many_records_every_task_and_queues_them(backend: Backend) -> None:
    tasks = [new_task(priority) for priority in (1, 3, 2)]
    later = new_task(due_in=3600)
    backend.repository.add_many([*tasks, later])
    backend.repository.add_many([])
    for task in [*tasks, later]:
        assert backend.repository.get(task.id) == task
    leases = backend.queue.claim("w", lease_seconds=LEASE, limit=10)
    assert [lease.task.priority for lease in leases] == [3, 2, 1]  # not the delayed one


def test_add_many_is_all_or_none(backend: Backend) -> None:
    recorded, fresh = new_task(), new_task()
    backend.repository.add(recorded)
    with pytest.raises(ValueError, match="already exists"):
        backend.repository.add_many([fresh, recorded])
    twice = new_task()
    with pytest.raises(ValueError, match="already exists"):
        backend.repository.add_many([twice, twice])
    for task in (fresh, twice):
        with pytest.raises(TaskNotFound):
            backend.repository.get(task.id)
    assert backend.repository.queue_stats().queued == 1


def assert_wait_wakes_when(backend: Backend, add: Callable[[], object], added: int) -> None:
    """A worker waiting in ``Queue.wait`` wakes soon after ``add`` runs in another thread, and
    finds the ``added`` tasks."""
    timer = threading.Timer(0.1, add)
    started = time.monotonic()
    timer.start()
    try:
        backend.queue.wait(5.0)
    finally:
        timer.join()
    assert time.monotonic() - started < 2.0
    assert len(backend.queue.claim("w", lease_seconds=LEASE, limit=5)) == added


def test_add_many_wakes_a_waiting_worker(backend: Backend) -> None:
    assert_wait_wakes_when(
        backend, lambda: backend.repository.add_many([new_task(), new_task()]), 2
    )


def test_a_claimed_task_is_invisible_to_other_claimers(backend: Backend) -> None:
    task = new_task()
    backend.repository.add(task)
    (lease,) = backend.queue.claim("w1", lease_seconds=LEASE)
    assert lease.task.id == task.id
    assert (lease.task.status, lease.task.attempts, lease.worker) == (
        TaskStatus.PROCESSING,
        1,
        "w1",
    )
    assert backend.repository.get(task.id).status == TaskStatus.PROCESSING
    assert backend.queue.claim("w2", lease_seconds=LEASE) == []


def test_a_lease_carries_the_task_as_recorded_with_the_claim_made(backend: Backend) -> None:
    texts = ["thumb=fit:64x64,webp:q70", "a=fit:10x10,png;b=resize:20x,jpeg:q80", "avif"]
    tasks = [attrs.evolve(new_task(), pipeline=Pipeline.parse(text)) for text in texts * 2]
    for task in tasks:
        backend.repository.add(task)
    leases = backend.queue.claim("w", lease_seconds=LEASE, limit=len(tasks))
    assert sorted(lease.task.id for lease in leases) == sorted(task.id for task in tasks)
    recorded = {task.id: task for task in tasks}
    for lease in leases:
        assert lease.task == recorded[lease.task.id].claim(lease.task.updated_at)
        assert backend.repository.get(lease.task.id) == lease.task


def test_claim_order_priority_then_due_time_then_age(backend: Backend) -> None:
    now = utcnow()
    due = now - timedelta(seconds=30)
    oldest_but_due_later = attrs.evolve(new_task(age=100), available_at=now - timedelta(seconds=10))
    due_first = attrs.evolve(new_task(age=40), available_at=due)
    younger = attrs.evolve(new_task(age=35), available_at=due)  # same due time, created later
    high = new_task(5)
    for task in (younger, oldest_but_due_later, high, due_first):
        backend.repository.add(task)
    claimed = [backend.queue.claim("w", lease_seconds=LEASE)[0].task.id for _ in range(4)]
    assert claimed == [high.id, due_first.id, younger.id, oldest_but_due_later.id]


def test_claim_in_batches_keeps_the_order(backend: Backend) -> None:
    tasks = [new_task(p) for p in (1, 3, 2)]
    for task in tasks:
        backend.repository.add(task)
    leases = backend.queue.claim("w", lease_seconds=LEASE, limit=2)
    assert [lease.task.priority for lease in leases] == [3, 2]
    assert len({lease.token for lease in leases}) == 2


def test_a_delayed_task_waits_until_due(backend: Backend) -> None:
    task = new_task(due_in=SHORT)
    backend.repository.add(task)
    assert backend.queue.claim("w", lease_seconds=LEASE) == []
    backend.clock.advance(SHORT + 0.05)
    assert [lease.task.id for lease in backend.queue.claim("w", lease_seconds=LEASE)] == [task.id]


def test_an_expired_lease_makes_the_task_claimable_and_the_old_holder_loses(
    backend: Backend,
) -> None:
    task = new_task()
    backend.repository.add(task)
    (stale,) = backend.queue.claim("crashed", lease_seconds=SHORT)
    backend.clock.advance(SHORT + 0.05)
    (fresh,) = backend.queue.claim("rescuer", lease_seconds=LEASE)
    assert fresh.task.id == task.id
    assert fresh.task.attempts == 2
    with pytest.raises(LeaseLost):
        backend.queue.complete(stale, stale.task.succeed((), utcnow()))
    with pytest.raises(LeaseLost):
        backend.queue.renew(stale, lease_seconds=LEASE)
    backend.queue.complete(fresh, fresh.task.succeed((), utcnow()))
    assert backend.repository.get(task.id).status == TaskStatus.SUCCEEDED


def test_an_expired_lease_with_no_attempts_left_makes_the_task_dead(backend: Backend) -> None:
    task = attrs.evolve(new_task(), max_attempts=1)
    backend.repository.add(task)
    backend.queue.claim("crashed", lease_seconds=SHORT)
    backend.clock.advance(SHORT + 0.05)
    assert backend.queue.claim("rescuer", lease_seconds=LEASE) == []
    dead = backend.repository.get(task.id)
    assert (dead.status, dead.attempts) == (TaskStatus.DEAD, 1)
    assert dead.error is not None
    assert dead.error.code == "lease_expired"
    assert dead.finished_at is not None


def test_update_refuses_a_task_that_moved_on_in_the_same_status(backend: Backend) -> None:
    task = new_task()
    backend.repository.add(task)
    (first,) = backend.queue.claim("w1", lease_seconds=SHORT)
    backend.clock.advance(SHORT + 0.05)
    (second,) = backend.queue.claim("w2", lease_seconds=LEASE)  # processing again, re-claimed
    assert second.task.status == first.task.status
    assert backend.repository.update(first.task.cancel(utcnow()), expected=first.task) is False
    assert backend.repository.get(task.id).attempts == 2


def test_renewing_keeps_the_lease(backend: Backend) -> None:
    backend.repository.add(new_task())
    (lease,) = backend.queue.claim("w1", lease_seconds=SHORT)
    for _ in range(4):
        backend.clock.advance(SHORT / 2)
        lease = backend.queue.renew(lease, lease_seconds=SHORT)
        assert backend.queue.claim("w2", lease_seconds=LEASE) == []
    backend.queue.complete(lease, lease.task.succeed((), utcnow()))


def test_complete_records_and_ends_the_lease(backend: Backend) -> None:
    backend.repository.add(new_task())
    (lease,) = backend.queue.claim("w", lease_seconds=SHORT)
    done = lease.task.fail(TaskError("invalid_image", "nope"), utcnow())
    backend.queue.complete(lease, done)
    assert backend.repository.get(done.id) == done
    backend.clock.advance(SHORT + 0.05)
    assert backend.queue.claim("w", lease_seconds=LEASE) == []  # a final task is never reclaimed
    with pytest.raises(LeaseLost):
        backend.queue.complete(lease, done)  # once only


def test_release_puts_the_task_back_after_its_delay(backend: Backend) -> None:
    backend.repository.add(new_task())
    (lease,) = backend.queue.claim("w", lease_seconds=LEASE)
    backend.queue.release(lease, lease.task.requeue(utcnow(), delay=timedelta(seconds=SHORT)))
    assert backend.queue.claim("w", lease_seconds=LEASE) == []
    backend.clock.advance(SHORT + 0.05)
    (again,) = backend.queue.claim("w", lease_seconds=LEASE)
    assert again.task.attempts == 2
    with pytest.raises(LeaseLost):
        backend.queue.release(lease, lease.task.requeue(utcnow(), delay=timedelta(0)))


def test_update_is_compare_and_set_and_drops_the_lease(backend: Backend) -> None:
    task = new_task()
    backend.repository.add(task)
    (lease,) = backend.queue.claim("w", lease_seconds=LEASE)
    cancelled = lease.task.cancel(utcnow())
    assert backend.repository.update(cancelled, expected=task) is False  # still queued?
    assert backend.repository.update(cancelled, expected=lease.task) is True
    assert backend.repository.get(task.id).status == TaskStatus.CANCELLED
    with pytest.raises(LeaseLost):
        backend.queue.complete(lease, lease.task.succeed((), utcnow()))
    with pytest.raises(TaskNotFound):
        backend.repository.update(new_task(), expected=task)


def test_ended_among_reads_the_final_tasks_among_many_ids_at_once(backend: Backend) -> None:
    # The asyncio waiters' shared sweep: one call for every waited id.
    ended_among = getattr(backend.repository, "ended_among")  # noqa: B009 - optional method
    first, second, third = new_task(age=3), new_task(age=2), new_task(age=1)
    for task in (first, second, third):
        backend.repository.add(task)
    assert ended_among([first.id, second.id, third.id]) == []
    (lease,) = backend.queue.claim("w", lease_seconds=LEASE)
    assert lease.task.id == first.id  # the oldest
    backend.queue.complete(lease, lease.task.fail(TaskError("invalid_image", "nope"), utcnow()))
    backend.repository.update(third.cancel(utcnow()), expected=third)
    ids = [first.id, second.id, third.id, "no-such-task", first.id]
    found = {task.id: task for task in ended_among(ids)}
    assert set(found) == {first.id, third.id}
    assert found[first.id] == backend.repository.get(first.id)
    assert found[third.id].status == TaskStatus.CANCELLED
    many = [f"missing-{n}" for n in range(1200)] + [third.id]  # past one query's batch
    assert [task.id for task in ended_among(many)] == [third.id]


def test_update_back_to_queued_makes_it_claimable(backend: Backend) -> None:
    backend.repository.add(new_task())
    (lease,) = backend.queue.claim("w", lease_seconds=LEASE)
    dead = lease.task.die(TaskError("storage_error", "down"), utcnow())
    backend.queue.complete(lease, dead)
    assert backend.repository.update(dead.retry(utcnow()), expected=dead)
    (again,) = backend.queue.claim("w", lease_seconds=LEASE)
    assert again.task.attempts == 1


def test_wait_wakes_up_when_work_arrives(backend: Backend) -> None:
    assert_wait_wakes_when(backend, lambda: backend.repository.add(new_task()), 1)


def test_wait_returns_at_its_timeout(backend: Backend) -> None:
    started = time.monotonic()
    backend.queue.wait(0.1)
    # Polling backends may come back at their first poll (50 ms), the others at the timeout.
    assert 0.04 <= time.monotonic() - started < 2.0


def test_concurrent_claimers_never_share_a_task(backend: Backend) -> None:
    tasks = [new_task() for _ in range(300)]
    for task in tasks:
        backend.repository.add(task)
    claims: Counter[str] = Counter()
    lock = threading.Lock()

    def claimer(name: str) -> None:
        while leases := backend.queue.claim(name, lease_seconds=LEASE, limit=3):
            for lease in leases:
                with lock:
                    claims[lease.task.id] += 1
                backend.queue.complete(lease, lease.task.succeed((), utcnow()))

    threads = [threading.Thread(target=claimer, args=(f"w{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert claims == Counter({task.id: 1 for task in tasks})


def test_purge_deletes_only_finished_tasks_older_than_the_cutoff(backend: Backend) -> None:
    old_done, recent_done, running = new_task(), new_task(), new_task()
    for task in (old_done, recent_done, running):
        backend.repository.add(task)
    leases = {
        lease.task.id: lease for lease in backend.queue.claim("w", lease_seconds=LEASE, limit=3)
    }
    long_ago = utcnow() - timedelta(days=40)
    backend.queue.complete(leases[old_done.id], leases[old_done.id].task.succeed((), long_ago))
    backend.queue.complete(
        leases[recent_done.id], leases[recent_done.id].task.succeed((), utcnow())
    )

    cutoff = utcnow() - timedelta(days=30)
    assert [task.id for task in backend.repository.purge(cutoff)] == [old_done.id]
    assert backend.repository.purge(cutoff) == []
    with pytest.raises(TaskNotFound):
        backend.repository.get(old_done.id)
    assert backend.repository.get(recent_done.id).status == TaskStatus.SUCCEEDED
    assert backend.repository.get(running.id).status == TaskStatus.PROCESSING
    assert backend.repository.source_in_use(running.source_key)
    assert not backend.repository.source_in_use("originals/zz/nothing.jpg")


def test_find_lists_a_status_most_recently_changed_first(backend: Backend) -> None:
    tasks = [new_task() for _ in range(4)]
    backend.repository.add_many(tasks)
    leases = {
        lease.task.id: lease for lease in backend.queue.claim("w", lease_seconds=LEASE, limit=3)
    }
    error = TaskError("storage_error", "gone")
    moments = [utcnow() + timedelta(seconds=n) for n in range(3)]
    dead = []
    for lease, moment in zip(leases.values(), moments, strict=True):
        backend.queue.complete(lease, lease.task.die(error, moment))
        dead.append(lease.task.id)
    owned = attrs.evolve(new_task(), owner="alice")
    backend.repository.add(owned)

    found = backend.repository.find(TaskStatus.DEAD)
    assert [task.id for task in found] == dead[::-1]
    assert all(task.error == error for task in found)
    assert [t.id for t in backend.repository.find(TaskStatus.DEAD, limit=2)] == dead[:0:-1]
    queued = backend.repository.find(TaskStatus.QUEUED)
    assert {task.id for task in queued} == ({t.id for t in tasks} - set(dead)) | {owned.id}
    assert [t.id for t in backend.repository.find(TaskStatus.QUEUED, owner="alice")] == [owned.id]
    assert backend.repository.find(TaskStatus.FAILED) == []


def test_timestamps_come_back_timezone_aware_and_exact(backend: Backend) -> None:
    task = new_task()
    backend.repository.add(task)
    stored = backend.repository.get(task.id)
    assert stored == task
    assert stored.created_at.utcoffset() == timedelta(0)


def test_outputs_round_trip_with_every_field(backend: Backend) -> None:
    backend.repository.add(new_task())
    (lease,) = backend.queue.claim("w", lease_seconds=LEASE)
    outputs = (
        Output("thumb", "outputs/t/thumb.webp", "webp", 256, 171, 1764, "LKO2?U%2Tw=w", "#a0b0c0"),
        Output("large", "outputs/t/large.jpg", "jpeg", 1600, 1067, 48135),
    )
    done = lease.task.succeed(outputs, utcnow())
    backend.queue.complete(lease, done)
    assert backend.repository.get(done.id) == done


def test_queue_stats(backend: Backend) -> None:
    empty = backend.repository.queue_stats()
    assert (empty.queued, empty.processing, empty.oldest_due_at) == (0, 0, None)
    older, newer, later = new_task(age=60), new_task(age=5), new_task(due_in=3600)
    for task in (older, newer, later):
        backend.repository.add(task)
    stats = backend.repository.queue_stats()
    assert (stats.queued, stats.processing) == (3, 0)
    assert stats.oldest_due_at == older.available_at
    backend.queue.claim("w", lease_seconds=LEASE)
    stats = backend.repository.queue_stats()
    assert (stats.queued, stats.processing, stats.oldest_due_at) == (2, 1, newer.available_at)


def test_renew_many_renews_the_held_and_reports_the_lost(backend: Backend) -> None:
    for _ in range(3):
        backend.repository.add(new_task())
    first, second, third = backend.queue.claim("w", lease_seconds=SHORT, limit=3)
    backend.queue.complete(second, second.task.succeed((), utcnow()))
    renew_many = backend.queue.renew_many  # type: ignore[attr-defined]
    renewed = renew_many([first, second, third], lease_seconds=LEASE)
    assert [lease is None for lease in renewed] == [False, True, False]
    backend.clock.advance(SHORT + 0.05)  # past the old leases, well within the renewed ones
    assert backend.queue.claim("w2", lease_seconds=LEASE) == []
    assert renew_many([], lease_seconds=LEASE) == []


def test_record_many_tells_an_expired_lease_from_its_successor(backend: Backend) -> None:
    # Both leases name the same task: only the one still held may record, even in one batch.
    backend.repository.add(new_task())
    (stale,) = backend.queue.claim("crashed", lease_seconds=SHORT)
    backend.clock.advance(SHORT + 0.05)
    (fresh,) = backend.queue.claim("rescuer", lease_seconds=LEASE)
    failed = stale.task.fail(TaskError("invalid_image", "stale"), utcnow())
    succeeded = fresh.task.succeed((), utcnow())
    record_many = backend.queue.record_many  # type: ignore[attr-defined]
    assert record_many([(stale, failed), (fresh, succeeded)]) == [False, True]
    assert backend.repository.get(fresh.task.id).status == TaskStatus.SUCCEEDED


# -- metadata -------------------------------------------------------------------------------------

LABELS = {"user": "42", "n": 7, "ratio": 0.5, "flag": True, "none": None, "tags": ["a", {"b": 1}]}


def test_metadata_is_stored_and_read_back_as_given(backend: Backend) -> None:
    task = attrs.evolve(new_task(), metadata=LABELS)
    backend.repository.add(task)
    assert backend.repository.get(task.id).metadata == LABELS
    (lease,) = backend.queue.claim("w", lease_seconds=LEASE)
    assert lease.task.metadata == LABELS
    plain = new_task()
    backend.repository.add(plain)
    assert backend.repository.get(plain.id).metadata == {}


@pytest.mark.parametrize(
    ("wanted", "found"),
    [
        ({"user": "42"}, True),
        ({"user": 42}, False),  # a string is not a number
        ({"n": 7}, True),
        ({"n": 7.0}, True),  # JSON has one kind of number
        ({"n": "7"}, False),
        ({"flag": True}, True),
        ({"flag": 1}, False),  # true is not 1
        ({"n": True}, False),
        ({"none": None}, True),
        ({"missing": None}, False),  # absent is not null
        ({"ratio": 0.5, "user": "42"}, True),
        ({"ratio": 0.5, "user": "43"}, False),
    ],
)
def test_find_by_metadata_compares_as_json(
    backend: Backend, wanted: dict[str, object], found: bool
) -> None:
    labelled = attrs.evolve(new_task(), metadata=LABELS)
    other = attrs.evolve(new_task(), metadata={"user": "7"})
    backend.repository.add(labelled)
    backend.repository.add(other)
    backend.repository.add(new_task())
    result = backend.repository.find(TaskStatus.QUEUED, metadata=wanted)  # type: ignore[arg-type]
    assert [task.id for task in result] == ([labelled.id] if found else [])


def test_find_by_source_lists_one_originals_tasks_in_the_statuses_asked_newest_first(
    backend: Backend,
) -> None:
    older = attrs.evolve(new_task(age=10), source_key="originals/x/1.jpg")
    newer = attrs.evolve(new_task(age=5), source_key="originals/x/1.jpg")
    cancelled = attrs.evolve(new_task(age=1), source_key="originals/x/1.jpg").cancel(utcnow())
    elsewhere = attrs.evolve(new_task(), source_key="originals/x/2.jpg")
    for task in (older, newer, cancelled, elsewhere):
        backend.repository.add(task)
    found = backend.repository.find_by_source(  # type: ignore[attr-defined]
        "originals/x/1.jpg", [TaskStatus.QUEUED, TaskStatus.SUCCEEDED]
    )
    assert [task.id for task in found] == [newer.id, older.id]


def test_sources_in_use_answers_for_a_whole_batch(backend: Backend) -> None:
    queued = attrs.evolve(new_task(), source_key="originals/aa/queued.jpg")
    done = attrs.evolve(new_task(), source_key="originals/bb/done.jpg")
    backend.repository.add(done)
    [lease] = backend.queue.claim("w", lease_seconds=LEASE)
    backend.queue.complete(lease, lease.task.succeed((), utcnow()))
    backend.repository.add(queued)
    asked = [queued.source_key, done.source_key, "originals/cc/orphan.jpg", queued.source_key]

    assert isinstance(backend.repository, SourceUsage)
    assert backend.repository.sources_in_use(asked) == {queued.source_key, done.source_key}
    assert backend.repository.sources_in_use(["originals/cc/orphan.jpg"]) == set()
    assert backend.repository.sources_in_use([]) == set()


def test_progress_is_recorded_while_the_lease_is_held_and_reset_by_the_next_claim(
    backend: Backend,
) -> None:
    from imageproc import ProgressQueue

    queue = backend.queue
    assert isinstance(queue, ProgressQueue)
    three = Pipeline.parse("a=png;b=png;c=png")
    backend.repository.add(attrs.evolve(new_task(), pipeline=three))
    [lease] = queue.claim("w", lease_seconds=LEASE)
    assert queue.report_progress(lease, 2)
    seen = backend.repository.get(lease.task.id)
    assert seen.progress == (2, 3)
    assert (seen.status, seen.updated_at) == (TaskStatus.PROCESSING, lease.task.updated_at)
    backend.clock.advance(LEASE + 1)  # the lease runs out: the next claim takes the task over
    [again] = queue.claim("w2", lease_seconds=LEASE)
    assert again.task.variants_done == 0
    assert not queue.report_progress(lease, 3)  # the old lease is no longer held
    assert backend.repository.get(lease.task.id).variants_done == 0
    queue.complete(again, again.task.succeed((), backend.clock()))
    assert backend.repository.get(lease.task.id).variants_done == 0  # no outputs: none made
