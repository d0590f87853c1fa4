"""How soon a webhook reaches its receiver after its task's final status is committed.

    python benchmarks/webhook_latency.py [--tasks 300] [--workers 4] [--postgres-url URL]
                                         [--no-postgres]

For SQLite (a file in a temporary folder) and PostgreSQL (a fresh database, dropped after), a
receiver on loopback (a ``ThreadingHTTPServer`` answering 204) gets the webhooks of ``--tasks``
tiny tasks processed by the product's own path: ``Processor.start`` (the worker pool and the
webhook sender), deliveries written with the final status and sent after commit. Two loads:

* **paced**: one task submitted every 20 ms (the queue never backs up: the latency of one
  webhook when the system is idle);
* **burst**: every task submitted at once (``submit_many``), then the workers started.

Two placements of the sender:

* **same**: the process that records the status sends (every worker process does, by default);
* **other**: the recording Processor does not send (``Webhooks(send=False)``); a second one on
  the same database does, woken by PostgreSQL's ``LISTEN``/``NOTIFY``, or on SQLite by its
  poll (``poll_interval``, 5 s by default; 0.5 s here).

Latency per task: from the moment the recording Processor published the final status (right
after its commit, stamped on a monotonic clock) to the receiver's arrival (same clock, same
process). Reported: p50, p99 and max.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# benchmarks/http.py would shadow the standard library's http: run as a script, this folder is
# first on sys.path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer  # noqa: E402

import sqlalchemy as sa  # noqa: E402

from imageproc import Processor, Task, Upload, Webhooks  # noqa: E402
from imageproc.testing import sample_image  # noqa: E402

PIPELINE = "t=fit:16x16,jpeg:q70"


class Receiver:
    def __init__(self) -> None:
        self.at: dict[str, float] = {}
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                now = time.monotonic()
                body = self.rfile.read(int(self.headers["content-length"]))
                task_id = body.split(b'"id":"', 1)[1].split(b'"', 1)[0].decode()
                receiver.at.setdefault(task_id, now)
                self.send_response(204)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"


def stamp(processor: Processor, at: dict[str, float]) -> None:
    completions = processor.repository.completions  # type: ignore[attr-defined]
    publish = completions.publish_tasks

    def stamped(tasks: Iterable[Task]) -> None:
        tasks = list(tasks)
        now = time.monotonic()
        for task in tasks:
            if task.status.is_final:
                at.setdefault(task.id, now)
        publish(tasks)

    completions.publish_tasks = stamped


def measure(url: str, load: str, placement: str, args: argparse.Namespace) -> list[float]:
    receiver = Receiver()
    secret = Webhooks.new_secret()
    storage = f"file://{tempfile.mkdtemp()}"
    common: dict[str, Any] = {"poll_interval": 0.05}
    sends = placement == "same"
    hooks = Webhooks(
        secrets=[secret], allow=["127.0.0.1"], send=sends, concurrency=args.concurrency
    )
    recorder = Processor.from_urls(url, storage, webhooks=hooks, **common)
    sender = None
    if not sends:
        sender = Processor.from_urls(
            url,
            storage,
            webhooks=Webhooks(
                secrets=[secret],
                allow=["127.0.0.1"],
                poll_interval=0.5,
                concurrency=args.concurrency,
            ),
        )
        sender.start_sending()
    finished: dict[str, float] = {}
    stamp(recorder, finished)
    image = sample_image(32, 24)
    try:
        if load == "burst":
            tasks = recorder.submit_many(
                [Upload(image, PIPELINE, callback_url=receiver.url) for _ in range(args.tasks)]
            )
            ids = [t.id for t in tasks if isinstance(t, Task)]
            recorder.start(workers=args.workers)
        else:
            recorder.start(workers=args.workers)
            ids = []
            for _ in range(args.tasks):
                ids.append(recorder.submit(image, PIPELINE, callback_url=receiver.url).id)
                time.sleep(0.02)
        deadline = time.monotonic() + 120
        while len(receiver.at) < len(ids) and time.monotonic() < deadline:
            time.sleep(0.02)
        missing = len(ids) - len(receiver.at)
        if missing:
            raise SystemExit(f"{missing} webhook(s) never arrived")
        return [receiver.at[i] - finished[i] for i in ids]
    finally:
        recorder.close()
        if sender is not None:
            sender.close()
        receiver.server.shutdown()


def report(where: str, load: str, placement: str, latencies: list[float]) -> str:
    ms = sorted(x * 1000 for x in latencies)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    return (
        f"{where:<10} {load:<6} {placement:<6} {len(ms):>5}  p50 {statistics.median(ms):7.1f} ms"
        f"  p99 {p99:7.1f} ms  max {ms[-1]:7.1f} ms"
    )


@contextmanager
def postgres_database(server: str) -> Iterator[str]:
    name = f"imageproc_bench_hooks_{uuid.uuid4().hex[:8]}"
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
    parser.add_argument("--tasks", type=int, default=300)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=8, help="webhooks sent at once")
    parser.add_argument(
        "--postgres-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
    )
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    print(
        f"{args.tasks} tasks per row, {args.workers} workers, {args.concurrency} webhooks at"
        " once; final status → receiver"
    )
    for load in ("paced", "burst"):
        for placement in ("same", "other"):
            with tempfile.TemporaryDirectory() as folder:
                url = f"sqlite:///{folder}/tasks.db"
                print(report("sqlite", load, placement, measure(url, load, placement, args)))
            if not args.no_postgres:
                with postgres_database(args.postgres_url) as url:
                    print(
                        report("postgresql", load, placement, measure(url, load, placement, args))
                    )


if __name__ == "__main__":
    main()
