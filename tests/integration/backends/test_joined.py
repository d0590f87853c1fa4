"""``submit(…, connection=…)``: the task written in the application's own transaction, on SQLite
and PostgreSQL, through a Core ``Connection`` or an ORM ``Session``."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from imageproc import (
    ConfigurationError,
    IdempotencyConflict,
    Processor,
    QueueFull,
    QueueLimits,
    TaskNotFound,
    TaskStatus,
    Upload,
)
from imageproc.backends._memory import MemoryStorage
from imageproc.testing import FAST_OPTIONS, memory_processor, sample_image

THUMB = "thumb=fit:64x64,webp"

pytestmark = pytest.mark.timeout(120)

# The application's own table, next to imageproc's.
app_metadata = sa.MetaData()
profiles = sa.Table(
    "profiles",
    app_metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("avatar_task", sa.String(64)),
)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest) -> str:
    return str(
        request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "postgres_url")
    )


@pytest.fixture
def storage() -> MemoryStorage:
    return MemoryStorage()


@pytest.fixture
def processor(database: str, storage: MemoryStorage) -> Iterator[Processor]:
    built = Processor.from_urls(database, "memory://", **FAST_OPTIONS)
    built = Processor(storage, built.queue, built.repository, **FAST_OPTIONS)
    yield built
    built.close()


@pytest.fixture
def app_engine(database: str) -> Iterator[sa.Engine]:
    """The application's engine: its own pool, on the same database as imageproc's tables."""
    engine = sa.create_engine(database.replace("postgresql://", "postgresql+psycopg://", 1))
    app_metadata.create_all(engine)
    yield engine
    engine.dispose()


def test_the_task_commits_with_the_applications_rows(
    processor: Processor, app_engine: sa.Engine
) -> None:
    with app_engine.connect() as conn:
        task = processor.submit(sample_image(), THUMB, connection=conn)
        conn.execute(profiles.insert().values(id=1, avatar_task=task.id))
        # Written, but not committed: invisible to the workers.
        with pytest.raises(TaskNotFound):
            processor.get(task.id)
        if processor.repository.dialect == "postgresql":  # type: ignore[attr-defined]
            # (On SQLite a claim is a write, which waits for the application's to commit.)
            assert processor.run_until_idle() == 0
        conn.commit()
    assert processor.get(task.id).status == TaskStatus.QUEUED
    processor.run_until_idle()
    assert processor.get(task.id).status == TaskStatus.SUCCEEDED
    with app_engine.connect() as conn:
        assert conn.execute(sa.select(profiles.c.avatar_task)).scalar_one() == task.id


def test_a_rollback_leaves_no_task_and_only_an_unreferenced_original(
    processor: Processor, app_engine: sa.Engine, storage: MemoryStorage
) -> None:
    with app_engine.connect() as conn:
        task = processor.submit(sample_image(), THUMB, connection=conn)
        conn.execute(profiles.insert().values(id=1, avatar_task=task.id))
        conn.rollback()
    with pytest.raises(TaskNotFound):
        processor.get(task.id)
    assert processor.run_until_idle() == 0
    # The original was stored before the row was written (storage is not transactional).
    assert storage.keys() == [task.source_key]
    assert not processor.repository.source_in_use(task.source_key)
    # purge sweeps it once it is older than the grace period, not before.
    processor.purge(timedelta(days=1))
    assert storage.keys() == [task.source_key]
    processor.purge(timedelta(days=1), orphans_older_than=timedelta(0))
    assert storage.keys() == []


def test_an_orm_session_works_the_same(processor: Processor, app_engine: sa.Engine) -> None:
    with Session(app_engine) as session:
        kept = processor.submit(sample_image(), THUMB, connection=session)
        session.execute(profiles.insert().values(id=1, avatar_task=kept.id))
        session.commit()
        dropped = processor.submit(sample_image(300), THUMB, connection=session)
        session.rollback()
    assert processor.get(kept.id).status == TaskStatus.QUEUED
    with pytest.raises(TaskNotFound):
        processor.get(dropped.id)


def test_an_idempotency_key_commits_and_rolls_back_with_its_task(
    processor: Processor, app_engine: sa.Engine
) -> None:
    with app_engine.connect() as conn:
        processor.submit(sample_image(), THUMB, idempotency_key="k", connection=conn)
        conn.rollback()
        # The key went with the rollback: the same request is a first request again.
        task = processor.submit(sample_image(), THUMB, idempotency_key="k", connection=conn)
        conn.commit()
    assert processor.submit(sample_image(), THUMB, idempotency_key="k").id == task.id
    with app_engine.connect() as conn:
        again = processor.submit(sample_image(), THUMB, idempotency_key="k", connection=conn)
        assert again.id == task.id
        with pytest.raises(IdempotencyConflict):
            processor.submit(sample_image(300), THUMB, idempotency_key="k", connection=conn)
        conn.commit()
    assert len(processor.tasks(TaskStatus.QUEUED)) == 1


def test_queue_limits_hold_in_the_applications_transaction(
    processor: Processor, app_engine: sa.Engine
) -> None:
    processor.queue_limits = QueueLimits(max_queued=1)
    processor.submit(sample_image())
    with app_engine.connect() as conn, pytest.raises(QueueFull):
        processor.submit(sample_image(300), THUMB, connection=conn)


def test_submit_many_takes_a_connection_per_upload(
    processor: Processor, app_engine: sa.Engine
) -> None:
    with app_engine.connect() as conn:
        kept = processor.submit_many(
            [Upload(sample_image(), connection=conn), Upload(sample_image(300), connection=conn)]
        )
        conn.commit()
        dropped = processor.submit_many([Upload(sample_image(310), connection=conn)])
        conn.rollback()
    assert not any(isinstance(result, Exception) for result in [*kept, *dropped])
    queued = {task.id for task in processor.tasks(TaskStatus.QUEUED)}
    assert queued == {task.id for task in kept if not isinstance(task, Exception)}


def test_a_connection_to_another_database_is_refused_before_anything_is_stored(
    processor: Processor,
    database: str,
    storage: MemoryStorage,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    if database.startswith("sqlite"):
        other_url = f"sqlite:///{tmp_path / 'other.db'}"
        other = sa.create_engine(other_url)
        where = "other.db"
    else:
        server = request.getfixturevalue("postgres_server")
        other_url = request.getfixturevalue("postgres_template")  # a different database
        other = sa.create_engine(server.set(database=other_url))
        where = "imageproc_template"
    try:
        with other.connect() as conn, pytest.raises(ConfigurationError) as refused:
            processor.submit(sample_image(), THUMB, connection=conn)
    finally:
        other.dispose()
    assert "must be a connection to the database that holds" in refused.value.message
    assert where in refused.value.message
    assert storage.keys() == []


def test_the_same_database_through_another_url_is_accepted(
    processor: Processor, database: str
) -> None:
    if database.startswith("sqlite"):
        # The same file by another path.
        path = database.removeprefix("sqlite:///")
        other = sa.create_engine(f"sqlite:///{Path(path).parent}/./{Path(path).name}")
    else:
        other = sa.create_engine(sa.make_url(database).set(host="localhost"))
    try:
        with other.connect() as conn:
            task = processor.submit(sample_image(), THUMB, connection=conn)
            conn.commit()
    finally:
        other.dispose()
    assert processor.get(task.id).status == TaskStatus.QUEUED


def test_something_that_is_not_a_connection_is_refused(processor: Processor) -> None:
    with pytest.raises(ConfigurationError, match="takes a SQLAlchemy Connection or Session"):
        processor.submit(sample_image(), connection="postgresql://elsewhere")


def test_the_memory_backend_cannot_join_a_transaction() -> None:
    engine = sa.create_engine("sqlite://")
    with (
        memory_processor() as processor,
        engine.connect() as conn,
        pytest.raises(ConfigurationError, match="MemoryRepository has no add_in"),
    ):
        processor.submit(sample_image(), connection=conn)
    engine.dispose()


@pytest.mark.postgres
def test_an_idle_worker_wakes_when_the_application_commits(
    postgres_url: str,
) -> None:
    with Processor.from_urls(
        postgres_url, "memory://", **{**FAST_OPTIONS, "poll_interval": 30}
    ) as processor:
        processor.start(1)
        engine = sa.create_engine(postgres_url)
        try:
            with engine.connect() as conn:
                task = processor.submit(sample_image(), THUMB, connection=conn)
                conn.commit()
            # Long before the 30 s poll: the NOTIFY sent in the application's transaction.
            assert processor.wait(task.id, timeout=10).status == TaskStatus.SUCCEEDED
        finally:
            engine.dispose()


def test_autocommit_is_refused(processor: Processor, app_engine: sa.Engine) -> None:
    with (
        app_engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn,
        pytest.raises(ConfigurationError, match="not one in autocommit"),
    ):
        processor.submit(sample_image(), THUMB, connection=conn)
    assert processor.tasks(TaskStatus.QUEUED) == []


def test_an_in_memory_sqlite_database_is_refused(processor: Processor) -> None:
    engine = sa.create_engine("sqlite://")
    try:
        with engine.connect() as conn, pytest.raises(ConfigurationError, match="in-memory"):
            processor.submit(sample_image(), THUMB, connection=conn)
    finally:
        engine.dispose()


def test_the_same_key_twice_in_one_transaction_is_one_task(
    processor: Processor, app_engine: sa.Engine
) -> None:
    with app_engine.connect() as conn:
        first, again = processor.submit_many(
            [Upload(sample_image(), THUMB, idempotency_key="k", connection=conn)] * 2
        )
        conn.commit()
    assert not isinstance(first, Exception), first
    assert not isinstance(again, Exception), again
    assert again.id == first.id
    assert [task.id for task in processor.tasks(TaskStatus.QUEUED)] == [first.id]


def test_a_stale_identity_is_asked_again_before_refusing(
    processor: Processor, app_engine: sa.Engine
) -> None:
    # As after a failover to another server: what the backend knew of itself no longer holds.
    processor.repository.__dict__["_known_identity"] = ("postgresql", "gone", "0", "x")
    with app_engine.connect() as conn:
        task = processor.submit(sample_image(), THUMB, connection=conn)
        conn.commit()
    assert processor.get(task.id).status == TaskStatus.QUEUED


@pytest.mark.postgres
def test_a_search_path_that_misses_the_tables_is_refused_every_time(
    postgres_url: str, storage: MemoryStorage
) -> None:
    built = Processor.from_urls(postgres_url, "memory://", **FAST_OPTIONS)
    processor = Processor(storage, built.queue, built.repository, **FAST_OPTIONS)
    engine = sa.create_engine(postgres_url, pool_size=1)
    try:
        with engine.connect() as conn:
            processor.submit(sample_image(), THUMB, connection=conn)  # accepted
            conn.rollback()
            conn.execute(sa.text("SET search_path TO elsewhere"))
            conn.commit()
            # The same pooled connection, asked again: it no longer reaches the tables.
            with pytest.raises(ConfigurationError, match="no imageproc_tasks table"):
                processor.submit(sample_image(), THUMB, connection=conn)
            conn.rollback()
            # A search path that starts with a schema of the application's and then finds
            # imageproc's tables is the same tables: accepted.
            conn.execute(sa.text("CREATE SCHEMA app"))
            conn.execute(sa.text("SET search_path TO app, public"))
            conn.commit()
            task = processor.submit(sample_image(), THUMB, connection=conn)
            conn.commit()
        assert processor.get(task.id).status == TaskStatus.QUEUED
    finally:
        engine.dispose()
        processor.close()


@pytest.mark.postgres
def test_a_transaction_above_read_committed_is_refused(
    postgres_url: str, storage: MemoryStorage
) -> None:
    built = Processor.from_urls(postgres_url, "memory://", **FAST_OPTIONS)
    processor = Processor(storage, built.queue, built.repository, **FAST_OPTIONS)
    engine = sa.create_engine(postgres_url, isolation_level="REPEATABLE READ")
    try:
        with engine.connect() as conn, pytest.raises(ConfigurationError, match="READ COMMITTED"):
            processor.submit(sample_image(), THUMB, connection=conn)
        assert storage.keys() == []
    finally:
        engine.dispose()
        processor.close()
