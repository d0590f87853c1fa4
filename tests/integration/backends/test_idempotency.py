"""Idempotency keys on every backend (``IdempotencyStore``): remembered with their task in one
transaction, one task however many submit under a key at once (threads, and processes on the
SQL databases)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest

from imageproc import (
    IdempotencyRecord,
    IdempotencyStore,
    Processor,
    QueueFull,
    QueueLimits,
    Task,
    TaskStatus,
)
from imageproc._keys import source_key
from imageproc.backends._memory import MemoryStorage
from imageproc.testing import FAST_OPTIONS, sample_image
from tests.support.backends import Backend

ROOT = Path(__file__).resolve().parents[3]
THUMB = "thumb=fit:64x64,webp"


def store(backend: Backend) -> IdempotencyStore:
    repository = backend.repository
    assert isinstance(repository, IdempotencyStore)
    return repository


def new_task(backend: Backend, owner: str | None = None) -> Task:
    from imageproc import Pipeline, SourceInfo

    return Task.new(
        pipeline=Pipeline.parse(THUMB),
        source_key=source_key("ab" * 32, ".jpg", owner),
        source=SourceInfo("JPEG", 10, 10, 100, "ab" * 32),
        now=backend.clock(),
        owner=owner,
    )


def record_for(
    backend: Backend, task: Task, key: str = "k", *, hours: float = 24
) -> IdempotencyRecord:
    now = backend.clock()
    return IdempotencyRecord(
        scope=task.owner or "",
        key=key,
        fingerprint="f" * 64,
        task_id=task.id,
        status=task.status,
        created_at=now,
        remembered_at=now,
        expires_at=now + timedelta(hours=hours),
    )


def test_a_key_is_remembered_with_its_task(backend: Backend) -> None:
    keys = store(backend)
    task = new_task(backend)
    record = record_for(backend, task)
    assert keys.add_keyed(record, task) == record
    assert backend.repository.get(task.id) == task
    assert keys.find_key("", "k", now=backend.clock()) == record
    assert keys.find_key("other-owner", "k", now=backend.clock()) is None
    assert keys.find_key("", "K", now=backend.clock()) is None


def test_a_key_already_remembered_records_nothing_and_returns_the_first(backend: Backend) -> None:
    keys = store(backend)
    first = new_task(backend)
    keys.add_keyed(record_for(backend, first), first)
    second = new_task(backend)
    kept = keys.add_keyed(record_for(backend, second), second)
    assert kept.task_id == first.id
    assert [t.id for t in backend.repository.find(TaskStatus.QUEUED)] == [first.id]


def test_an_expired_key_is_taken_over_and_purged(backend: Backend) -> None:
    keys = store(backend)
    first = new_task(backend)
    keys.add_keyed(record_for(backend, first, hours=1), first)
    backend.clock.advance(3601)
    assert keys.find_key("", "k", now=backend.clock()) is None
    second = new_task(backend)
    assert keys.add_keyed(record_for(backend, second, hours=1), second).task_id == second.id
    other = new_task(backend)
    keys.add_keyed(record_for(backend, other, "other", hours=1), other)
    assert keys.purge_keys(backend.clock()) == 0
    backend.clock.advance(3601)
    assert keys.purge_keys(backend.clock(), limit=1) == 1
    assert keys.purge_keys(backend.clock()) == 1
    assert keys.purge_keys(backend.clock()) == 0
    # Purging keys leaves their tasks alone.
    assert len(backend.repository.find(TaskStatus.QUEUED)) == 3


def test_a_key_whose_task_is_refused_is_not_remembered(backend: Backend) -> None:
    keys = store(backend)
    backend.repository.add(new_task(backend))
    task = new_task(backend)
    with pytest.raises(QueueFull):
        keys.add_keyed(record_for(backend, task), task, limits=QueueLimits(max_queued=1))
    assert keys.find_key("", "k", now=backend.clock()) is None
    with pytest.raises(Exception, match=task.id):
        backend.repository.get(task.id)


def test_a_key_can_be_remembered_for_an_existing_task(backend: Backend) -> None:
    keys = store(backend)
    task = new_task(backend)
    backend.repository.add(task)
    record = record_for(backend, task)
    assert keys.add_keyed(record, None) == record
    assert keys.find_key("", "k", now=backend.clock()) == record


def test_sixteen_threads_under_one_key_make_one_task(backend: Backend) -> None:
    processor = Processor(
        MemoryStorage(), backend.queue, backend.repository, clock=backend.clock, **FAST_OPTIONS
    )
    ids = submitted_at_once(processor, 16)
    assert len(set(ids)) == 1
    assert [task.id for task in backend.repository.find(TaskStatus.QUEUED)] == ids[:1]


def submitted_at_once(processor: Processor, count: int) -> list[str]:
    """The ids ``count`` threads were answered with, submitting one image under one key at the
    same moment (each of them answered: no error)."""
    image = sample_image()
    barrier = threading.Barrier(count)
    ids: list[str] = []
    errors: list[BaseException] = []

    def submit() -> None:
        try:
            barrier.wait(timeout=10)
            ids.append(processor.submit(image, THUMB, idempotency_key="same").id)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=submit) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert len(ids) == count
    return ids


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_four_processes_under_one_key_make_one_task(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    database = request.getfixturevalue("sqlite_url" if kind == "sqlite" else "postgres_url")
    storage = f"file://{tmp_path / 'images'}"
    processor = Processor.from_urls(database, storage, migrate=True)
    request.addfinalizer(processor.close)
    start = time.time() + 3  # after every child has imported and connected
    children = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.support.keyedsubmit", database, storage, str(start), "4"],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])},
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    ids = []
    for child in children:
        out, _ = child.communicate(timeout=90)
        assert child.returncode == 0
        ids.extend(out.split())
    assert len(ids) == 16
    assert len(set(ids)) == 1
    assert [task.id for task in processor.tasks(TaskStatus.QUEUED)] == ids[:1]


@pytest.mark.postgres
def test_one_task_under_one_key_on_a_server_that_defaults_to_repeatable_read(
    request: pytest.FixtureRequest,
) -> None:
    from imageproc.backends.sql._backend import SQLBackend

    url = request.getfixturevalue("postgres_url")
    sql = SQLBackend(
        url, connect_args={"options": "-c default_transaction_isolation=repeatable\\ read"}
    )
    request.addfinalizer(sql.close)
    with sql.engine.connect() as conn:
        assert conn.exec_driver_sql("SHOW default_transaction_isolation").scalar() == (
            "repeatable read"
        )
        # Yet imageproc's own transactions run at READ COMMITTED.
        assert conn.exec_driver_sql("SHOW transaction_isolation").scalar() == "read committed"
    processor = Processor(MemoryStorage(), sql, sql, **FAST_OPTIONS)
    ids = submitted_at_once(processor, 8)
    assert len(set(ids)) == 1
