"""Queue throughput of no-op tasks: imageproc's SQL backend against PgQueuer and procrastinate.

    python benchmarks/queue.py [--jobs N] [--batch B] [--postgres-url URL] [--no-analyze]

For each system, in one run and on the same PostgreSQL server, each in a database of its own
created for it (and dropped at the end):

* **enqueue**: one producer puts N jobs in the queue, each system in batches of
  ``--enqueue-batch`` through its list API: imageproc ``Repository.add_many`` (one transaction
  per batch), PgQueuer ``Queries.enqueue`` and procrastinate ``batch_defer_async``.
* **claim+complete**: with the queue full (and ANALYZEd, unless ``--no-analyze``), 4 workers
  take every job, ``B`` at a time where the system has a batch size, run a no-op and record it
  done; timed from the workers' start until the last result is committed: for imageproc, until
  all 4 threads have found the queue empty; for PgQueuer and procrastinate, until their table
  shows no unfinished job (their workers take a second or more to wind down afterwards).

Rows: imageproc on PostgreSQL and on SQLite (a temporary file), each once claiming ``B`` tasks at
a time and recording each batch with ``record_many`` (one transaction), and once unbatched
(claim 1, ``complete``); PgQueuer (psycopg driver); procrastinate (psycopg connector). A system
whose package is missing prints "not installed". Every row is checked: each job ran exactly once
(counted by the workers or the no-op entrypoint) and the database holds every job as finished.
The ratio columns divide each row's claim+complete rate by PgQueuer's and procrastinate's.

Each phase of each system is bounded by ``--timeout`` seconds (and every statement by a minute),
so the script always ends.
"""

from __future__ import annotations

import sys
from pathlib import Path

# This file is named like the standard library's queue module, which psycopg and concurrent.futures
# import; run as a script, its own folder comes first on sys.path and would shadow it.
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    del sys.path[0]

import argparse
import asyncio
import collections
import contextlib
import importlib.metadata
import logging
import os
import platform
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import psycopg
import sqlalchemy as sa
from psycopg import sql

from imageproc import SourceInfo, Task
from imageproc.backends.sql import SQLBackend
from imageproc.clock import utcnow
from imageproc.pipeline import DEFAULT_PIPELINE

WORKERS = 4
DB_PREFIX = "queue_bench_"
#: Bounds every statement, so a stuck one fails the row instead of hanging the run.
STATEMENT_TIMEOUT = "-c statement_timeout=60000"


class BenchmarkError(Exception):
    """A system did not finish, or did not run every job exactly once."""


@dataclass(frozen=True)
class Config:
    enqueue_batch: int  # jobs per enqueue call
    analyze: bool  # ANALYZE between enqueue and claim
    timeout: float  # seconds per system


@dataclass
class Row:
    system: str
    enqueue: float | None = None  # jobs per second
    process: float | None = None  # claim+complete, jobs per second
    note: str = ""


# -- PostgreSQL databases ---------------------------------------------------------------------


class Server:
    """Creates one fresh database per system on the server at ``url``, and drops them all."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.created: list[str] = []

    def _admin(self, statement: str, name: str) -> None:
        with psycopg.connect(self.url, autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql.SQL(statement).format(sql.Identifier(name)))

    def fresh(self, system: str) -> str:
        """A new empty database for ``system``; returns its libpq conninfo."""
        name = DB_PREFIX + system
        self._admin("DROP DATABASE IF EXISTS {} WITH (FORCE)", name)
        self._admin("CREATE DATABASE {}", name)
        self.created.append(name)
        return psycopg.conninfo.make_conninfo(
            self.url, dbname=name, connect_timeout=10, options=STATEMENT_TIMEOUT
        )

    def drop_all(self) -> None:
        for name in self.created:
            self._admin("DROP DATABASE IF EXISTS {} WITH (FORCE)", name)
        self.created.clear()

    def version(self) -> str:
        with psycopg.connect(self.url, connect_timeout=10) as conn:
            row = conn.execute("SHOW server_version").fetchone()
        return f"PostgreSQL {row[0] if row else '?'}"


def sqlalchemy_url(conninfo: str) -> str:
    """The SQLAlchemy URL (psycopg 3) of a libpq conninfo."""
    params = psycopg.conninfo.conninfo_to_dict(conninfo)
    url = sa.URL.create(
        "postgresql+psycopg",
        username=str(params.get("user") or "") or None,
        password=str(params.get("password") or "") or None,
        host=str(params.get("host") or "") or None,
        port=int(params["port"]) if params.get("port") else None,
        database=str(params["dbname"]),
        query={"connect_timeout": "10", "options": STATEMENT_TIMEOUT},
    )
    return url.render_as_string(hide_password=False)


def rate(jobs: int, started: float) -> float:
    return jobs / (time.perf_counter() - started)


def exactly_once(counts: collections.Counter[Any], jobs: int) -> None:
    """Every one of ``jobs`` jobs ran, and none ran twice."""
    twice = sum(1 for n in counts.values() if n > 1)
    if len(counts) != jobs or twice:
        raise BenchmarkError(f"{len(counts)} distinct jobs ran of {jobs}; {twice} more than once")


# -- imageproc --------------------------------------------------------------------------------


def new_task() -> Task:
    return Task.new(
        pipeline=DEFAULT_PIPELINE,
        source_key="originals/ab/x.jpg",
        source=SourceInfo("JPEG", 1, 1, 1, "a" * 64),
        now=utcnow(),
    )


def imageproc(url: str, jobs: int, batch: int, *, batched: bool, config: Config) -> Row:
    """Enqueue with ``add_many`` in lists, then drain with 4 threads: claim ``batch`` and
    ``record_many`` the lot (``batched``), or claim 1 and ``complete`` it. Timed until every
    thread has found the queue empty, right after its last commit."""
    backend = SQLBackend(url)
    try:
        backend.migrate()
        started, deadline = time.perf_counter(), time.monotonic() + config.timeout
        for first in range(0, jobs, config.enqueue_batch):
            backend.add_many([new_task() for _ in range(min(config.enqueue_batch, jobs - first))])
            if time.monotonic() > deadline:
                raise BenchmarkError(f"enqueue timed out after {config.timeout:g} s")
        enqueue = rate(jobs, started)
        if config.analyze:
            with backend.engine.begin() as conn:
                conn.exec_driver_sql("ANALYZE")

        deadline = time.monotonic() + config.timeout
        done: list[list[str]] = [[] for _ in range(WORKERS)]
        errors: list[BaseException] = []

        def work(index: int) -> None:
            name, limit = f"bench-{index}", batch if batched else 1
            try:
                while time.monotonic() < deadline:
                    leases = backend.claim(name, lease_seconds=60, limit=limit)
                    if not leases:
                        return
                    if batched:
                        results = [(lease, lease.task.succeed((), utcnow())) for lease in leases]
                        if not all(backend.record_many(results)):
                            raise BenchmarkError("record_many lost a lease")
                    else:
                        for lease in leases:
                            backend.complete(lease, lease.task.succeed((), utcnow()))
                    done[index].extend(lease.task.id for lease in leases)
            except BaseException as error:
                errors.append(error)

        # Daemon threads: one stuck in the database cannot keep the script alive.
        threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(WORKERS)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        process = rate(jobs, started)
        if any(thread.is_alive() for thread in threads):
            for thread in threads:  # past the deadline, each stops at its next turn
                thread.join(10)
            raise BenchmarkError(f"claim+complete timed out after {config.timeout:g} s")
        if errors:
            raise BenchmarkError(f"a worker failed: {errors[0]!r}")

        exactly_once(collections.Counter(i for ids in done for i in ids), jobs)
        with backend.engine.connect() as conn:
            query = (
                "SELECT status, count(*) FROM imageproc_tasks WHERE attempts = 1 GROUP BY status"
            )
            statuses = dict(conn.execute(sa.text(query)).all())
        if statuses != {"succeeded": jobs}:
            raise BenchmarkError(f"database holds {statuses}, not {jobs} succeeded at attempt 1")
        return Row("", enqueue, process)
    finally:
        backend.close()


# -- the asyncio systems ----------------------------------------------------------------------


async def within(work: Coroutine[Any, Any, None], seconds: float, what: str = "") -> None:
    try:
        await asyncio.wait_for(work, seconds)
    except TimeoutError as error:
        raise BenchmarkError(f"{what or 'claim+complete'} timed out after {seconds:g} s") from error


async def connect(conninfo: str) -> psycopg.AsyncConnection[Any]:
    return await psycopg.AsyncConnection.connect(conninfo, autocommit=True)


async def drained(
    conn: psycopg.AsyncConnection[Any],
    unfinished: sql.Composable,
    workers: asyncio.Future[Any],
    ran: Callable[[], int],
    jobs: int,
) -> None:
    """Return as soon as every job has run and the query ``unfinished`` counts none left, i.e.
    every result is committed.

    The asyncio systems are timed to this moment rather than to their workers' return, since
    both take a second or more to wind down after the last job (PgQueuer's listeners look for
    shutdown once a second), which has nothing to do with throughput. The database is polled (every
    5 ms) only once the no-op entrypoint has counted all ``jobs`` runs, so that polling does not
    compete with the workers for the server.
    """
    while True:
        if ran() >= jobs:
            cursor = await conn.execute(unfinished)
            row = await cursor.fetchone()
            if row and row[0] == 0:
                return
        if workers.done():
            workers.result()  # a worker's exception, if any
            raise BenchmarkError(f"the workers stopped after {ran()} of {jobs} jobs")
        await asyncio.sleep(0.005)


async def pgqueuer(conninfo: str, jobs: int, batch: int, config: Config) -> Row:
    """Enqueue with ``Queries.enqueue`` in lists, then drain with 4 QueueManagers.

    4 workers = 4 ``QueueManager`` instances, each on its own async psycopg connection with its
    own listener, dequeuing ``batch`` jobs at a time (the same knob as imageproc's claim batch),
    all on one event loop in one thread. That is how PgQueuer's own drain benchmark
    (tools/benchmark.py: ``--dequeue 5`` consumers, one connection each) models N workers, and it
    mirrors imageproc's 4 threads claiming on their own pooled connections. Timed until the queue
    table is empty: PgQueuer deletes a job (and logs it) when its completion is flushed. Then the
    managers are stopped through their shutdown events, which flushes their buffers and closes
    their listeners.
    """
    from pgqueuer.db import PsycopgDriver
    from pgqueuer.models import Job
    from pgqueuer.qm import QueueManager
    from pgqueuer.queries import Queries
    from pgqueuer.types import QueueExecutionMode

    async with await connect(conninfo) as admin:
        queries = Queries(PsycopgDriver(admin))
        await queries.install()
        settings = queries.qbe.settings
        queue, log = sql.Identifier(settings.queue_table), sql.Identifier(settings.queue_table_log)

        async def put() -> None:
            for first in range(0, jobs, config.enqueue_batch):
                n = min(config.enqueue_batch, jobs - first)
                await queries.enqueue(["noop"] * n, [None] * n, [0] * n)

        started = time.perf_counter()
        await within(put(), config.timeout, "enqueue")
        enqueue = rate(jobs, started)
        if config.analyze:
            await admin.execute("ANALYZE")

        counts: collections.Counter[int] = collections.Counter()
        connections = [await connect(conninfo) for _ in range(WORKERS)]
        managers = [QueueManager(Queries(PsycopgDriver(conn))) for conn in connections]
        for manager in managers:

            @manager.entrypoint("noop")
            async def noop(job: Job) -> None:
                counts[job.id] += 1

        started = time.perf_counter()
        runs = asyncio.gather(
            *(m.run(batch_size=batch, mode=QueueExecutionMode.drain) for m in managers)
        )
        try:
            unfinished = sql.SQL("SELECT count(*) FROM {}").format(queue)
            await within(drained(admin, unfinished, runs, counts.total, jobs), config.timeout)
            process = rate(jobs, started)
        finally:
            for manager in managers:
                manager.shutdown.set()
            try:
                await asyncio.wait_for(runs, 30)
            finally:
                for conn in connections:
                    await conn.close()

        exactly_once(counts, jobs)
        cursor = await admin.execute(
            sql.SQL("SELECT count(*) FROM {} WHERE status = 'successful'").format(log)
        )
        row = await cursor.fetchone()
        if not row or row[0] != jobs:
            raise BenchmarkError(f"{row[0] if row else '?'} jobs logged successful, not {jobs}")
    return Row("", enqueue, process, f"durability={settings.durability.value}")


async def procrastinate(conninfo: str, jobs: int, config: Config) -> Row:
    """Defer with ``batch_defer_async``, then drain with one worker at ``concurrency=4``:
    procrastinate's way to run 4 jobs at once in one process (``wait=False`` stops it once the
    queue is empty). Timed until no job is left unfinished in its table."""
    from procrastinate import App, PsycopgConnector

    # It warns about an app made in __main__ (for task names; ours has an explicit name).
    logging.getLogger("procrastinate").setLevel(logging.ERROR)
    # The pool would default to 4 connections: enough for the 4 jobs' completions but not also
    # the fetch, so allow more rather than make procrastinate queue for connections.
    app = App(connector=PsycopgConnector(conninfo=conninfo, min_size=4, max_size=8))
    counts: collections.Counter[int] = collections.Counter()

    @app.task(name="noop")
    async def noop(i: int) -> None:
        counts[i] += 1

    async with app.open_async(), await connect(conninfo) as admin:
        await app.schema_manager.apply_schema_async()

        async def put() -> None:
            for first in range(0, jobs, config.enqueue_batch):
                last = min(first + config.enqueue_batch, jobs)
                await noop.batch_defer_async(*({"i": i} for i in range(first, last)))

        started = time.perf_counter()
        await within(put(), config.timeout, "enqueue")
        enqueue = rate(jobs, started)
        if config.analyze:
            await admin.execute("ANALYZE")

        started = time.perf_counter()
        worker = asyncio.ensure_future(
            app.run_worker_async(concurrency=WORKERS, wait=False, install_signal_handlers=False)
        )
        try:
            unfinished = sql.SQL(
                "SELECT count(*) FROM procrastinate_jobs WHERE status <> 'succeeded'"
            )
            await within(drained(admin, unfinished, worker, counts.total, jobs), config.timeout)
            process = rate(jobs, started)
        finally:
            worker.cancel()  # a no-op once it has stopped by itself
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(worker, 30)

        exactly_once(counts, jobs)
        cursor = await admin.execute(
            "SELECT status::text, count(*) FROM procrastinate_jobs WHERE attempts = 1"
            " GROUP BY status"
        )
        statuses = dict(await cursor.fetchall())
    if statuses != {"succeeded": jobs}:
        raise BenchmarkError(f"database holds {statuses}, not {jobs} succeeded at attempt 1")
    return Row("", enqueue, process)


# -- the run ----------------------------------------------------------------------------------


def version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def measure(name: str, run: Callable[[], Row]) -> Row:
    print(f"  {name} ...", end="", flush=True)
    try:
        row = run()
    except ImportError as error:
        row = Row(name, note=f"not installed ({error.name})")
    except Exception as error:
        row = Row(name, note=f"FAILED: {error}")
    row.system = name
    print(f" {row.process:,.0f} jobs/s" if row.process else f" {row.note}")
    return row


def print_table(rows: list[Row]) -> None:
    def reference(prefix: str) -> float | None:
        return next((r.process for r in rows if r.system.startswith(prefix)), None)

    references = [reference("PgQueuer"), reference("procrastinate")]
    width = max(len(r.system) for r in rows)
    columns = ["enqueue/s", "claim+complete/s", "x PgQueuer", "x procrastinate"]
    print(f"{'system':<{width}}  " + "  ".join(columns))
    for row in rows:
        cells = [
            f"{row.enqueue:,.0f}" if row.enqueue else "-",
            f"{row.process:,.0f}" if row.process else "-",
            *(f"{row.process / r:.2f}x" if row.process and r else "-" for r in references),
        ]
        line = "  ".join(
            f"{cell:>{len(column)}}" for cell, column in zip(cells, columns, strict=True)
        )
        print(f"{row.system:<{width}}  {line}  {row.note}".rstrip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000, help="jobs per system (N)")
    parser.add_argument("--batch", type=int, default=10, help="claim/dequeue batch size (B)")
    parser.add_argument(
        "--enqueue-batch", type=int, default=1000, help="jobs per enqueue call (every system)"
    )
    parser.add_argument(
        "--no-analyze",
        action="store_true",
        help="skip ANALYZE between enqueue and claim (planners then see an empty table's stats)",
    )
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per phase")
    args = parser.parse_args()
    jobs, batch = args.jobs, args.batch
    config = Config(args.enqueue_batch, not args.no_analyze, args.timeout)
    server = Server(args.postgres_url)

    print(
        f"{jobs:,} no-op jobs per system, {WORKERS} workers, claim batch {batch}, "
        f"enqueue batch {config.enqueue_batch}, "
        f"ANALYZE after enqueue: {'yes' if config.analyze else 'no'}"
    )
    print(
        f"machine: {os.cpu_count()} cores ({platform.machine()}), Python "
        f"{platform.python_version()}, {server.version()}, pgqueuer {version('pgqueuer')}, "
        f"procrastinate {version('procrastinate')}, imageproc {version('imageproc')}"
    )

    def on_postgres(name: str, batched: bool) -> Row:
        url = sqlalchemy_url(server.fresh(name))
        return imageproc(url, jobs, batch, batched=batched, config=config)

    def on_sqlite(batched: bool) -> Row:
        with tempfile.TemporaryDirectory(
            prefix="queue-bench-", ignore_cleanup_errors=True
        ) as folder:
            url = "sqlite:///" + str(Path(folder) / "queue.db")
            return imageproc(url, jobs, batch, batched=batched, config=config)

    systems: list[tuple[str, Callable[[], Row]]] = [
        (
            "PgQueuer (psycopg)",
            lambda: asyncio.run(pgqueuer(server.fresh("pgqueuer"), jobs, batch, config)),
        ),
        (
            "procrastinate (psycopg)",
            lambda: asyncio.run(procrastinate(server.fresh("procrastinate"), jobs, config)),
        ),
        (
            f"imageproc PostgreSQL (claim {batch}, record_many)",
            lambda: on_postgres("imageproc", batched=True),
        ),
        (
            "imageproc PostgreSQL (claim 1, complete)",
            lambda: on_postgres("imageproc_unbatched", batched=False),
        ),
        (f"imageproc SQLite (claim {batch}, record_many)", lambda: on_sqlite(batched=True)),
        ("imageproc SQLite (claim 1, complete)", lambda: on_sqlite(batched=False)),
    ]
    rows: list[Row] = []
    try:
        for name, run in systems:
            rows.append(measure(name, run))
    finally:
        server.drop_all()
    print()
    print_table(rows)


if __name__ == "__main__":
    main()
