"""What ``submit``'s options cost: ``dedupe=True``, ``metadata``, ``not_before`` and
``idempotency_key``, on SQLite and PostgreSQL, against a plain ``submit`` measured in the same run.

    python benchmarks/submit_options.py [--submits 300] [--rounds 5] [--postgres-url URL]

Each row runs ``Processor.submit`` itself (the checks, the header probe, storing the original in
a local folder, recording the task) on one thread, with one small JPEG per submit, and prints
microseconds per call and the difference to the plain row of its database. ``dedupe`` rows
submit bytes that have no task yet (the lookup finds nothing, then the work is queued: the cost
every first upload pays), and, separately, bytes whose task exists (the lookup answers, and
nothing is stored or recorded). ``idempotency key, new`` submits new bytes under a fresh key
each time (the key lookup finds nothing, and the key is remembered in the transaction that
records the task: the cost every first upload under a key pays); ``idempotency key, replay``
sends again the key and request of an earlier submit (the lookup answers, nothing is stored or
recorded, and the task is read back); ``idempotency key + dedupe, new`` is the first kind with
``dedupe=True`` too (both lookups find nothing).

The rows take turns: each of ``--rounds`` rounds measures every row once (``--submits`` calls,
the median of them), starting one row further along the list each round, and a row's figure is
the median of its rounds, so that drift over the run (the tables growing, the machine's other
load) falls on every row alike. PostgreSQL gets a database of its own, dropped at the end.
"""

from __future__ import annotations

import argparse
import io
import itertools
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

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

T = TypeVar("T")


def images(count: int, seed: int) -> list[bytes]:
    """``count`` different small JPEGs (different bytes, so each is a new original), different
    too from those of any other ``seed``: ``seed`` and the image's number (below 65536) are drawn
    as 32 black or white 8x8 blocks (a JPEG block each, so no two encode alike) over a colour."""
    found = []
    for n in range(count):
        colour = ((seed * 7 + n) % 256, (n * 13) % 256, (n // 256 + seed) % 256)
        image = Image.new("RGB", (64, 48), colour)
        bits = seed << 16 | n
        for bit in range(32):  # 8 blocks a row, 4 rows
            shade = 255 if bits >> bit & 1 else 0
            x, y = bit % 8 * 8, bit // 8 * 8
            image.paste((shade, shade, shade), (x, y, x + 8, y + 8))
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=80)
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


def per_call(submit: Callable[[T], object], items: list[T]) -> float:
    """Median microseconds of ``submit`` over ``items``, after a few unmeasured calls."""
    for item in items[:5]:
        submit(item)
    times = []
    for item in items[5:]:
        started = time.perf_counter()
        submit(item)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e6


class Row(NamedTuple):
    label: str
    submit: Callable[[Any], object]
    items: Callable[[], list[Any]]  # what one round submits (called before it is timed)


def rows(processor: Processor, count: int, rounds: int) -> list[tuple[str, float]]:
    seeds = itertools.count(1)  # a seed of its own for each set of images: no bytes twice

    def new_bytes() -> list[bytes]:
        return images(count, next(seeds))

    def new_keys() -> list[tuple[str, bytes]]:
        return [(f"new-{uuid.uuid4().hex}", data) for data in new_bytes()]

    seen = new_bytes()
    for data in seen:  # tasks these bytes will be found by
        processor.submit(data, PIPELINE)
    keyed = [(f"replay-{n}", data) for n, data in enumerate(new_bytes())]
    for key, data in keyed:  # keys these requests will be answered by
        processor.submit(data, PIPELINE, idempotency_key=key)
    table = [
        Row("plain submit", lambda d: processor.submit(d, PIPELINE), new_bytes),
        Row(
            "metadata={user, album}",
            lambda d: processor.submit(d, PIPELINE, metadata={"user": "42", "album": 7}),
            new_bytes,
        ),
        Row(
            "not_before=+1 h",
            lambda d: processor.submit(d, PIPELINE, not_before=timedelta(hours=1)),
            new_bytes,
        ),
        Row(
            "dedupe=True, new bytes",
            lambda d: processor.submit(d, PIPELINE, dedupe=True),
            new_bytes,
        ),
        Row(
            "dedupe=True, task exists",
            lambda d: processor.submit(d, PIPELINE, dedupe=True),
            lambda: seen,
        ),
        Row(
            "idempotency key, new",
            lambda kd: processor.submit(kd[1], PIPELINE, idempotency_key=kd[0]),
            new_keys,
        ),
        Row(
            "idempotency key, replay",
            lambda kd: processor.submit(kd[1], PIPELINE, idempotency_key=kd[0]),
            lambda: keyed,
        ),
        Row(
            "idempotency key + dedupe, new",
            lambda kd: processor.submit(kd[1], PIPELINE, idempotency_key=kd[0], dedupe=True),
            new_keys,
        ),
    ]
    measured: dict[str, list[float]] = {row.label: [] for row in table}
    for turn in range(rounds):
        start = turn % len(table)
        for row in table[start:] + table[:start]:
            measured[row.label].append(per_call(row.submit, row.items()))
    return [(label, statistics.median(times)) for label, times in measured.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--submits", type=int, default=300, help="per row and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder, postgres(args.postgres_url) as pg_url:
        databases = {"SQLite": f"sqlite:///{Path(folder) / 'bench.db'}", "PostgreSQL": pg_url}
        print(f"median of {args.rounds} rounds of {args.submits} submits per row")
        print(f"{'database':<11} {'submit':<30} {'µs/call':>9} {'vs plain':>9}")
        for name, url in databases.items():
            storage = f"file://{Path(folder) / name}"
            with Processor.from_urls(url, storage) as processor:
                measured = rows(processor, args.submits, args.rounds)
            plain = measured[0][1]
            for label, micros in measured:
                print(f"{name:<11} {label:<30} {micros:>9.0f} {micros - plain:>+9.0f}")


if __name__ == "__main__":
    main()
