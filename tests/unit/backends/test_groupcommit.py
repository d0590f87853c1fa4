"""Group commit: concurrent writes share transactions, each caller learns its own outcome, and
SQLite's ``add`` uses it without changing what ``add`` promises."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import attrs
import pytest
import sqlalchemy as sa

from imageproc import BackendUnavailable, TaskStatus
from imageproc.backends.sql import _groupcommit as groupcommit
from imageproc.backends.sql._backend import SQLBackend
from imageproc.backends.sql._groupcommit import GroupCommit
from tests.support.databases import impatient_sqlite, make_backend, sqlite_write_lock
from tests.support.doubles import new_task


class Recorder:
    """A ``write`` that records its batches; the first one waits for ``release`` so that other
    callers pile up behind it."""

    def __init__(self, *, hold_first: bool = True) -> None:
        self.batches: list[list[int]] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        if not hold_first:
            self.release.set()
        self.running = 0
        self.most_at_once = 0
        self.lock = threading.Lock()

    def __call__(self, items: Sequence[int]) -> list[BaseException | None]:
        with self.lock:
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        try:
            self.entered.set()
            assert self.release.wait(10)
            self.batches.append(list(items))
            return [ValueError(f"odd {i}") if i % 2 else None for i in items]
        finally:
            with self.lock:
                self.running -= 1


def _outcome(group: GroupCommit[int], item: int) -> str:
    try:
        group.run(item)
    except ValueError as error:
        return str(error)
    return "ok"


def test_a_lone_caller_writes_at_once() -> None:
    write = Recorder(hold_first=False)
    group = GroupCommit(write)
    assert _outcome(group, 2) == "ok"
    assert _outcome(group, 3) == "odd 3"
    assert write.batches == [[2], [3]]


def test_callers_that_arrive_during_a_write_share_the_next_one() -> None:
    write = Recorder()
    group = GroupCommit(write)
    with ThreadPoolExecutor(9) as pool:
        first = pool.submit(_outcome, group, 0)
        assert write.entered.wait(10)
        rest = [pool.submit(_outcome, group, i) for i in range(1, 9)]
        # The eight others queue behind the first write (none may return before it is done).
        while len(group._waiting) < 8:
            threading.Event().wait(0.001)
        assert not any(future.done() for future in rest)
        write.release.set()
        outcomes = [first.result(10)] + [future.result(10) for future in rest]
    assert outcomes == ["ok" if i % 2 == 0 else f"odd {i}" for i in range(9)]
    assert write.batches[0] == [0]
    assert sorted(write.batches[1]) == list(range(1, 9))
    assert write.most_at_once == 1


def test_batches_are_bounded() -> None:
    write = Recorder()
    group = GroupCommit(write, max_batch=3)
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(_outcome, group, 0)]
        assert write.entered.wait(10)
        futures += [pool.submit(_outcome, group, 2 * i) for i in range(1, 8)]
        while len(group._waiting) < 7:
            threading.Event().wait(0.001)
        write.release.set()
        assert [future.result(10) for future in futures] == ["ok"] * 8
    assert [len(batch) for batch in write.batches] == [1, 3, 3, 1]
    assert write.most_at_once == 1


def test_a_failing_write_fails_its_batch_and_the_group_carries_on() -> None:
    calls = []

    def write(items: Sequence[int]) -> list[BaseException | None]:
        calls.append(list(items))
        if len(calls) == 1:
            raise OSError("disk on fire")
        return [None] * len(items)

    group = GroupCommit(write)
    with pytest.raises(OSError, match="disk on fire"):
        group.run(1)
    group.run(2)
    assert calls == [[1], [2]]


def test_a_write_that_miscounts_its_results_fails_the_batch() -> None:
    group = GroupCommit(lambda items: [])
    with pytest.raises(RuntimeError, match="0 results for 1"):
        group.run(1)


def test_max_batch_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_batch"):
        GroupCommit(lambda items: [None] * len(items), max_batch=0)


# -- on SQLite -------------------------------------------------------------------------------------


def _queued(sql: SQLBackend) -> int:
    """How many adds wait behind the one writing (the group is made on the first add)."""
    adds = sql.__dict__.get("_adds")
    return 0 if adds is None else len(adds._waiting)


def test_adds_that_wait_for_the_lock_share_one_transaction(
    request: pytest.FixtureRequest,
) -> None:
    sql = make_backend("sqlite", request)
    commits = []
    sa.event.listen(sql.engine, "commit", lambda conn: commits.append(1))
    tasks = [new_task() for _ in range(16)]
    # Another process holds the write lock: the first add waits for it, the others queue.
    with sqlite_write_lock(sql.engine.url) as release, ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(sql.add, task) for task in tasks]
        while _queued(sql) < 15:
            threading.Event().wait(0.001)
        assert not any(future.done() for future in futures)
        release()
        for future in futures:
            future.result(30)
    assert len(commits) == 2  # the first task alone, then the fifteen that queued behind it
    for task in tasks:
        assert sql.get(task.id) == task
    assert sql.queue_stats().queued == 16


def test_a_duplicate_in_a_batch_fails_alone(request: pytest.FixtureRequest) -> None:
    sql = make_backend("sqlite", request)
    recorded = new_task()
    sql.add(recorded)
    fresh = [new_task() for _ in range(3)]
    results = sql._insert([fresh[0], recorded, fresh[1], fresh[2]])
    assert [type(result) for result in results] == [type(None), ValueError, type(None), type(None)]
    assert "already exists" in str(results[1])
    for task in fresh:
        assert sql.get(task.id).status == TaskStatus.QUEUED
    with pytest.raises(ValueError, match="already exists"):
        sql.add(recorded)


def test_a_value_the_database_cannot_hold_fails_only_its_own_task(
    request: pytest.FixtureRequest,
) -> None:
    sql = make_backend("sqlite", request)
    good = [new_task() for _ in range(2)]
    bad = attrs.evolve(new_task(), priority=2**63)  # past a SQLite INTEGER
    results = sql._insert([good[0], bad, good[1]])
    assert results[0] is None
    assert results[2] is None
    assert isinstance(results[1], OverflowError)
    assert [sql.get(task.id).status for task in good] == [TaskStatus.QUEUED] * 2


def _interrupt_while_waiting(
    group: GroupCommit[int], item: int, monkeypatch: pytest.MonkeyPatch
) -> bool:
    """Run ``item`` as a caller that gets KeyboardInterrupt while it waits for its turn; True if
    it was interrupted there."""
    interrupted = threading.Event()

    class Interrupting(threading.Event):
        def wait(self, timeout: float | None = None) -> bool:
            interrupted.set()
            raise KeyboardInterrupt

    real_init = groupcommit._Slot.__init__

    def slot_init(self: groupcommit._Slot[int], item: int) -> None:
        real_init(self, item)
        self.woken = Interrupting()

    with monkeypatch.context() as patch:
        patch.setattr(groupcommit._Slot, "__init__", slot_init)
        with pytest.raises(KeyboardInterrupt):
            group.run(item)
    return interrupted.is_set()


def test_a_caller_interrupted_while_waiting_strands_nobody(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    write = Recorder()
    group = GroupCommit(write)
    with ThreadPoolExecutor(4) as pool:
        leader = pool.submit(_outcome, group, 0)
        assert write.entered.wait(10)
        # Queued behind the leader, so it would be made the next leader; then it is gone.
        assert _interrupt_while_waiting(group, 2, monkeypatch)
        later = pool.submit(_outcome, group, 4)
        write.release.set()
        assert leader.result(timeout=10) == "ok"
        assert later.result(timeout=10) == "ok"  # not waiting for the lead forever
    assert [4] in write.batches
    assert all(2 not in batch for batch in write.batches)


def test_a_locked_database_fails_every_caller_with_an_error_of_its_own(
    request: pytest.FixtureRequest,
) -> None:
    impatient = impatient_sqlite(request)
    with sqlite_write_lock(impatient.engine.url):
        results = impatient._insert([new_task(), new_task()])
    first, second = results
    assert isinstance(first, BackendUnavailable)
    assert isinstance(second, BackendUnavailable)
    assert first is not second
    assert second.transient
    assert second.message == first.message
    assert second.__cause__ is first.__cause__ is not None
