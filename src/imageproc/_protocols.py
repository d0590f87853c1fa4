"""The three interfaces between imageproc and the outside world, and the values they pass.

* :class:`Storage` keeps bytes under keys (originals and outputs).
* :class:`Repository` keeps task records.
* :class:`Queue` hands queued tasks to workers, under leases.

A backend may implement Repository and Queue on one table (the SQL backend does), so that
recording a status and moving the task in the queue happen together. The queue is
*at-least-once*: a claimed task is invisible to other claimers until its lease expires; the holder
renews the lease while it works (a heartbeat), then completes the task or releases it with a delay;
a lease that expires makes the task claimable again, so a crashed worker loses nothing. Every
operation that records a result checks the lease token, so a worker whose lease was taken over
cannot overwrite the new holder's result. Claim order: higher ``priority`` first, then the earliest
``available_at``, then the oldest.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from typing import BinaryIO, Protocol, runtime_checkable

import attrs

from imageproc._idempotency import IdempotencyRecord
from imageproc._task import MetadataValue, Task, TaskStatus
from imageproc.delivery._outbox import Delivery, DeliveryStatus
from imageproc.errors import LeaseLost, QueueFull

__all__ = [
    "BatchQueue",
    "DeliveryStore",
    "IdempotencyStore",
    "Lease",
    "ListableStorage",
    "ObjectInfo",
    "ProgressQueue",
    "Queue",
    "QueueLimits",
    "QueueStats",
    "Repository",
    "SourceLookup",
    "SourceUsage",
    "Storage",
    "StoredObject",
    "TransactionalRepository",
    "check_admission",
    "lease_lost",
    "queue_full",
    "record_all",
    "renew_all",
    "renew_each",
]


@attrs.frozen
class Lease:
    """A worker's claim on one task, valid until ``expires_at`` unless renewed."""

    #: The task as claimed: status ``processing``, this attempt already counted.
    task: Task
    #: Unique to this claim; completing, renewing or releasing checks it.
    token: str
    #: Who holds the lease (for logs and inspection).
    worker: str
    expires_at: datetime


@attrs.frozen
class QueueStats:
    """How the queue stands, for metrics and back-pressure."""

    #: Tasks waiting to be claimed (due now or later).
    queued: int
    #: Tasks a worker holds.
    processing: int
    #: When the longest-waiting task that is due became due, or None if none is due.
    oldest_due_at: datetime | None


@attrs.frozen
class QueueLimits:
    """How many tasks may wait to be claimed: checked in the transaction that records a task
    (or queues one again by an explicit retry), and its place reserved there, so a burst of
    uploads cannot pass the limit however many arrive at once. Beyond it:
    :class:`~imageproc.QueueFull`. A task a worker gives back (a transient failure) is already
    counted and never refused."""

    #: Most tasks queued at once, all owners together; None: no limit.
    max_queued: int | None = None
    #: Most tasks one owner may have queued at once, so one owner filling the queue does not
    #: lock every other owner out; None: no limit. Tasks without an owner are not counted here.
    max_queued_per_owner: int | None = None

    def __attrs_post_init__(self) -> None:
        for name in ("max_queued", "max_queued_per_owner"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")

    @property
    def any(self) -> bool:
        """Whether any limit is set."""
        return self.max_queued is not None or self.max_queued_per_owner is not None


def queue_full(max_queued: int) -> QueueFull:
    """The refusal of a task that the whole queue has no room for."""
    # Not the count: how busy the service is is not every client's business.
    return QueueFull(f"the queue is full (a limit of {max_queued}); try again later")


def check_admission(
    queued: int, owner_queued: Mapping[str, int], adding: Sequence[Task], limits: QueueLimits
) -> None:
    """Raise :class:`~imageproc.QueueFull` if adding the queued ones of ``adding`` to
    ``queued`` tasks in all (``owner_queued`` by owner) would pass ``limits``. Backends call it
    with counts read in the transaction that records ``adding``."""
    new = [task for task in adding if task.status == TaskStatus.QUEUED]
    if limits.max_queued is not None and queued + len(new) > limits.max_queued:
        raise queue_full(limits.max_queued)
    if limits.max_queued_per_owner is not None:
        for owner in sorted({task.owner for task in new if task.owner is not None}):
            mine = sum(1 for task in new if task.owner == owner)
            if owner_queued.get(owner, 0) + mine > limits.max_queued_per_owner:
                raise QueueFull(
                    f"{owner_queued.get(owner, 0)} of this owner's tasks are waiting, the limit"
                    f" is {limits.max_queued_per_owner}; try again later"
                )


@attrs.frozen
class ObjectInfo:
    """What storage knows about one object."""

    key: str
    size: int
    content_type: str


@runtime_checkable
class Storage(Protocol):
    """Bytes under validated keys.

    Implementations map their own errors to :class:`~imageproc.StorageError` (transient or not)
    and :class:`~imageproc.ObjectNotFound`, and refuse unsafe keys with
    :class:`~imageproc.InvalidKey`: a key is ASCII letters, digits, ``.``, ``_`` and ``-`` in
    non-empty ``/``-separated segments, none starting with ``.``, at most 1,024 characters.
    """

    def put(self, key: str, data: bytes, *, content_type: str) -> ObjectInfo:
        """Store ``data`` under ``key``, replacing any object there; never leave half an object."""
        ...

    def get(self, key: str) -> bytes:
        """The whole object under ``key``."""
        ...

    def open(self, key: str) -> BinaryIO:
        """A readable binary stream of the object under ``key``; the caller closes it."""
        ...

    def stat(self, key: str) -> ObjectInfo:
        """Size and content type of the object under ``key``."""
        ...

    def exists(self, key: str) -> bool:
        """Whether an object is stored under ``key``."""
        ...

    def delete(self, key: str) -> None:
        """Remove the object under ``key``; a missing object is not an error."""
        ...

    def url(self, key: str, *, expires: timedelta) -> str | None:
        """A URL that fetches the object directly until ``expires`` passes, or None if the
        backend cannot give one."""
        ...


@attrs.frozen
class StoredObject:
    """One object as a storage's listing finds it."""

    #: The key it was put under.
    key: str
    #: Its size in bytes.
    size: int
    #: When it was last written, timezone-aware.
    modified: datetime


@runtime_checkable
class ListableStorage(Storage, Protocol):
    """A :class:`Storage` that can also list what it holds. Optional: :meth:`Processor.purge
    <imageproc.Processor.purge>` needs it to find originals that no task refers to (the memory
    and fsspec storages have it); with a storage that lacks it that sweep is skipped."""

    def list_objects(self, prefix: str) -> Iterator[StoredObject]:
        """Every object whose key starts with ``prefix``, in no particular order: ``prefix`` is
        ``""`` (everything) or a folder, key segments ending in ``/`` (``"originals/"``);
        anything else is :class:`~imageproc.InvalidKey`. Keys are the keys :meth:`put` took;
        an object written while the listing runs may or may not be in it."""
        ...


@runtime_checkable
class Repository(Protocol):
    """Task records. Every method may raise :class:`~imageproc.BackendUnavailable`."""

    def add(self, task: Task, *, limits: QueueLimits | None = None) -> None:
        """Record a new task. A ``queued`` task becomes claimable from the queue at once.
        With ``limits``, :class:`~imageproc.QueueFull` (and nothing recorded) if it would pass
        them, checked atomically with the insert."""
        ...

    def add_many(self, tasks: Sequence[Task], *, limits: QueueLimits | None = None) -> None:
        """Record several new tasks at once, all or none (one transaction where there are
        transactions): a ``ValueError`` if any id is already recorded or given twice, and then
        nothing is recorded. The ``queued`` ones become claimable at once, as with :meth:`add`.
        With ``limits``, :class:`~imageproc.QueueFull` if they would not all fit.
        """
        ...

    def get(self, task_id: str) -> Task:
        """The task with this id, or :class:`~imageproc.TaskNotFound`."""
        ...

    def update(self, task: Task, *, expected: Task, limits: QueueLimits | None = None) -> bool:
        """Replace the record of ``task.id`` if it is still as ``expected`` says (the same status
        and ``updated_at``): a compare-and-set. With ``limits``, a change to ``queued`` that
        would pass them is refused with :class:`~imageproc.QueueFull`.

        Returns False (and changes nothing) if the task has moved on meanwhile. Any lease on the
        task is dropped, so its holder can no longer record a result. Used for changes made outside
        a lease: cancel and retry. Raises :class:`~imageproc.TaskNotFound`.
        """
        ...

    def purge(self, before: datetime, *, limit: int = 500) -> list[Task]:
        """Delete up to ``limit`` tasks in a final status that finished before ``before``, oldest
        first, and return them (so their stored files can be deleted too)."""
        ...

    def source_in_use(self, source_key: str) -> bool:
        """Whether any task still refers to the original stored under ``source_key``."""
        ...

    def find(
        self,
        status: TaskStatus,
        *,
        owner: str | None = None,
        metadata: Mapping[str, MetadataValue] | None = None,
        limit: int = 100,
    ) -> list[Task]:
        """Up to ``limit`` tasks in ``status`` (of ``owner`` only, if given, and whose metadata
        has every key of ``metadata`` with that value, if given), the most recently changed
        first: the dead-letter set is ``find(TaskStatus.DEAD)``. A repository written before
        metadata may leave that argument out: it is passed only when a caller filters by it."""
        ...

    def queue_stats(self) -> QueueStats:
        """How many tasks are queued and processing, and how long the oldest due one waits."""
        ...


@runtime_checkable
class SourceUsage(Repository, Protocol):
    """A :class:`Repository` that can tell of many originals at once which are still in use.
    Optional: purge's sweep of unreferenced originals asks in batches when a repository has it
    (the memory and SQL ones do), and :meth:`Repository.source_in_use` key by key when not."""

    def sources_in_use(self, keys: Collection[str]) -> set[str]:
        """Those of ``keys`` that some task (in any status) still refers to as its original."""
        ...


@runtime_checkable
class Queue(Protocol):
    """Claimable tasks under leases; any method may raise :class:`~imageproc.BackendUnavailable`."""

    def claim(self, worker: str, *, lease_seconds: float, limit: int = 1) -> list[Lease]:
        """Lease up to ``limit`` claimable tasks, in claim order, and mark them ``processing``.

        Claimable: ``queued`` and due, or ``processing`` under a lease that has expired.
        """
        ...

    def renew(self, lease: Lease, *, lease_seconds: float) -> Lease:
        """Extend ``lease`` by ``lease_seconds`` from now; :class:`~imageproc.LeaseLost` if it is
        no longer held."""
        ...

    def complete(self, lease: Lease, task: Task) -> None:
        """Record ``task`` (in a final status) and end the lease; :class:`~imageproc.LeaseLost` if
        it is no longer held, in which case nothing is recorded."""
        ...

    def release(self, lease: Lease, task: Task) -> None:
        """Record ``task`` (``queued``, due at its ``available_at``) and end the lease;
        :class:`~imageproc.LeaseLost` if it is no longer held."""
        ...

    def wait(self, timeout: float) -> None:
        """Block until a task may have become claimable, or ``timeout`` seconds pass."""
        ...


@runtime_checkable
class BatchQueue(Queue, Protocol):
    """A :class:`Queue` that also renews and records many leases in one call. Optional: the
    worker pool uses these when a queue has them (the memory and SQL backends do), and
    :meth:`Queue.renew`, :meth:`Queue.complete` and :meth:`Queue.release` one by one when not.
    """

    def renew_many(self, leases: Sequence[Lease], *, lease_seconds: float) -> list[Lease | None]:
        """Renew several leases at once (one statement where there are statements): for each,
        in order, the renewed lease, or None if it is no longer held. A worker pool's
        heartbeat renews every lease it holds with one call."""
        ...

    def record_many(self, results: Sequence[tuple[Lease, Task]]) -> list[bool]:
        """Record several outcomes at once, each ``(lease, task)`` as :meth:`complete` (a final
        ``task``) or :meth:`release` (``task`` queued again) would, in one transaction where
        there are transactions; each is written only while *its* lease (the task and the
        lease's token) is held. Returns, for each, whether it was recorded. Workers record the
        outcomes that are ready together with one call."""
        ...


@runtime_checkable
class SourceLookup(Repository, Protocol):
    """A :class:`Repository` that can also find the tasks made from one original. Optional:
    ``submit(…, dedupe=True)`` needs it (the memory and SQL backends have it)."""

    def find_by_source(
        self, source_key: str, statuses: Collection[TaskStatus], *, limit: int = 20
    ) -> list[Task]:
        """Up to ``limit`` tasks in one of ``statuses`` whose original is stored under
        ``source_key``, the newest first."""
        ...


@runtime_checkable
class IdempotencyStore(Repository, Protocol):
    """A :class:`Repository` that also remembers idempotency keys. Optional:
    ``submit(…, idempotency_key=…)`` needs it (the memory and SQL backends have it)."""

    def find_key(self, scope: str, key: str, *, now: datetime) -> IdempotencyRecord | None:
        """The record of ``key`` in ``scope``, if it is still remembered at ``now``."""
        ...

    def add_keyed(
        self, record: IdempotencyRecord, task: Task | None, *, limits: QueueLimits | None = None
    ) -> IdempotencyRecord:
        """Remember ``record`` and record ``task`` (if given, as :meth:`Repository.add` would)
        together, all or nothing, and return ``record``; but if its key is already remembered
        in its scope (and still live at ``record.created_at``), record nothing and return the
        record already there. Two calls at once with one key: exactly one records its task, the
        other gets the winner's record (waiting for the winner's transaction if need be)."""
        ...

    def purge_keys(self, now: datetime, *, limit: int = 500) -> int:
        """Forget up to ``limit`` keys that have expired at ``now``; how many were."""
        ...


@runtime_checkable
class ProgressQueue(Queue, Protocol):
    """A :class:`Queue` that records how far a leased task has come. Optional: without it,
    a task's progress shows only once it ends (the memory and SQL queues have it)."""

    def report_progress(self, lease: Lease, variants_done: int) -> bool:
        """Record that ``variants_done`` of the leased task's variants are made, if the lease
        is still held (whether it was); its status and ``updated_at`` stay as they are."""
        ...


@runtime_checkable
class DeliveryStore(Repository, Protocol):
    """A :class:`Repository` that keeps the webhook outbox. Optional: ``callback_url`` needs it
    (the memory and SQL backends have it).

    The repository itself writes a :class:`~imageproc.Delivery` whenever it records a final
    status for a task with a callback URL, in the same transaction;
    these methods are how senders and operators work through them.
    """

    def claim_deliveries(self, now: datetime, *, limit: int, hold: timedelta) -> list[Delivery]:
        """Take up to ``limit`` pending deliveries due at ``now``, earliest first, each counted
        as one more try and held for ``hold`` (no other sender takes it meanwhile; if this one
        dies, it is due again once the hold runs out)."""
        ...

    def settle_delivery(self, delivery: Delivery) -> bool:
        """Record how a try went (``delivery`` as :meth:`Delivery.succeeded` or
        :meth:`Delivery.failed` made it), if the delivery is still held by that try (its
        ``attempts`` and ``last_attempt_at`` unchanged); whether it was."""
        ...

    def deliveries(
        self,
        status: DeliveryStatus,
        *,
        owner: str | None = None,
        task_id: str | None = None,
        limit: int = 100,
    ) -> list[Delivery]:
        """Deliveries in ``status`` (of ``owner``, of ``task_id``), the most recent first."""
        ...

    def resend_deliveries(
        self, ids: Collection[str] | None, *, now: datetime, owner: str | None = None
    ) -> int:
        """Make the dead deliveries among ``ids`` (every dead one if None; only ``owner``'s if
        given) due again now with a fresh schedule; how many were."""
        ...

    def next_delivery_at(self) -> datetime | None:
        """When the earliest pending delivery is due (or its hold runs out); None if none."""
        ...

    def purge_deliveries(self, before: datetime, *, limit: int = 500) -> int:
        """Forget up to ``limit`` delivered or dead deliveries written before ``before``."""
        ...


@runtime_checkable
class TransactionalRepository(Repository, Protocol):
    """A :class:`Repository` that can write a task in the application's own database
    transaction. Optional: ``submit(…, connection=…)`` needs it (the SQL backend has it)."""

    def check_connection(self, connection: object) -> None:
        """Refuse (:class:`~imageproc.ConfigurationError`) a ``connection`` that is not one
        to the database holding this repository's tasks, or not of a kind it can write in."""
        ...

    def add_in(
        self,
        connection: object,
        task: Task | None,
        *,
        record: IdempotencyRecord | None = None,
        limits: QueueLimits | None = None,
    ) -> IdempotencyRecord | None:
        """Write ``task`` (if given) in ``connection``'s transaction (one
        :meth:`check_connection` accepted), as :meth:`Repository.add` would, and with
        ``record`` as :meth:`IdempotencyStore.add_keyed` would (returning the record kept:
        another one if the key is remembered already, and then nothing is written); the task
        is claimable only once the application commits, and a rollback leaves none. Returns
        ``record`` (None without one)."""
        ...

    def get_in(self, connection: object, task_id: str) -> Task:
        """The task with this id as ``connection``'s transaction sees it (its own writes
        included), or :class:`~imageproc.TaskNotFound`."""
        ...


def lease_lost(lease: Lease) -> LeaseLost:
    """The error for ``lease`` no longer being held (its task was taken over or ended)."""
    return LeaseLost(f"lease on task {lease.task.id} is no longer held by {lease.worker}")


def renew_all(queue: Queue, leases: Sequence[Lease], *, lease_seconds: float) -> list[Lease | None]:
    """Renew ``leases`` through ``queue``: in one call if it is a :class:`BatchQueue`, else one
    by one. For each lease, the renewed one or None if it is no longer held."""
    if isinstance(queue, BatchQueue):
        return queue.renew_many(leases, lease_seconds=lease_seconds)
    return renew_each(queue, leases, lease_seconds=lease_seconds)


def renew_each(
    queue: Queue, leases: Sequence[Lease], *, lease_seconds: float
) -> list[Lease | None]:
    """Renew ``leases`` one :meth:`Queue.renew` at a time: for each, the renewed lease or None
    if it is no longer held (a queue with nothing better to do in ``renew_many`` uses this)."""
    renewed: list[Lease | None] = []
    for lease in leases:
        try:
            renewed.append(queue.renew(lease, lease_seconds=lease_seconds))
        except LeaseLost:
            renewed.append(None)
    return renewed


def record_all(queue: Queue, results: Sequence[tuple[Lease, Task]]) -> list[bool]:
    """Record ``results`` through ``queue``: in one call if it is a :class:`BatchQueue`, else
    with :meth:`Queue.complete` or :meth:`Queue.release` each. For each, whether it was
    recorded (False: its lease was no longer held)."""
    if isinstance(queue, BatchQueue):
        return queue.record_many(results)
    recorded: list[bool] = []
    for lease, task in results:
        try:
            (queue.complete if task.status.is_final else queue.release)(lease, task)
        except LeaseLost:
            recorded.append(False)
        else:
            recorded.append(True)
    return recorded
