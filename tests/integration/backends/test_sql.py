"""What only the SQL backend has: its schema, migrations, notifications, driver errors, and
Processor runs on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from importlib.resources import as_file, files
from pathlib import Path
from typing import Any

import attrs
import psycopg
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy.dialects import postgresql

from imageproc import (
    BackendUnavailable,
    ConfigurationError,
    Processor,
    Task,
    TaskError,
    TaskStatus,
)
from imageproc import _keys as keys
from imageproc._clock import utcnow
from imageproc.backends._memory import MemoryStorage
from imageproc.backends.fsspec._storage import FsspecStorage
from imageproc.backends.sql._backend import SQLBackend
from imageproc.backends.sql._listener import SQLITE_WAIT_POLL
from imageproc.backends.sql._schema import VERSION_TABLE, metadata, task_to_row, tasks
from imageproc.backends.sql._statements import CLAIM as _CLAIM
from imageproc.testing import FAST_OPTIONS, FastForwardClock, sample_image
from tests.support.databases import (
    fresh_database,
    impatient_sqlite,
    make_backend,
    sqlite_write_lock,
)
from tests.support.doubles import CountingQueue, new_task, run_to_completion

KINDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


@pytest.fixture(params=KINDS)
def sql(request: pytest.FixtureRequest) -> SQLBackend:
    return make_backend(request.param, request)


def test_migrations_build_exactly_the_declared_schema(sql: SQLBackend) -> None:
    with sql.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
        diff = compare_metadata(context, metadata)
    assert [d for d in diff if "alembic_version" not in str(d) and _applies(d, sql.dialect)] == []
    assert sql.schema_revision() == "0007"


def _applies(difference: Any, dialect: str) -> bool:
    # Alembic compares every index of the metadata, including one declared for another database
    # only (``ddl_if``): the metadata index exists on PostgreSQL alone, by design.
    if difference[0] != "add_index":
        return True
    declared = {index.name: index for table in metadata.tables.values() for index in table.indexes}
    only_on = getattr(declared.get(difference[1].name), "_ddl_if", None)
    return only_on is None or only_on.dialect == dialect


def test_migrate_again_is_a_no_op_and_leaves_the_hosts_alembic_alone(sql: SQLBackend) -> None:
    with sql.engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)"))
        conn.execute(sa.text("INSERT INTO alembic_version VALUES ('hosts_own_head')"))
    sql.add(task := new_task())
    sql.migrate()
    with sql.engine.connect() as conn:
        host = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
    assert host == "hosts_own_head"
    assert sql.get(task.id) == task
    assert sql.schema_revision() == "0007"


@pytest.fixture(params=KINDS)
def empty_database(request: pytest.FixtureRequest) -> Iterator[str]:
    """The URL of a database with no schema at all."""
    if request.param == "sqlite":
        yield request.getfixturevalue("sqlite_url")
        return
    with fresh_database(request.getfixturevalue("postgres_server")) as url:
        yield url


def test_tasks_recorded_before_orientation_was_upgrade_to_orientation_1(
    empty_database: str,
) -> None:
    engine = sa.create_engine(empty_database, poolclass=sa.pool.NullPool)
    with as_file(files("imageproc") / "migrations") as location, engine.begin() as conn:
        config = Config()
        config.set_main_option("script_location", str(location))
        config.attributes["connection"] = conn
        command.upgrade(config, "0001")
        old = new_task()
        row = task_to_row(old)
        # columns of revisions 0002, 0003, 0005, 0006, 0007
        for later in (
            "source_orientation",
            "metadata",
            "callback_url",
            "variants_done",
            "reprocess_of",
        ):
            del row[later]
        columns, values = ", ".join(row), ", ".join(f":{column}" for column in row)
        conn.execute(
            sa.text(f"INSERT INTO imageproc_tasks ({columns}) VALUES ({values})"),
            {k: json.dumps(v) if k in ("pipeline", "outputs") else v for k, v in row.items()},
        )
    engine.dispose()
    backend = SQLBackend(empty_database)
    try:
        backend.migrate()
        assert backend.schema_revision() == "0007"
        assert backend.get(old.id) == old
        assert backend.get(old.id).source.orientation == 1
    finally:
        backend.close()


def test_the_status_column_refuses_unknown_statuses(sql: SQLBackend) -> None:
    sql.add(task := new_task())
    with pytest.raises(sa.exc.IntegrityError), sql.engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE imageproc_tasks SET status = 'lost' WHERE id = :id"), {"id": task.id}
        )


def _set_pipeline(sql: SQLBackend, task_id: str, pipeline: object) -> None:
    with sql.engine.begin() as conn:
        conn.execute(tasks.update().where(tasks.c.id == task_id).values(pipeline=pipeline))


def test_pipelines_recorded_by_earlier_versions_are_still_read(sql: SQLBackend) -> None:
    # What the previous release accepted and recorded, which the JSON form now refuses.
    sql.add(task := new_task())
    old = {
        "variants": [
            {
                "name": "a",
                "operations": [{"op": "blur", "sigma": 0.123456}],
                "encoding": {"format": "jpeg", "quality": 80.5},
                "background": "ff000080",
            }
        ]
    }
    _set_pipeline(sql, task.id, old)
    assert str(sql.get(task.id).pipeline) == "a=blur:0.1235,background:ff0000,jpeg:q80"
    (lease,) = sql.claim("w", lease_seconds=30)
    assert lease.task.pipeline == sql.get(task.id).pipeline


def test_an_unreadable_task_is_failed_and_the_rest_of_its_batch_claimed(sql: SQLBackend) -> None:
    sql.add(broken := new_task())
    sql.add(healthy := new_task())
    _set_pipeline(sql, broken.id, {"variants": "not a list"})
    leases = sql.claim("w", lease_seconds=30, limit=2)
    assert [lease.task.id for lease in leases] == [healthy.id]
    with sql.engine.connect() as conn:
        row = conn.execute(tasks.select().where(tasks.c.id == broken.id)).mappings().one()
    assert (row["status"], row["error_code"], row["lease_token"]) == (
        "failed",
        "unreadable_task",
        None,
    )
    assert row["error_message"].startswith("the recorded task cannot be read: ")
    assert sql.claim("w", lease_seconds=30, limit=2) == []


def test_naive_timestamps_are_refused(sql: SQLBackend) -> None:
    naive = attrs.evolve(new_task(), created_at=datetime(2026, 1, 1))
    with pytest.raises(sa.exc.StatementError, match="naive datetime"):
        sql.add(naive)


def test_naive_timestamps_are_refused_when_recording_too(sql: SQLBackend) -> None:
    sql.add(new_task())
    (lease,) = sql.claim("w", lease_seconds=30)
    naive = attrs.evolve(lease.task.succeed((), utcnow()), finished_at=datetime(2026, 1, 1))
    with pytest.raises((ValueError, sa.exc.StatementError), match="naive datetime"):
        sql.record_many([(lease, naive)])
    assert sql.get(lease.task.id) == lease.task


def test_using_an_unmigrated_database_says_so(request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue("sqlite_url")
    backend = SQLBackend(url)
    request.addfinalizer(backend.close)
    with pytest.raises(ConfigurationError, match="run migrate"):
        backend.get("x")


def test_an_unreachable_server_is_backend_unavailable() -> None:
    backend = SQLBackend(
        "postgresql+psycopg://postgres@127.0.0.1:1/none", connect_args={"connect_timeout": 2}
    )
    try:
        with pytest.raises(BackendUnavailable) as info:
            backend.get("x")
        assert info.value.transient
        assert "SELECT" not in info.value.message  # no SQL in what we say
    finally:
        backend.close()


def test_a_locked_sqlite_file_is_backend_unavailable(request: pytest.FixtureRequest) -> None:
    impatient = impatient_sqlite(request)
    with (
        sqlite_write_lock(impatient.engine.url),
        pytest.raises(BackendUnavailable, match="locked"),
    ):
        impatient.add(new_task())
    impatient.add(new_task())  # and carries on once the lock is gone


def test_unsupported_databases_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="unsupported database 'mysql'"):
        SQLBackend("mysql://root@localhost/x")


def listening(request: pytest.FixtureRequest, url: str) -> SQLBackend:
    """A backend of its own (another process, as far as wake-ups go) whose listener is up."""
    waiter = SQLBackend(url, poll_interval=30)
    request.addfinalizer(waiter.close)
    waiter.wait(0.05)  # starts the listener
    time.sleep(0.3)  # for its LISTEN to take effect
    return waiter


def notified(waiter: SQLBackend, seen: int, within: float) -> bool:
    """Whether ``waiter`` was woken (its listener heard a notification) since ``seen``.

    Waiting in ``wait`` would not tell: a waiting thread also wakes to poll."""
    deadline = time.monotonic() + within
    while waiter._wakeup._generation == seen:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


@pytest.mark.postgres
def test_a_notification_wakes_an_idle_worker_of_another_process(
    request: pytest.FixtureRequest,
) -> None:
    url = request.getfixturevalue("postgres_url")
    waiter, submitter = listening(request, url), SQLBackend(url)
    request.addfinalizer(submitter.close)
    seen = waiter._wakeup._generation
    submitter.add(new_task())
    assert notified(waiter, seen, within=0.5)


@pytest.mark.postgres
def test_add_many_wakes_idle_workers_of_other_processes(request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue("postgres_url")
    waiter, submitter = listening(request, url), SQLBackend(url)
    request.addfinalizer(submitter.close)
    seen = waiter._wakeup._generation
    submitter.add_many([new_task() for _ in range(3)])
    assert notified(waiter, seen, within=0.5)
    assert len(waiter.claim("w", lease_seconds=30, limit=5)) == 3


@pytest.mark.postgres
def test_record_many_that_requeues_a_due_task_wakes_other_processes(
    request: pytest.FixtureRequest,
) -> None:
    url = request.getfixturevalue("postgres_url")
    worker = SQLBackend(url)
    request.addfinalizer(worker.close)
    for _ in range(3):
        worker.add(new_task())
    done, back, later = worker.claim("w", lease_seconds=30, limit=3)
    waiter = listening(request, url)
    now = utcnow()
    seen = waiter._wakeup._generation
    finished = [(done, done.task.succeed((), now))]
    delayed = [(later, later.task.requeue(now, delay=timedelta(seconds=60)))]
    assert worker.record_many(finished + delayed) == [True, True]
    assert not notified(waiter, seen, within=0.3)  # nothing became claimable
    assert worker.record_many([(back, back.task.unclaim(now))]) == [True]
    assert notified(waiter, seen, within=0.5)
    assert [lease.task.id for lease in waiter.claim("idle", lease_seconds=30)] == [back.task.id]


def wait_in_thread(processor: Processor, task_id: str) -> tuple[threading.Thread, list[object]]:
    """``processor.wait(task_id)`` in a thread of its own; the list gets its result (or error)
    and the seconds it took once it returns."""
    outcome: list[object] = []

    def run() -> None:
        started = time.monotonic()
        try:
            outcome.append(processor.wait(task_id, timeout=20))
        except Exception as error:
            outcome.append(error)
        outcome.append(time.monotonic() - started)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


@pytest.mark.postgres
@pytest.mark.parametrize("ending", ["recorded", "cancelled", "buried by a claim"])
def test_wait_is_woken_by_an_end_recorded_in_another_process(
    request: pytest.FixtureRequest, ending: str
) -> None:
    # The waiter's backend hears of ends only through the database: pushed, they reach it
    # long before its 5-second safety poll would.
    url = request.getfixturevalue("postgres_url")
    other = SQLBackend(url)
    request.addfinalizer(other.close)
    waiter = Processor(MemoryStorage(), *(SQLBackend(url),) * 2)
    request.addfinalizer(waiter.close)
    task = attrs.evolve(new_task(), max_attempts=1)
    other.add(task)
    (lease,) = other.claim("w", lease_seconds=0.5 if ending == "buried by a claim" else 30)
    thread, outcome = wait_in_thread(waiter, task.id)
    time.sleep(0.3)  # the waiter is subscribed and asleep
    if ending == "recorded":
        assert other.record_many([(lease, lease.task.succeed((), utcnow()))]) == [True]
    elif ending == "cancelled":
        assert other.update(lease.task.cancel(utcnow()), expected=lease.task)
    else:
        time.sleep(0.3)  # the lease has lapsed: the next claim makes the task dead
        assert other.claim("rescuer", lease_seconds=30) == []
    thread.join(10)
    ended, seconds = outcome
    expected = {"recorded": "succeeded", "cancelled": "cancelled", "buried by a claim": "dead"}
    assert isinstance(ended, Task)
    assert ended.status == expected[ending]
    assert isinstance(seconds, float)
    assert seconds < 2.0


def test_wait_on_sqlite_finds_an_end_recorded_by_another_process_by_polling(
    request: pytest.FixtureRequest,
) -> None:
    url = request.getfixturevalue("sqlite_url")
    other = SQLBackend(url)
    other.migrate()
    request.addfinalizer(other.close)
    waiter = Processor(MemoryStorage(), *(SQLBackend(url),) * 2)
    request.addfinalizer(waiter.close)
    other.add(new_task())
    (lease,) = other.claim("w", lease_seconds=30)
    thread, outcome = wait_in_thread(waiter, lease.task.id)
    time.sleep(0.2)
    assert other.record_many([(lease, lease.task.succeed((), utcnow()))]) == [True]
    thread.join(10)
    ended, seconds = outcome
    assert isinstance(ended, Task)
    assert ended.status == TaskStatus.SUCCEEDED
    assert isinstance(seconds, float)
    assert seconds < 0.2 + SQLITE_WAIT_POLL + 1.0


@pytest.mark.postgres
def test_claims_and_records_are_planned_once_on_the_partial_indexes(
    request: pytest.FixtureRequest,
) -> None:
    url = request.getfixturevalue("postgres_url")
    backend = SQLBackend(url, poolclass=sa.pool.StaticPool)  # one connection: one set of plans
    request.addfinalizer(backend.close)
    backend.add_many([new_task() for _ in range(40)])
    for _ in range(10):
        leases = backend.claim("w", lease_seconds=30, limit=3)
        assert all(
            backend.record_many([(lease, lease.task.succeed((), utcnow())) for lease in leases])
        )
    claim_sql = _CLAIM.compile(dialect=postgresql.dialect(paramstyle="numeric_dollar"))
    with backend.engine.connect() as conn:
        query = "SELECT statement, custom_plans FROM pg_prepared_statements"
        plans = dict(conn.exec_driver_sql(query).all())
        assert backend._leasing is not None  # claims and records have connections of their own
        for engine in (backend._leasing, backend._autocommit):
            with engine.connect() as other:
                plans.update(other.exec_driver_sql(query).all())
        claims = [n for text, n in plans.items() if "imageproc_tasks.lease_expires_at <=" in text]
        records = [n for text, n in plans.items() if "jsonb_to_recordset" in text]
        # The claim and the batch record are prepared, and were not planned again.
        assert (claims, records) == ([0], [0])
        conn.exec_driver_sql(f"PREPARE claim_plan AS {claim_sql}")
        now = utcnow()
        values = claim_sql.construct_params(
            {"now": now, "n": 3, "token": "t:", "worker": "w", "expires": now}
        )
        driver = conn.connection.driver_connection
        arguments = ", ".join(
            psycopg.sql.Literal(values[name]).as_string(driver)
            for name in claim_sql.positiontup or []
        )
        explain = f"EXPLAIN EXECUTE claim_plan({arguments})"
        plan = "\n".join(row[0] for row in conn.exec_driver_sql(explain))
    assert "imageproc_tasks_claim_idx" in plan
    assert "imageproc_tasks_lease_idx" in plan
    assert "Seq Scan" not in plan


@pytest.mark.postgres
def test_killed_connections_are_survived(request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue("postgres_url")
    backend = SQLBackend(url)
    request.addfinalizer(backend.close)
    backend.add(task := new_task())
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with admin.connect() as conn:
        # With a timeout, pg_terminate_backend waits until each backend has exited: without one
        # it returns at once, and the pooled connection could still look alive at checkout.
        conn.execute(
            sa.text(
                "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        )
    admin.dispose()
    assert backend.get(task.id) == task  # the dead pooled connection was replaced


@pytest.mark.parametrize("kind", KINDS)
def test_processor_on_sql_runs_200_tasks_on_4_threads_exactly_once(
    kind: str, request: pytest.FixtureRequest
) -> None:
    sql = make_backend(kind, request)
    counting = CountingQueue(sql)
    proc = Processor(MemoryStorage(), counting, sql, **FAST_OPTIONS)  # type: ignore[arg-type]
    ids = run_to_completion(proc, 200, workers=4)
    assert counting.completed == dict.fromkeys(ids, 1)


def test_from_urls_builds_and_migrates_sqlite(tmp_path: object) -> None:
    url = f"sqlite:///{tmp_path}/nested.db"
    with Processor.from_urls(url, "memory://", **FAST_OPTIONS) as proc:
        assert isinstance(proc.repository, SQLBackend)
        task = proc.submit(sample_image(400, 300))
        proc.run_until_idle()
        assert proc.get(task.id).status == TaskStatus.SUCCEEDED
    # The file outlives the Processor.
    with Processor.from_urls(url, "memory://", migrate=False) as again:
        assert again.get(task.id).status == TaskStatus.SUCCEEDED
        assert again.get(task.id).finished_at is not None
        assert again.get(task.id).finished_at.tzinfo is UTC  # type: ignore[union-attr]


@pytest.mark.parametrize("kind", KINDS)
def test_retention_deletes_finished_tasks_and_their_files(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    sql = make_backend(kind, request)
    storage = FsspecStorage(f"file://{tmp_path / 'images'}")
    proc = Processor(storage, sql, sql, **FAST_OPTIONS)
    done = proc.submit(sample_image(300, 200), "thumb=fit:64x64,png")
    proc.run_until_idle()
    waiting = proc.submit(sample_image(200, 300), "png")
    outputs = [output.key for output in proc.get(done.id).outputs]
    assert all(storage.exists(key) for key in outputs)

    assert proc.purge(older_than=timedelta(0)) == 1
    assert not any(storage.exists(key) for key in [*outputs, done.source_key])
    assert storage.exists(waiting.source_key)
    assert proc.get(waiting.id).status == TaskStatus.QUEUED


@pytest.mark.parametrize("kind", KINDS)
def test_retention_sweeps_orphaned_originals_in_a_local_folder(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    clock = FastForwardClock()
    sql = make_backend(kind, request, clock)
    storage = FsspecStorage(f"file://{tmp_path / 'images'}")
    proc = Processor(storage, sql, sql, clock=clock, **FAST_OPTIONS)
    done = proc.submit(sample_image(300, 200), "thumb=fit:64x64,png", owner="alice")
    proc.run_until_idle()
    waiting = proc.submit(sample_image(200, 300), "png")
    # Originals whose tasks were never recorded: an owner's, and one of the shared form.
    orphans = [keys.source_key("ab" * 32, "jpg", "alice"), keys.source_key("cd" * 32, "png")]
    for orphan in orphans:
        storage.put(orphan, b"bytes", content_type="image/jpeg")
    kept = [done.source_key, waiting.source_key, *(o.key for o in proc.get(done.id).outputs)]

    assert proc.purge(older_than=timedelta(days=1)) == 0
    assert all(storage.exists(key) for key in orphans)  # young: within the grace period
    clock.advance(2 * 3600)
    assert proc.purge_orphans(timedelta(hours=1), batch=1) == 2
    assert not any(storage.exists(key) for key in orphans)
    assert all(storage.exists(key) for key in kept)
    assert proc.get(waiting.id).status == TaskStatus.QUEUED


def test_record_many_records_the_held_and_reports_the_lost(sql: SQLBackend) -> None:
    for _ in range(3):
        sql.add(new_task())
    leases = sql.claim("w", lease_seconds=30, limit=3)
    lost = leases[1]
    assert sql.update(lost.task.cancel(utcnow()), expected=lost.task)  # takes the lease away
    now = utcnow()
    results = [(lease, lease.task.succeed((), now)) for lease in leases]
    assert sql.record_many(results) == [True, False, True]
    assert [sql.get(lease.task.id).status for lease in leases] == [
        TaskStatus.SUCCEEDED,
        TaskStatus.CANCELLED,
        TaskStatus.SUCCEEDED,
    ]
    assert sql.record_many(results) == [False, False, False]  # once only
    assert sql.record_many([]) == []


def test_record_many_with_columns_that_are_null_in_every_row(sql: SQLBackend) -> None:
    for _ in range(2):
        sql.add(new_task())
    leases = sql.claim("w", lease_seconds=30, limit=2)
    now = utcnow()
    error = TaskError("storage_error", "flaky")
    # Requeued tasks: finished_at and outputs empty in every row of the batch.
    back = [
        (lease, lease.task.requeue(now, delay=timedelta(seconds=5), error=error))
        for lease in leases
    ]
    assert sql.record_many(back) == [True, True]
    for lease, task in back:
        assert sql.get(lease.task.id) == task


def test_postgresql_without_its_driver_says_which_extra_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As if psycopg were not installed: importing it fails, as it would without the extra.
    monkeypatch.setitem(sys.modules, "psycopg", None)
    with pytest.raises(ConfigurationError, match="'postgres' extra") as info:
        Processor.from_urls("postgresql://imageproc@127.0.0.1:1/imageproc", "memory://")
    assert "psycopg" in info.value.message


def test_dedupe_finds_the_task_through_the_database(sql: SQLBackend) -> None:
    # The pipeline read back from a row must equal the one asked for, or dedupe finds nothing.
    processor = Processor(MemoryStorage(), sql, sql, **FAST_OPTIONS)
    pipeline = "thumb=fit:64x64,webp:q70;big=resize:300x,jpeg:q85:progressive,placeholder"
    image = sample_image()
    first = processor.submit(image, pipeline, owner="ann", dedupe=True)
    assert processor.submit(image, pipeline, owner="ann", dedupe=True).id == first.id
    processor.run_until_idle()
    again = processor.submit(image, pipeline, owner="ann", dedupe=True)
    assert (again.id, again.status) == (first.id, TaskStatus.SUCCEEDED)
    assert processor.submit(image, pipeline, owner="bob", dedupe=True).id != first.id
