"""In-memory backends: no dependencies, thread-safe, gone when the process ends.

:class:`MemoryRepository` is the table of tasks; :class:`MemoryQueue` is the queue view of that
same table, as the SQL backend's queue is the same table as its repository. Build them together::

    repository = MemoryRepository()
    queue = MemoryQueue(repository)

Claims do not scan: queued tasks sit in a heap in claim order, delayed ones in a heap by due time,
and leases in a heap by expiry. Heap entries are checked against the row on the way out, so a
stale entry (the task moved on since) is simply dropped.
"""

from __future__ import annotations

import heapq
import io
import secrets
import threading
from collections import Counter
from collections.abc import Collection, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from typing import BinaryIO

import attrs

from imageproc._clock import Clock, utcnow
from imageproc._idempotency import IdempotencyRecord
from imageproc._keys import validate_key, validate_prefix
from imageproc._protocols import (
    Lease,
    ObjectInfo,
    QueueLimits,
    QueueStats,
    StoredObject,
    check_admission,
    lease_lost,
    renew_each,
)
from imageproc._task import LEASE_EXPIRED, MetadataValue, Task, TaskStatus, matches_metadata
from imageproc.backends._memoryoutbox import MemoryOutbox
from imageproc.delivery._completions import Completions
from imageproc.delivery._outbox import Delivery, delivery_for
from imageproc.errors import LeaseLost, ObjectNotFound, TaskNotFound

__all__ = ["MemoryQueue", "MemoryRepository", "MemoryStorage"]


class MemoryStorage:
    """A :class:`~imageproc.Storage` in a dict (a :class:`~imageproc.ListableStorage`: it lists
    what it holds, each object as last written by ``clock``'s time)."""

    def __init__(self, *, clock: Clock = utcnow) -> None:
        self._objects: dict[str, tuple[bytes, str]] = {}
        self._lock = threading.Lock()
        #: Where the times objects were written come from (timezone-aware UTC).
        self.clock = clock
        self._written: dict[str, datetime] = {}

    def put(self, key: str, data: bytes, *, content_type: str) -> ObjectInfo:
        """Store ``data`` under ``key``."""
        validate_key(key)
        data = bytes(data)
        with self._lock:
            self._objects[key] = (data, content_type)
            self._written[key] = self.clock()
        return ObjectInfo(key, len(data), content_type)

    def _lookup(self, key: str) -> tuple[bytes, str]:
        validate_key(key)
        with self._lock:
            try:
                return self._objects[key]
            except KeyError:
                raise ObjectNotFound(f"no object under key {key!r}") from None

    def get(self, key: str) -> bytes:
        """The object under ``key``."""
        return self._lookup(key)[0]

    def open(self, key: str) -> BinaryIO:
        """A stream over the object under ``key``."""
        return io.BytesIO(self._lookup(key)[0])

    def stat(self, key: str) -> ObjectInfo:
        """Size and content type of the object under ``key``."""
        data, content_type = self._lookup(key)
        return ObjectInfo(key, len(data), content_type)

    def exists(self, key: str) -> bool:
        """Whether ``key`` holds an object."""
        validate_key(key)
        with self._lock:
            return key in self._objects

    def delete(self, key: str) -> None:
        """Remove the object under ``key``, if any."""
        validate_key(key)
        with self._lock:
            self._objects.pop(key, None)
            self._written.pop(key, None)

    def url(self, key: str, *, expires: timedelta) -> str | None:
        """Memory has no URLs: always None."""
        validate_key(key)
        return None

    def keys(self) -> list[str]:
        """Every stored key, sorted (for tests and inspection)."""
        with self._lock:
            return sorted(self._objects)

    def list_objects(self, prefix: str) -> Iterator[StoredObject]:
        """The objects whose keys start with ``prefix`` (``""`` or a folder such as
        ``originals/``), by key, as they were when called."""
        validate_prefix(prefix)
        with self._lock:
            found = [
                StoredObject(key, len(data), self._written[key])
                for key, (data, _) in self._objects.items()
                if key.startswith(prefix)
            ]
        return iter(sorted(found, key=lambda stored: stored.key))


@attrs.define
class _Row:
    task: Task
    #: Bumped on every write; heap entries carry the version they were pushed at.
    version: int = 0
    lease_token: str | None = None
    lease_expires: datetime | None = None


class MemoryRepository(MemoryOutbox):
    """A :class:`~imageproc.Repository` in a dict; pair it with a :class:`MemoryQueue`."""

    def __init__(self, *, clock: Clock = utcnow) -> None:
        self.clock = clock
        #: Told of every task that ends (everything happens in this process, so all is pushed).
        self.completions = Completions()
        self._rows: dict[str, _Row] = {}
        # One condition guards the whole table and wakes waiting workers when work appears.
        self._changed = threading.Condition(threading.Lock())
        self._ready: list[tuple[int, datetime, datetime, str, int]] = []
        self._delayed: list[tuple[datetime, str, int]] = []
        self._leases: list[tuple[datetime, str, str]] = []
        self._keys: dict[tuple[str, str], IdempotencyRecord] = {}
        self._deliveries: dict[str, Delivery] = {}

    def add(self, task: Task, *, limits: QueueLimits | None = None) -> None:
        """Record a new task; a queued one is claimable at once. :class:`~imageproc.QueueFull`
        if it would pass ``limits``."""
        with self._changed:
            self._add(task, limits)

    def _add(self, task: Task, limits: QueueLimits | None) -> None:
        # Under the table's lock.
        if task.id in self._rows:
            raise ValueError(f"task {task.id} already exists")
        self._admit([task], limits)
        row = _Row(task)
        self._rows[task.id] = row
        self._enqueue(row)

    def add_many(self, tasks: Sequence[Task], *, limits: QueueLimits | None = None) -> None:
        """Record new tasks, all or none; the queued ones are claimable at once.
        :class:`~imageproc.QueueFull` if they would not all fit in ``limits``."""
        ids = [task.id for task in tasks]
        with self._changed:
            taken = next((i for i in ids if i in self._rows), None)
            if taken is None and len(set(ids)) != len(ids):
                taken = next(i for i in ids if ids.count(i) > 1)
            if taken is not None:
                raise ValueError(f"task {taken} already exists")
            self._admit(tasks, limits)
            for task in tasks:
                row = _Row(task)
                self._rows[task.id] = row
                self._enqueue(row)

    def get(self, task_id: str) -> Task:
        """The task with this id."""
        with self._changed:
            return self._row(task_id).task

    def ended_among(self, task_ids: Collection[str]) -> list[Task]:
        """The tasks among ``task_ids`` that are in a final status (unknown ids left out)."""
        with self._changed:
            rows = (self._rows.get(task_id) for task_id in dict.fromkeys(task_ids))
            return [row.task for row in rows if row is not None and row.task.status.is_final]

    def update(self, task: Task, *, expected: Task, limits: QueueLimits | None = None) -> bool:
        """Replace the task if it is still ``expected``; drops any lease. A change to queued
        that would pass ``limits`` is :class:`~imageproc.QueueFull`."""
        with self._changed:
            row = self._row(task.id)
            if (row.task.status, row.task.updated_at) != (expected.status, expected.updated_at):
                return False
            if row.task.status != TaskStatus.QUEUED:
                self._admit([task], limits)
            self._write(row, task)
            return True

    def _admit(self, tasks: Sequence[Task], limits: QueueLimits | None) -> None:
        # Under the table's lock: counted and recorded in one step.
        if limits is None or not limits.any:
            return
        queued = [row.task for row in self._rows.values() if row.task.status == TaskStatus.QUEUED]
        owners = Counter(task.owner for task in queued if task.owner is not None)
        check_admission(len(queued), owners, tasks, limits)

    def purge(self, before: datetime, *, limit: int = 500) -> list[Task]:
        """Delete up to ``limit`` finished tasks that finished before ``before``; return them."""
        with self._changed:
            old = sorted(
                (row.task for row in self._rows.values() if _finished_before(row.task, before)),
                key=lambda task: (task.finished_at, task.id),
            )[:limit]
            for task in old:
                del self._rows[task.id]
            return old

    def source_in_use(self, source_key: str) -> bool:
        """Whether any task refers to the original under ``source_key``."""
        with self._changed:
            return any(row.task.source_key == source_key for row in self._rows.values())

    def find_key(self, scope: str, key: str, *, now: datetime) -> IdempotencyRecord | None:
        """The record of ``key`` in ``scope``, if it is still remembered at ``now``."""
        with self._changed:
            record = self._keys.get((scope, key))
        return record if record is not None and record.live(now) else None

    def add_keyed(
        self, record: IdempotencyRecord, task: Task | None, *, limits: QueueLimits | None = None
    ) -> IdempotencyRecord:
        """Remember ``record`` and record ``task`` together, unless the key is already
        remembered: then that record, and nothing recorded."""
        with self._changed:
            known = self._keys.get((record.scope, record.key))
            if known is not None and known.live(record.remembered_at):
                return known
            if task is not None:
                self._add(task, limits)
            self._keys[(record.scope, record.key)] = record
            return record

    def purge_keys(self, now: datetime, *, limit: int = 500) -> int:
        """Forget up to ``limit`` keys that have expired at ``now``."""
        with self._changed:
            expired = [name for name, record in self._keys.items() if not record.live(now)]
            for name in expired[:limit]:
                del self._keys[name]
            return min(len(expired), limit)

    def sources_in_use(self, keys: Collection[str]) -> set[str]:
        """Those of ``keys`` that some task refers to as its original, by one scan."""
        wanted = set(keys)
        with self._changed:
            return {row.task.source_key for row in self._rows.values()} & wanted

    def find_by_source(
        self, source_key: str, statuses: Collection[TaskStatus], *, limit: int = 20
    ) -> list[Task]:
        """Tasks in ``statuses`` made from the original under ``source_key``, newest first."""
        with self._changed:
            found = [
                row.task
                for row in self._rows.values()
                if row.task.source_key == source_key and row.task.status in statuses
            ]
        found.sort(key=lambda task: (task.created_at, task.id), reverse=True)
        return found[: max(limit, 0)]

    def find(
        self,
        status: TaskStatus,
        *,
        owner: str | None = None,
        metadata: Mapping[str, MetadataValue] | None = None,
        limit: int = 100,
    ) -> list[Task]:
        """Tasks in ``status`` (and of ``owner``, with ``metadata``), most recently changed
        first, by a scan."""
        with self._changed:
            found = [
                row.task
                for row in self._rows.values()
                if row.task.status == status
                and (owner is None or row.task.owner == owner)
                and (not metadata or matches_metadata(row.task, metadata))
            ]
        found.sort(key=lambda task: (task.updated_at, task.id), reverse=True)
        return found[: max(limit, 0)]

    def queue_stats(self) -> QueueStats:
        """Counts by scanning the table (fine for the sizes memory is for)."""
        with self._changed:
            now = self.clock()
            tasks = [row.task for row in self._rows.values()]
        due = [
            t.available_at for t in tasks if t.status == TaskStatus.QUEUED and t.available_at <= now
        ]
        return QueueStats(
            queued=sum(t.status == TaskStatus.QUEUED for t in tasks),
            processing=sum(t.status == TaskStatus.PROCESSING for t in tasks),
            oldest_due_at=min(due, default=None),
        )

    def __len__(self) -> int:
        with self._changed:
            return len(self._rows)

    # The rest is the table's machinery, shared with MemoryQueue; call only with the lock held.

    def _row(self, task_id: str) -> _Row:
        try:
            return self._rows[task_id]
        except KeyError:
            raise TaskNotFound(f"no task with id {task_id!r}") from None

    def _write(self, row: _Row, task: Task) -> None:
        row.task = task
        row.version += 1
        row.lease_token = row.lease_expires = None
        self._enqueue(row)
        if task.status.is_final:
            # The outbox, under the same lock as the status it announces.
            delivery = delivery_for(task, self.clock())
            if delivery is not None:
                self._deliveries[delivery.id] = delivery
            # Under the table's lock: subscribers only set events or hand the news to a loop.
            self.completions.publish_tasks((task,))

    def _enqueue(self, row: _Row) -> None:
        task = row.task
        if task.status != TaskStatus.QUEUED:
            return
        if task.available_at <= self.clock():
            entry = (-task.priority, task.available_at, task.created_at, task.id, row.version)
            heapq.heappush(self._ready, entry)
        else:
            heapq.heappush(self._delayed, (task.available_at, task.id, row.version))
        self._changed.notify_all()

    def _promote(self, now: datetime) -> None:
        """Move due delayed tasks into the ready heap, and requeue tasks whose lease expired."""
        while self._delayed and self._delayed[0][0] <= now:
            _, task_id, version = heapq.heappop(self._delayed)
            row = self._rows.get(task_id)
            if row is not None and row.version == version:
                self._enqueue(row)
        while self._leases and self._leases[0][0] <= now:
            _, task_id, token = heapq.heappop(self._leases)
            row = self._rows.get(task_id)
            if row is None or row.lease_token != token:
                continue
            if row.lease_expires is not None and row.lease_expires > now:
                continue  # renewed since; a newer heap entry stands for it
            # The worker died (or hung) mid-task: that attempt counts, like any other failure.
            self._write(row, row.task.after_failure(LEASE_EXPIRED, now, delay=timedelta(0)))

    def _next_due(self) -> datetime | None:
        times = [heap[0][0] for heap in (self._delayed, self._leases) if heap]
        return min(times) if times else None


def _finished_before(task: Task, before: datetime) -> bool:
    return task.status.is_final and task.finished_at is not None and task.finished_at < before


def _check_result(lease: Lease, task: Task, *, final: bool) -> None:
    if task.id != lease.task.id:
        raise ValueError(f"lease is on task {lease.task.id}, not {task.id}")
    if final != task.status.is_final or task.status == TaskStatus.PROCESSING:
        raise ValueError(f"cannot record a task in status {task.status} here")


class MemoryQueue:
    """The :class:`~imageproc.Queue` over a :class:`MemoryRepository`'s tasks."""

    def __init__(self, repository: MemoryRepository) -> None:
        self.repository = repository

    def claim(self, worker: str, *, lease_seconds: float, limit: int = 1) -> list[Lease]:
        """Lease up to ``limit`` claimable tasks, highest priority, then earliest due, first."""
        repo = self.repository
        with repo._changed:
            now = repo.clock()
            repo._promote(now)
            leases: list[Lease] = []
            while repo._ready and len(leases) < limit:
                *_, task_id, version = heapq.heappop(repo._ready)
                row = repo._rows.get(task_id)
                if row is None or row.version != version or row.task.status != TaskStatus.QUEUED:
                    continue
                task = row.task.claim(now)
                repo._write(row, task)
                row.lease_token = secrets.token_hex(16)
                row.lease_expires = now + timedelta(seconds=lease_seconds)
                heapq.heappush(repo._leases, (row.lease_expires, task_id, row.lease_token))
                leases.append(Lease(task, row.lease_token, worker, row.lease_expires))
            return leases

    def _held(self, lease: Lease) -> _Row:
        row = self.repository._rows.get(lease.task.id)
        if row is None or row.lease_token != lease.token:
            raise lease_lost(lease)
        return row

    def renew(self, lease: Lease, *, lease_seconds: float) -> Lease:
        """Push the lease's expiry ``lease_seconds`` past now."""
        repo = self.repository
        with repo._changed:
            row = self._held(lease)
            expires = repo.clock() + timedelta(seconds=lease_seconds)
            row.lease_expires = expires
            heapq.heappush(repo._leases, (expires, lease.task.id, lease.token))
            return attrs.evolve(lease, expires_at=expires)

    def renew_many(self, leases: Sequence[Lease], *, lease_seconds: float) -> list[Lease | None]:
        """Renew each lease still held; None for each that is not."""
        return renew_each(self, leases, lease_seconds=lease_seconds)

    def report_progress(self, lease: Lease, variants_done: int) -> bool:
        """Record how many variants the leased task has made, if the lease is still held."""
        with self.repository._changed:
            try:
                row = self._held(lease)
            except LeaseLost:
                return False
            row.task = row.task.reached(variants_done)
            return True

    def record_many(self, results: Sequence[tuple[Lease, Task]]) -> list[bool]:
        """Record each outcome whose lease is still held, all under one lock."""
        for lease, task in results:
            _check_result(lease, task, final=task.status.is_final)
        recorded: list[bool] = []
        with self.repository._changed:
            for lease, task in results:
                try:
                    row = self._held(lease)
                except LeaseLost:
                    recorded.append(False)
                    continue
                self.repository._write(row, task)
                recorded.append(True)
        return recorded

    def complete(self, lease: Lease, task: Task) -> None:
        """Record the final ``task`` and end the lease."""
        _check_result(lease, task, final=True)
        with self.repository._changed:
            self.repository._write(self._held(lease), task)

    def release(self, lease: Lease, task: Task) -> None:
        """Record the requeued ``task`` and end the lease."""
        _check_result(lease, task, final=False)
        with self.repository._changed:
            self.repository._write(self._held(lease), task)

    def wait(self, timeout: float) -> None:
        """Sleep until work appears, a delayed task or a lease falls due, or ``timeout`` passes."""
        repo = self.repository
        with repo._changed:
            due = repo._next_due()
            if due is not None:
                timeout = min(timeout, max(0.0, (due - repo.clock()).total_seconds()))
            if repo._ready or timeout <= 0:
                return
            repo._changed.wait(timeout)
