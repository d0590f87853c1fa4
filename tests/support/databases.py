"""Pytest plugin: SQLite and PostgreSQL databases for tests.

Each PostgreSQL test gets a database of its own, copied from a template that was migrated once
per session (as procrastinate's suite does). The server is ``IMAGEPROC_TEST_POSTGRES_URL``
(default: the local server, user ``postgres``). In CI (``CI`` set) an unreachable server fails
the tests; elsewhere they skip, saying why.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa

from imageproc._clock import Clock, utcnow
from imageproc.backends.sql._backend import SQLBackend

DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def _admin_engine(url: sa.URL) -> sa.Engine:
    return sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)


@pytest.fixture(scope="session")
def postgres_server() -> sa.URL:
    """The PostgreSQL server's admin URL, once it has answered."""
    url = sa.make_url(os.environ.get("IMAGEPROC_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL))
    try:
        with _admin_engine(url).connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError as error:
        reason = (
            f"PostgreSQL is not reachable at {url.render_as_string()} ({error.orig}); start it or"
            " set IMAGEPROC_TEST_POSTGRES_URL"
        )
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the PostgreSQL tests: {reason}")
        pytest.skip(reason)
    return url


@pytest.fixture(scope="session")
def postgres_template(postgres_server: sa.URL) -> Iterator[str]:
    """A migrated database that each test's database is copied from."""
    name = f"imageproc_template_{os.getpid()}"
    admin = _admin_engine(postgres_server)
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    backend = SQLBackend(postgres_server.set(database=name).render_as_string(hide_password=False))
    backend.migrate()
    backend.close()
    yield name
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def postgres_url(postgres_server: sa.URL, postgres_template: str) -> Iterator[str]:
    """The URL of a fresh, migrated PostgreSQL database for this test alone."""
    with fresh_database(postgres_server, template=postgres_template) as url:
        yield url


@contextmanager
def fresh_database(server: sa.URL, *, template: str | None = None) -> Iterator[str]:
    """The URL of a new PostgreSQL database, a copy of ``template`` (or empty), dropped after."""
    name = f"imageproc_test_{uuid.uuid4().hex[:16]}"
    admin = _admin_engine(server)
    copy = f' TEMPLATE "{template}"' if template else ""
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"{copy}'))
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """The URL of a SQLite file for this test alone (not yet migrated)."""
    return f"sqlite:///{tmp_path / 'imageproc.db'}"


def make_backend(kind: str, request: pytest.FixtureRequest, clock: Clock = utcnow) -> SQLBackend:
    """A migrated SQLBackend of ``kind`` ('sqlite' or 'postgresql'), closed after the test."""
    url = request.getfixturevalue("sqlite_url" if kind == "sqlite" else "postgres_url")
    backend = SQLBackend(url, poll_interval=0.05, clock=clock)
    backend.migrate()
    request.addfinalizer(backend.close)
    return backend


def impatient_sqlite(request: pytest.FixtureRequest) -> SQLBackend:
    """A migrated SQLite backend that gives up on a locked database after 0.1 s."""
    url = request.getfixturevalue("sqlite_url")
    SQLBackend(url).migrate()
    backend = SQLBackend(url, sqlite_busy_timeout=0.1)
    request.addfinalizer(backend.close)
    return backend


@contextmanager
def sqlite_write_lock(url: str | sa.URL) -> Iterator[Callable[[], None]]:
    """Another connection holds the SQLite database's write lock, as another process would,
    until the block ends or the ``release`` it yields is called."""
    blocker = sa.create_engine(url).connect()
    blocker.exec_driver_sql("BEGIN EXCLUSIVE")
    held = True

    def release() -> None:
        nonlocal held
        if held:
            blocker.exec_driver_sql("ROLLBACK")
            held = False

    try:
        yield release
    finally:
        release()
        blocker.close()
