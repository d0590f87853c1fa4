"""A dedicated worker process that exposes Prometheus metrics on a port of its own.

    python examples/worker.py [--database URL] [--storage URL] [--workers N|MIN:MAX]
                              [--metrics-port PORT]

Run as many of these as you like, on as many machines, against the same database and storage as
the application that submits the tasks (PostgreSQL and S3 in production; SQLite and a folder on
one machine). It processes tasks until SIGINT or SIGTERM, then lets the tasks in flight finish.
Metrics are at http://127.0.0.1:PORT/metrics (9100 by default). This is what
`imageproc worker --metrics-port PORT` does, written out with the library API.
"""

from __future__ import annotations

import argparse
import logging

from imageproc import Processor
from imageproc.config import parse_workers
from imageproc.metrics import Metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", default="sqlite:///imageproc.db")
    parser.add_argument("--storage", default="file://imageproc-data")
    parser.add_argument("--workers", type=parse_workers, default="2", help="N or MIN:MAX")
    parser.add_argument("--metrics-port", type=int, default=9100)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    # The metrics are the Processor's event hooks; watch() adds the queue and worker gauges,
    # read from the database at each scrape.
    metrics = Metrics()
    with Processor.from_urls(args.database, args.storage, events=metrics) as processor:
        metrics.watch(processor)
        metrics.serve(args.metrics_port)
        print(f"metrics on http://127.0.0.1:{args.metrics_port}/metrics", flush=True)
        processor.run(args.workers)  # blocks until SIGINT/SIGTERM, then stops gracefully
    metrics.close()
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
