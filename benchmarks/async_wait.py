"""How soon ``AsyncProcessor.wait`` wakes, and what 1,000 concurrent waiters cost in threads.

    python benchmarks/async_wait.py [--waiters 1000] [--workers 4] [--rounds 3]
                                    [--postgres-url URL] [--no-postgres]

For SQLite (a file in a temporary folder) and PostgreSQL (a fresh database on the server at
``--postgres-url``, dropped after), ``--waiters`` tiny tasks are submitted in one
``submit_many``, one ``wait`` per task is started under ``asyncio.run``, and then ``--workers``
worker threads process them, either

* **this**: workers of the same Processor (the end is pushed in-process), or
* **another**: workers of a second Processor on the same database, whose completions this one
  never hears, as with another process: on SQLite the AsyncProcessor's one shared sweep finds
  the ends (every 0.1 s); on PostgreSQL ``LISTEN``/``NOTIFY`` does.

Latency is per task, from the moment the recording Processor published the final status (right
after its commit: its ``Completions.publish_tasks``, stamped on a monotonic clock shared by
both Processors in this process) to the moment the waiter's ``await`` returned. Reported: p50,
p99 and max over all tasks of all rounds, and the process's thread count before the waits
start, while the 1,000 waiters wait (before any worker starts), and at its peak (workers
included).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

# benchmarks/queue.py and benchmarks/http.py would shadow the standard library's modules of
# those names, which imageproc imports: run as a script, this folder is first on sys.path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import sqlalchemy as sa  # noqa: E402

from imageproc import AsyncProcessor, Processor, Task, TaskStatus, Upload  # noqa: E402
from imageproc.testing import sample_image  # noqa: E402

PIPELINE = "t=fit:16x16,jpeg:q70"


class Stamps:
    """When each task's end was published by a Processor (monotonic seconds)."""

    def __init__(self) -> None:
        self.at: dict[str, float] = {}

    def watch(self, processor: Processor) -> None:
        completions = processor.repository.completions  # type: ignore[attr-defined]
        publish = completions.publish_tasks

        def stamped(tasks: Iterable[Task]) -> None:
            tasks = list(tasks)
            now = time.monotonic()
            for task in tasks:
                if task.status.is_final:
                    self.at.setdefault(task.id, now)
            publish(tasks)

        completions.publish_tasks = stamped


class ThreadPeak:
    def __init__(self) -> None:
        self.peak = threading.active_count()

    async def run(self) -> None:
        while True:
            self.peak = max(self.peak, threading.active_count())
            await asyncio.sleep(0.005)


async def one_round(
    processor: AsyncProcessor, recorder: Processor, stamps: Stamps, args: argparse.Namespace
) -> tuple[list[float], int, int, int]:
    image = sample_image(32, 24)
    results = await processor.submit_many([Upload(image, PIPELINE)] * args.waiters)
    tasks = [r for r in results if isinstance(r, Task)]
    assert len(tasks) == args.waiters, results[:3]
    woke: dict[str, float] = {}

    async def wait(task_id: str) -> None:
        task = await processor.wait(task_id, timeout=300)
        woke[task_id] = time.monotonic()
        assert task.status == TaskStatus.SUCCEEDED, task

    before = threading.active_count()
    sampler = ThreadPeak()
    sampling = asyncio.create_task(sampler.run())
    waits = [asyncio.create_task(wait(t.id)) for t in tasks]
    await asyncio.sleep(0.5)
    waiting = sampler.peak
    await asyncio.to_thread(recorder.start, args.workers)
    await asyncio.wait_for(asyncio.gather(*waits), 300)
    sampling.cancel()
    await asyncio.to_thread(recorder.stop, 10)
    latencies = [woke[t.id] - stamps.at[t.id] for t in tasks]
    return latencies, before, waiting, sampler.peak


async def measure(url: str, storage: str, where: str, args: argparse.Namespace) -> str:
    stamps = Stamps()
    async with AsyncProcessor.from_urls(url, storage, isolation="thread") as processor:
        other = (
            await asyncio.to_thread(Processor.from_urls, url, storage, isolation="thread")
            if where == "another"
            else None
        )
        recorder = other or processor.sync
        stamps.watch(recorder)
        try:
            # Warm-up: connections, the listener, the render path.
            await one_round(
                processor, recorder, stamps, argparse.Namespace(**{**vars(args), "waiters": 20})
            )
            all_latencies: list[float] = []
            befores, waitings, peaks = [], [], []
            for _ in range(args.rounds):
                latencies, before, waiting, peak = await one_round(
                    processor, recorder, stamps, args
                )
                all_latencies += latencies
                befores.append(before)
                waitings.append(waiting)
                peaks.append(peak)
        finally:
            if other is not None:
                await asyncio.to_thread(other.close)
    ms = sorted(x * 1000 for x in all_latencies)
    p50 = statistics.median(ms)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    return (
        f"{where:8} p50 {p50:7.1f} ms  p99 {p99:7.1f} ms  max {ms[-1]:7.1f} ms   threads: before"
        f" {max(befores)}, {args.waiters} waiting {max(waitings)}, peak with workers {max(peaks)}"
    )


@contextmanager
def postgres_database(server: str) -> Iterator[str]:
    name = f"imageproc_bench_async_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield sa.make_url(server).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--waiters", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--postgres-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
    )
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    print(
        f"AsyncProcessor.wait: {args.waiters} concurrent waiters, {args.workers} workers,"
        f" {args.rounds} rounds; Python {sys.version.split()[0]}"
    )
    with tempfile.TemporaryDirectory() as folder:
        for where in ("this", "another"):
            db = Path(folder) / f"{where}.db"
            line = asyncio.run(measure(f"sqlite:///{db}", f"file://{folder}/media", where, args))
            print(f"SQLite      {line}")
        if not args.no_postgres:
            for where in ("this", "another"):
                with postgres_database(args.postgres_url) as url:
                    line = asyncio.run(measure(url, f"file://{folder}/media", where, args))
                print(f"PostgreSQL  {line}")


if __name__ == "__main__":
    main()
