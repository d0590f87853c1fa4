"""The webhook outbox (DeliveryStore), run against every implementation: a delivery exists
exactly when a final status of a task with a callback URL was recorded, and senders work
through deliveries with holds, guarded results, resending and purging."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import attrs
import pytest
import sqlalchemy as sa

from imageproc import (
    BatchQueue,
    DeliveryStatus,
    DeliveryStore,
    Lease,
    Output,
    Task,
    TaskError,
    TaskStatus,
)
from tests.support.backends import Backend
from tests.support.databases import make_backend
from tests.support.doubles import new_task

LEASE = 30.0
HOOK = "https://hooks.example.com/imageproc"
HOLD = timedelta(seconds=45)


def outbox(backend: Backend) -> DeliveryStore:
    assert isinstance(backend.repository, DeliveryStore)
    return backend.repository


def batch(backend: Backend) -> BatchQueue:
    assert isinstance(backend.queue, BatchQueue)
    return backend.queue


def claimed_with_hook(backend: Backend, count: int = 1) -> list[Lease]:
    tasks = [attrs.evolve(new_task(), callback_url=HOOK) for _ in range(count)]
    backend.repository.add_many(tasks)
    return backend.queue.claim("w", lease_seconds=LEASE, limit=count)


def succeeded(lease: Lease) -> Task:
    output = Output("thumb", "outputs/x/thumb.jpg", "JPEG", 8, 8, 100)
    return lease.task.succeed((output,), lease.task.updated_at + timedelta(seconds=1))


def test_recording_a_final_status_writes_its_delivery_with_the_status_json(
    backend: Backend,
) -> None:
    [lease] = claimed_with_hook(backend)
    done = succeeded(lease)
    backend.queue.complete(lease, done)
    [delivery] = outbox(backend).claim_deliveries(backend.clock(), limit=10, hold=HOLD)
    assert delivery.task_id == lease.task.id
    assert delivery.url == HOOK
    assert delivery.id.startswith("msg_")
    assert delivery.attempts == 1
    body = json.loads(delivery.payload)
    assert body["id"] == lease.task.id
    assert body["status"] == "succeeded"
    assert body["outputs"][0]["key"] == "outputs/x/thumb.jpg"


def test_a_batch_record_writes_one_delivery_per_ended_task_with_a_hook(
    backend: Backend,
) -> None:
    leases = claimed_with_hook(backend, 3)
    plain = new_task()
    backend.repository.add(plain)
    [plain_lease] = backend.queue.claim("w", lease_seconds=LEASE)
    now = backend.clock()
    results = [
        (leases[0], succeeded(leases[0])),
        (leases[1], leases[1].task.fail(TaskError("invalid_image", "no"), now)),
        (leases[2], leases[2].task.requeue(now, delay=timedelta(seconds=5))),  # not final
        (plain_lease, succeeded(plain_lease)),  # no hook
    ]
    assert batch(backend).record_many(results) == [True, True, True, True]
    taken = outbox(backend).claim_deliveries(backend.clock(), limit=10, hold=HOLD)
    assert sorted(d.task_id for d in taken) == sorted([leases[0].task.id, leases[1].task.id])
    statuses = {d.task_id: json.loads(d.payload)["status"] for d in taken}
    assert statuses[leases[1].task.id] == "failed"


def test_a_result_whose_lease_was_lost_writes_no_delivery(backend: Backend) -> None:
    [lease] = claimed_with_hook(backend)
    backend.clock.advance(LEASE + 1)
    [again] = backend.queue.claim("w2", lease_seconds=LEASE)  # the lease expired: taken over
    assert again.task.id == lease.task.id
    assert batch(backend).record_many([(lease, succeeded(lease))]) == [False]
    assert outbox(backend).claim_deliveries(backend.clock(), limit=10, hold=HOLD) == []
    assert outbox(backend).next_delivery_at() is None


def test_cancelling_a_task_with_a_hook_writes_its_delivery(backend: Backend) -> None:
    task = attrs.evolve(new_task(), callback_url=HOOK)
    backend.repository.add(task)
    cancelled = task.cancel(backend.clock())
    assert backend.repository.update(cancelled, expected=task)
    [delivery] = outbox(backend).claim_deliveries(backend.clock(), limit=10, hold=HOLD)
    assert json.loads(delivery.payload)["status"] == "cancelled"


def test_a_taken_delivery_is_held_then_due_again_if_its_sender_vanished(
    backend: Backend,
) -> None:
    [lease] = claimed_with_hook(backend)
    backend.queue.complete(lease, succeeded(lease))
    store = outbox(backend)
    [first] = store.claim_deliveries(backend.clock(), limit=10, hold=HOLD)
    assert store.claim_deliveries(backend.clock(), limit=10, hold=HOLD) == []  # held
    assert store.next_delivery_at() == first.next_attempt_at
    backend.clock.advance(HOLD.total_seconds() + 1)
    [second] = store.claim_deliveries(backend.clock(), limit=10, hold=HOLD)
    assert (second.id, second.attempts) == (first.id, 2)
    # The vanished sender's late result is not recorded over the newer try's.
    late = first.succeeded(backend.clock(), 200)
    assert not store.settle_delivery(late)
    assert store.settle_delivery(second.succeeded(backend.clock(), 204))
    [done] = store.deliveries(DeliveryStatus.DELIVERED)
    assert (done.id, done.last_status_code, done.attempts) == (first.id, 204, 2)
    assert store.next_delivery_at() is None


def test_a_failed_try_is_due_again_at_its_retry_time_then_dead_then_resent(
    backend: Backend,
) -> None:
    [lease] = claimed_with_hook(backend)
    backend.queue.complete(lease, succeeded(lease))
    store = outbox(backend)
    [taken] = store.claim_deliveries(backend.clock(), limit=10, hold=HOLD)
    retry_at = backend.clock() + timedelta(seconds=60)
    assert store.settle_delivery(taken.failed("answered 500", status_code=500, retry_at=retry_at))
    assert store.next_delivery_at() == retry_at
    assert store.claim_deliveries(backend.clock(), limit=10, hold=HOLD) == []
    backend.clock.advance(61)
    [again] = store.claim_deliveries(backend.clock(), limit=10, hold=HOLD)
    assert again.last_error == "answered 500"
    assert store.settle_delivery(again.failed("answered 503", status_code=503, retry_at=None))
    [dead] = store.deliveries(DeliveryStatus.DEAD)
    assert (dead.id, dead.attempts, dead.last_status_code) == (taken.id, 2, 503)
    assert store.deliveries(DeliveryStatus.DEAD, owner="someone-else") == []
    assert store.deliveries(DeliveryStatus.DEAD, task_id=lease.task.id) == [dead]
    assert store.next_delivery_at() is None
    assert store.resend_deliveries(["no-such-delivery"], now=backend.clock()) == 0
    assert store.resend_deliveries([taken.id], now=backend.clock()) == 1
    [resent] = store.claim_deliveries(backend.clock(), limit=10, hold=HOLD)
    assert (resent.id, resent.attempts, resent.payload) == (taken.id, 1, taken.payload)
    assert store.deliveries(DeliveryStatus.DEAD) == []


def test_purge_forgets_old_settled_deliveries_and_keeps_pending_ones(backend: Backend) -> None:
    leases = claimed_with_hook(backend, 2)
    for lease in leases:
        backend.queue.complete(lease, succeeded(lease))
    store = outbox(backend)
    [settled] = store.claim_deliveries(backend.clock(), limit=1, hold=HOLD)
    assert store.settle_delivery(settled.succeeded(backend.clock(), 200))
    backend.clock.advance(10)
    assert store.purge_deliveries(backend.clock(), limit=500) == 1
    assert store.deliveries(DeliveryStatus.DELIVERED) == []
    [pending] = store.deliveries(DeliveryStatus.PENDING)
    assert pending.id != settled.id


def test_tasks_without_a_hook_write_nothing(backend: Backend) -> None:
    backend.repository.add(new_task())
    [lease] = backend.queue.claim("w", lease_seconds=LEASE)
    backend.queue.complete(lease, succeeded(lease))
    assert outbox(backend).next_delivery_at() is None


def test_a_task_buried_by_a_claim_gets_its_delivery(backend: Backend) -> None:
    # Its last attempt's lease ran out (the worker died): the next claim makes it dead.
    task = attrs.evolve(new_task(), callback_url=HOOK, max_attempts=1)
    backend.repository.add(task)
    [lease] = backend.queue.claim("w", lease_seconds=LEASE)
    backend.clock.advance(LEASE + 1)
    assert backend.queue.claim("w2", lease_seconds=LEASE) == []
    assert backend.repository.get(task.id).status == TaskStatus.DEAD
    [delivery] = outbox(backend).claim_deliveries(backend.clock(), limit=10, hold=HOLD)
    assert (delivery.task_id, json.loads(delivery.payload)["status"]) == (task.id, "dead")
    assert lease.task.id == task.id


def test_a_batch_with_a_lost_lease_writes_only_the_held_tasks_deliveries(
    backend: Backend,
) -> None:
    lost, held = claimed_with_hook(backend, 2)
    backend.repository.update(  # cancelled meanwhile: its lease is gone, and so is lost's result
        lost.task.cancel(backend.clock()), expected=lost.task
    )
    assert batch(backend).record_many([(lost, succeeded(lost)), (held, succeeded(held))]) == [
        False,
        True,
    ]
    taken = outbox(backend).claim_deliveries(backend.clock(), limit=10, hold=HOLD)
    statuses = sorted((d.task_id == held.task.id, json.loads(d.payload)["status"]) for d in taken)
    # The held task's success, and the cancellation of the other (written by the cancel).
    assert statuses == [(False, "cancelled"), (True, "succeeded")]


def test_a_try_from_before_a_resend_cannot_settle_the_resent_delivery(backend: Backend) -> None:
    [lease] = claimed_with_hook(backend)
    backend.queue.complete(lease, succeeded(lease))
    store = outbox(backend)
    [stale] = store.claim_deliveries(backend.clock(), limit=1, hold=HOLD)  # hangs, then...
    backend.clock.advance(HOLD.total_seconds() + 1)
    [second] = store.claim_deliveries(backend.clock(), limit=1, hold=HOLD)
    assert store.settle_delivery(second.failed("answered 500", status_code=500, retry_at=None))
    backend.clock.advance(1)
    assert store.resend_deliveries(None, now=backend.clock()) == 1
    [fresh] = store.claim_deliveries(backend.clock(), limit=1, hold=HOLD)
    assert fresh.attempts == stale.attempts == 1  # the same count, a different try
    assert not store.settle_delivery(stale.succeeded(backend.clock(), 200))
    assert store.settle_delivery(fresh.succeeded(backend.clock(), 204))


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_a_delivery_the_database_refuses_rolls_its_status_back_too(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    # One transaction (on PostgreSQL one statement): if the outbox row cannot be written, the
    # final status is not either, so no status is ever recorded without its webhook.
    from imageproc.backends.sql import _queueing, _statements
    from imageproc.backends.sql._deliveries import delivery_rows

    def refused(tasks: Any, now: Any) -> list[dict[str, Any]]:
        return [{**row, "status": "bogus"} for row in delivery_rows(tasks, now)]  # CHECK fails

    monkeypatch.setattr(_queueing, "delivery_rows", refused)
    monkeypatch.setattr(_statements, "delivery_rows", refused)
    sql = make_backend(kind, request)
    sql.add(attrs.evolve(new_task(), callback_url=HOOK))
    [lease] = sql.claim("w", lease_seconds=LEASE)
    with pytest.raises(sa.exc.IntegrityError):  # a bug's error: not mapped, not retried
        sql.record_many([(lease, succeeded(lease))])
    assert sql.get(lease.task.id).status == TaskStatus.PROCESSING
    assert sql.next_delivery_at() is None


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_a_final_status_without_its_delivery_gets_one_from_the_repair_once(
    request: pytest.FixtureRequest, kind: str
) -> None:
    # As a claim's burial leaves it on PostgreSQL if its claimer dies before the second
    # transaction: the status recorded, no delivery.
    sql = make_backend(kind, request)
    task = attrs.evolve(new_task(), callback_url=HOOK)
    sql.add(task)
    finished = sql.clock() - timedelta(minutes=2)
    with sql.engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE imageproc_tasks SET status = 'dead', finished_at = :at, updated_at = :at"
                " WHERE id = :id"
            ),
            {"at": finished.replace(tzinfo=None) if kind == "sqlite" else finished, "id": task.id},
        )
    assert sql.next_delivery_at() is None
    now = sql.clock()
    since, until = now - timedelta(hours=1), now - timedelta(minutes=1)
    assert sql.repair_deliveries(since, until) == 1
    assert sql.repair_deliveries(since, until) == 0  # written once, whoever repairs again
    [delivery] = sql.claim_deliveries(sql.clock(), limit=10, hold=HOLD)
    assert (delivery.task_id, json.loads(delivery.payload)["status"]) == (task.id, "dead")
    # A task that has its delivery is left alone.
    assert sql.repair_deliveries(now - timedelta(days=1), now) == 0
