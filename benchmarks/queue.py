"""The queue's real path against PgQueuer and procrastinate: throughput and latency.

    python benchmarks/queue.py [--jobs N] [--batch B] [--latency-samples S] [--postgres-url URL]

For each system, in one run and on the same PostgreSQL server, each in a database of its own
created for it (and dropped at the end):

* **enqueue**: one producer puts N jobs in the queue in lists of ``--enqueue-batch``:
  imageproc ``Repository.add_many`` (what ``submit_many`` records with) or, for the tiny-image
  rows, ``Processor.submit_many`` itself; PgQueuer ``Queries.enqueue``; procrastinate
  ``batch_defer_async``.
* **claim+complete**: with the queue full (and ANALYZEd, unless ``--no-analyze``), 4 workers
  take every job and record it done.

Rows, each through the product's own code path:

* **imageproc, WorkerPool, no-op** (PostgreSQL and SQLite): the real ``WorkerPool`` with 4
  threads, its claimer leasing for every idle thread in one statement, with a no-op step
  injected through the pool's interface that hands success to the real ``Recorder`` (group
  commit), as ``Execution.start`` does. Timed until the last outcome is committed.
* **imageproc, submit_many+wait, tiny images** (PostgreSQL and SQLite): the public API as an
  application uses it: ``Processor.from_urls(db, "memory://")``, ``submit_many`` of an 8x8 PNG
  with ``t=fit:4x4,png``, ``start(workers=4)`` and ``wait`` on each task. Timed from ``start``
  until the last ``wait`` returns.
* **PgQueuer** (psycopg driver, 4 QueueManagers, dequeue batch ``B``): timed to its last job's
  call. **procrastinate** (psycopg connector, one worker at concurrency 4): timed until its
  table shows no unfinished job.

Every row is checked: each job ran exactly once and the database holds every job as finished.
The ratio columns divide each row's claim+complete rate by PgQueuer's and procrastinate's. A
system whose package is missing prints "not installed".

**Latency** (``--latency-samples`` tasks on each database, 4 idle workers): *pickup*, from
``submit`` returning to a worker reading the task's original; *wait*, from the start of the
statement that records (and commits) the outcome to ``wait`` returning in a second Processor
with backends of its own (as another process would: it hears of the end from the database alone,
by LISTEN/NOTIFY on PostgreSQL and by its poll on SQLite). p50 and p99.

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
import io
import logging
import os
import platform
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import psycopg
import sqlalchemy as sa
from PIL import Image
from psycopg import sql

from imageproc import Lease, Processor, SourceInfo, Task, TaskStatus, Upload
from imageproc._clock import utcnow
from imageproc._execution import Recorder
from imageproc._worker import WorkerPool
from imageproc.backends.sql._backend import SQLBackend
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


def enqueue_noops(backend: SQLBackend, jobs: int, config: Config) -> float:
    """Put ``jobs`` no-op tasks in the queue with ``add_many`` (what ``submit_many`` records
    with), in lists of ``--enqueue-batch``; returns tasks per second."""
    started, deadline = time.perf_counter(), time.monotonic() + config.timeout
    for first in range(0, jobs, config.enqueue_batch):
        backend.add_many([new_task() for _ in range(min(config.enqueue_batch, jobs - first))])
        if time.monotonic() > deadline:
            raise BenchmarkError(f"enqueue timed out after {config.timeout:g} s")
    enqueued = rate(jobs, started)
    if config.analyze and backend.dialect == "postgresql":
        with backend.engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE")
    return enqueued


def check_succeeded_once(backend: SQLBackend, jobs: int) -> None:
    with backend.engine.connect() as conn:
        query = "SELECT status, count(*) FROM imageproc_tasks WHERE attempts = 1 GROUP BY status"
        statuses = dict(conn.execute(sa.text(query)).all())
    if statuses != {"succeeded": jobs}:
        raise BenchmarkError(f"database holds {statuses}, not {jobs} succeeded at attempt 1")


def imageproc_noop(url: str, jobs: int, config: Config) -> Row:
    """The product's own ``WorkerPool`` (4 threads, its claimer leasing for every idle thread in
    one statement, its heartbeat) with a no-op step injected through the pool's interface: the
    step hands success to the product's ``Recorder`` (outcomes ready together in one
    transaction) and returns its future, as ``Execution.start`` does. Timed from the pool's
    start until the last outcome is committed."""
    backend = SQLBackend(url)
    try:
        backend.migrate()
        enqueued = enqueue_noops(backend, jobs, config)
        recorder = Recorder(backend)
        counts: collections.Counter[str] = collections.Counter()
        lock, all_done = threading.Lock(), threading.Event()

        def noop(lease: Lease) -> Future[bool]:
            # As Execution.start does: hand the outcome over and return at once.
            recorded = recorder.record_soon(lease, lease.task.succeed((), utcnow()))
            recorded.add_done_callback(lambda future: count(lease, future))
            return recorded

        def count(lease: Lease, recorded: Future[bool]) -> None:
            if not recorded.result():
                raise BenchmarkError(f"task {lease.task.id}: lease lost")
            with lock:
                counts[lease.task.id] += 1
                if counts.total() >= jobs:
                    all_done.set()

        pool = WorkerPool(backend, noop, min_workers=WORKERS, lease_seconds=60)
        started = time.perf_counter()
        pool.start()
        try:
            if not all_done.wait(config.timeout):
                raise BenchmarkError(f"claim+complete timed out after {config.timeout:g} s")
            processed = rate(jobs, started)
        finally:
            pool.stop(30)
        exactly_once(counts, jobs)
        check_succeeded_once(backend, jobs)
        return Row("", enqueued, processed)
    finally:
        backend.close()


def tiny_image() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buffer, "PNG")
    return buffer.getvalue()


def imageproc_tiny(url: str, jobs: int, config: Config) -> Row:
    """Tiny-image tasks through the public API, as an application runs them: ``submit_many``
    (in lists of ``--enqueue-batch``) of an 8x8 PNG with ``t=fit:4x4,png``, then
    ``start(workers=4)`` and ``wait`` on each task. The enqueue column is ``submit_many``'s rate;
    the processing column is timed from ``start`` until the last ``wait`` has returned."""
    image, deadline = tiny_image(), time.monotonic() + config.timeout
    with Processor.from_urls(url, "memory://") as processor:
        ids: list[str] = []
        started = time.perf_counter()
        for first in range(0, jobs, config.enqueue_batch):
            count = min(config.enqueue_batch, jobs - first)
            results = processor.submit_many([Upload(image, "t=fit:4x4,png")] * count)
            ids += [task.id for task in results if isinstance(task, Task)]
            if len(ids) != first + count:
                raise BenchmarkError(f"submit_many refused {first + count - len(ids)} uploads")
        enqueued = rate(jobs, started)
        started = time.perf_counter()
        processor.start(workers=WORKERS)
        try:
            for task_id in ids:
                task = processor.wait(task_id, timeout=max(0.1, deadline - time.monotonic()))
                if task.status != TaskStatus.SUCCEEDED or task.attempts != 1:
                    raise BenchmarkError(f"task {task_id} is {task.status} at {task.attempts}")
            processed = rate(jobs, started)
        finally:
            processor.stop(30)
    return Row("", enqueued, processed)


# -- latency ----------------------------------------------------------------------------------


@dataclass
class Latency:
    system: str
    pickup: list[float]  # seconds from submit returning to the task's original being read
    wait: list[float]  # seconds from the outcome's recording statement to wait() returning


class _Timed:
    """Delegates to the real backend; notes when a worker starts a task (reads its original)
    and when an outcome has been committed (record_many returned)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.started: dict[str, float] = {}
        self.committed: dict[str, float] = {}  # when the outcome's recording began

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def get(self, key: str) -> bytes:
        self.started.setdefault(key, time.perf_counter())
        return self.inner.get(key)  # type: ignore[no-any-return]

    def record_many(self, results: Any) -> list[bool]:
        # Noted as the recording statement starts: its commit (and the NOTIFY with it) lands
        # before it returns, so a waiter elsewhere may well return first. The wait figure thus
        # includes the statement's own round trip: an upper bound.
        now = time.perf_counter()
        for _, task in results:
            self.committed.setdefault(task.id, now)
        recorded: list[bool] = self.inner.record_many(results)
        return recorded


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def latency(url: str, samples: int, config: Config, *, name: str) -> Latency:
    """With 4 idle workers, submit one task at a time and measure (1) pickup: from ``submit``
    returning to a worker reading the task's original, and (2) wait: from the start of the
    statement that records the outcome to ``wait`` returning in a *separate* Processor (its own
    backend and connections, like another process: it hears of the end only from the database,
    by LISTEN/NOTIFY on PostgreSQL or by its poll on SQLite)."""
    deadline = time.monotonic() + config.timeout
    pickup, waited = [], []
    with (
        Processor.from_urls(url, "file://" + tempfile.mkdtemp(prefix="queue-lat-")) as workers,
        Processor.from_urls(url, "memory://", migrate=False) as waiter,
    ):
        timed_storage, timed_queue = _Timed(workers.storage), _Timed(workers.queue)
        workers.storage, workers.queue = timed_storage, timed_queue
        workers.start(workers=WORKERS)
        try:
            time.sleep(0.5)  # let the pool settle into its idle wait
            for index in range(samples):
                if time.monotonic() > deadline:
                    raise BenchmarkError(f"latency timed out after {config.timeout:g} s")
                image = Image.new("RGB", (8, 8), (index % 256, index // 256 % 256, 7))
                buffer = io.BytesIO()
                image.save(buffer, "PNG")
                task = workers.submit(buffer.getvalue(), "t=fit:4x4,png")
                submitted = time.perf_counter()
                done = waiter.wait(task.id, timeout=30)
                returned = time.perf_counter()
                if done.status != TaskStatus.SUCCEEDED:
                    raise BenchmarkError(f"task {task.id} is {done.status}")
                pickup.append(timed_storage.started[task.source_key] - submitted)
                waited.append(returned - timed_queue.committed[task.id])
                time.sleep(0.02)  # idle again before the next one
        finally:
            workers.stop(30)
    return Latency(name, pickup, waited)


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

    Timed from the managers' start to the last job's call (the issue's rule; its completions are
    flushed after that, which the drained table, checked afterwards, confirms).

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
        last_call = [0.0]
        connections = [await connect(conninfo) for _ in range(WORKERS)]
        managers = [QueueManager(Queries(PsycopgDriver(conn))) for conn in connections]
        for manager in managers:

            @manager.entrypoint("noop")
            async def noop(job: Job) -> None:
                counts[job.id] += 1
                last_call[0] = time.perf_counter()

        started = time.perf_counter()
        runs = asyncio.gather(
            *(m.run(batch_size=batch, mode=QueueExecutionMode.drain) for m in managers)
        )
        try:
            unfinished = sql.SQL("SELECT count(*) FROM {}").format(queue)
            await within(drained(admin, unfinished, runs, counts.total, jobs), config.timeout)
            # Timed to its last job's call, not to the flush of that job's completion.
            process = jobs / (last_call[0] - started)
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


def print_latency(results: list[Latency]) -> None:
    print()
    print("latency with idle workers, ms (p50 / p99):")
    for result in results:
        pickup = [x * 1000 for x in result.pickup]
        wait = [x * 1000 for x in result.wait]
        print(
            f"  {result.system:<12} pickup {percentile(pickup, 0.5):6.1f} / "
            f"{percentile(pickup, 0.99):6.1f}   wait {percentile(wait, 0.5):6.1f} / "
            f"{percentile(wait, 0.99):6.1f}   ({len(pickup)} tasks)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000, help="jobs per system (N)")
    parser.add_argument("--batch", type=int, default=10, help="PgQueuer's dequeue batch size")
    parser.add_argument(
        "--enqueue-batch", type=int, default=1000, help="jobs per enqueue call (every system)"
    )
    parser.add_argument(
        "--no-analyze",
        action="store_true",
        help="skip ANALYZE between enqueue and claim (planners then see an empty table's stats)",
    )
    parser.add_argument(
        "--latency-samples", type=int, default=200, help="tasks per latency measurement"
    )
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per phase")
    args = parser.parse_args()
    jobs, batch = args.jobs, args.batch
    config = Config(args.enqueue_batch, not args.no_analyze, args.timeout)
    server = Server(args.postgres_url)

    print(
        f"{jobs:,} jobs per system, {WORKERS} workers, PgQueuer batch {batch}, "
        f"enqueue batch {config.enqueue_batch}, "
        f"ANALYZE after enqueue: {'yes' if config.analyze else 'no'}"
    )
    print(
        f"machine: {os.cpu_count()} cores ({platform.machine()}), Python "
        f"{platform.python_version()}, {server.version()}, pgqueuer {version('pgqueuer')}, "
        f"procrastinate {version('procrastinate')}, imageproc {version('imageproc')}"
    )

    def on_postgres(name: str, run: Callable[[str], Row]) -> Row:
        return run(sqlalchemy_url(server.fresh(name)))

    def on_sqlite(run: Callable[[str], Row]) -> Row:
        with tempfile.TemporaryDirectory(
            prefix="queue-bench-", ignore_cleanup_errors=True
        ) as folder:
            return run("sqlite:///" + str(Path(folder) / "queue.db"))

    def noop(url: str) -> Row:
        return imageproc_noop(url, jobs, config)

    def tiny(url: str) -> Row:
        return imageproc_tiny(url, jobs, config)

    systems: list[tuple[str, Callable[[], Row]]] = [
        (
            "PgQueuer (psycopg)",
            lambda: asyncio.run(pgqueuer(server.fresh("pgqueuer"), jobs, batch, config)),
        ),
        (
            "procrastinate (psycopg)",
            lambda: asyncio.run(procrastinate(server.fresh("procrastinate"), jobs, config)),
        ),
        ("imageproc PostgreSQL, WorkerPool, no-op", lambda: on_postgres("imageproc", noop)),
        ("imageproc PostgreSQL, submit_many+wait, tiny images", lambda: on_postgres("tiny", tiny)),
        ("imageproc SQLite, WorkerPool, no-op", lambda: on_sqlite(noop)),
        ("imageproc SQLite, submit_many+wait, tiny images", lambda: on_sqlite(tiny)),
    ]
    rows: list[Row] = []
    latencies: list[Latency] = []
    try:
        for name, run in systems:
            rows.append(measure(name, run))
        if args.latency_samples > 0:
            for name, make_url in (
                ("PostgreSQL", lambda: sqlalchemy_url(server.fresh("latency"))),
                ("SQLite", lambda: "sqlite:///" + tempfile.mkdtemp(prefix="queue-lat-") + "/q.db"),
            ):
                print(f"  latency on {name} ...", flush=True)
                try:
                    latencies.append(latency(make_url(), args.latency_samples, config, name=name))
                except Exception as error:
                    print(f"  latency on {name} FAILED: {error}")
    finally:
        server.drop_all()
    print()
    print_table(rows)
    if latencies:
        print_latency(latencies)


if __name__ == "__main__":
    main()
