"""What ``submit``'s options cost: ``dedupe=True``, ``metadata`` and ``not_before``, on SQLite and
PostgreSQL, against a plain ``submit`` measured in the same run.

    python benchmarks/submit_options.py [--submits 300] [--postgres-url URL]

Each row runs ``Processor.submit`` itself (the checks, the header probe, storing the original in
a local folder, recording the task) on one thread, with one small JPEG per submit, and prints
microseconds per call and the difference to the plain row of its database. ``dedupe`` rows
submit bytes that have no task yet (the lookup finds nothing, then the work is queued: the cost
every first upload pays), and, separately, bytes whose task exists (the lookup answers, and
nothing is stored or recorded). PostgreSQL gets a database of its own, dropped at the end.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

# benchmarks/queue.py and benchmarks/http.py would shadow the standard library's modules of
# those names, which psycopg and imageproc import: run as a script, this folder is first on
# sys.path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import psycopg  # noqa: E402
from PIL import Image  # noqa: E402
from psycopg import sql  # noqa: E402

from imageproc import Processor  # noqa: E402

DATABASE = "imageproc_bench_submit"
PIPELINE = "thumb=fit:128x128,webp"


def images(count: int, seed: int) -> list[bytes]:
    """``count`` different small JPEGs (different bytes, so each is a new original)."""
    found = []
    for n in range(count):
        buffer = io.BytesIO()
        colour = ((seed * 7 + n) % 256, (n * 13) % 256, (n // 256 + seed) % 256)
        Image.new("RGB", (64, 48), colour).save(buffer, "JPEG", quality=80)
        found.append(buffer.getvalue())
    return found


@contextmanager
def postgres(url: str) -> Iterator[str]:
    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DATABASE))
        )
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))
    try:
        yield "postgresql+psycopg://" + url.split("://", 1)[1].rsplit("/", 1)[0] + "/" + DATABASE
    finally:
        with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DATABASE))
            )


def per_call(submit: Callable[[bytes], object], data: list[bytes]) -> float:
    """Median microseconds of ``submit`` over ``data``, after a few unmeasured calls."""
    for item in data[:5]:
        submit(item)
    times = []
    for item in data[5:]:
        started = time.perf_counter()
        submit(item)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e6


def rows(processor: Processor, count: int) -> list[tuple[str, float]]:
    seen = images(count, seed=1)
    for data in seen:  # tasks these bytes will be found by
        processor.submit(data, PIPELINE)
    return [
        ("plain submit", per_call(lambda d: processor.submit(d, PIPELINE), images(count, 2))),
        (
            "metadata={user, album}",
            per_call(
                lambda d: processor.submit(d, PIPELINE, metadata={"user": "42", "album": 7}),
                images(count, 3),
            ),
        ),
        (
            "not_before=+1 h",
            per_call(
                lambda d: processor.submit(d, PIPELINE, not_before=timedelta(hours=1)),
                images(count, 4),
            ),
        ),
        (
            "dedupe=True, new bytes",
            per_call(lambda d: processor.submit(d, PIPELINE, dedupe=True), images(count, 5)),
        ),
        (
            "dedupe=True, task exists",
            per_call(lambda d: processor.submit(d, PIPELINE, dedupe=True), seen),
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--submits", type=int, default=300)
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder, postgres(args.postgres_url) as pg_url:
        databases = {"SQLite": f"sqlite:///{Path(folder) / 'bench.db'}", "PostgreSQL": pg_url}
        print(f"{'database':<11} {'submit':<26} {'µs/call':>9} {'vs plain':>9}")
        for name, url in databases.items():
            storage = f"file://{Path(folder) / name}"
            with Processor.from_urls(url, storage) as processor:
                measured = rows(processor, args.submits)
            plain = measured[0][1]
            for label, micros in measured:
                print(f"{name:<11} {label:<26} {micros:>9.0f} {micros - plain:>+9.0f}")


if __name__ == "__main__":
    main()
