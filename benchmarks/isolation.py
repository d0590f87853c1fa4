"""What the render process costs a normal task, and how long a CPU bomb now holds a worker.

    python benchmarks/isolation.py [--tasks 24] [--workers 2] [--repeat 3]

Runs the product's own path: ``Processor.in_memory`` with its worker pool (``start``), once with
``isolation="process"`` (the default: each render in a render process, under ``render_timeout``)
and once with ``isolation="thread"`` (the render in the worker's thread, as before). For each
source, ``--tasks`` tasks of one job are submitted, the pool started, and the wall time until
the last one succeeds is taken; the median of ``--repeat`` rounds (after one warm-up round that
also starts the render processes) is reported as milliseconds per task and tasks per second,
with the ratio process/thread (above 1: the render process costs that much more).

Then the bombs: a progressive JPEG of 3000 extra scans, 7000x7000 greyscale (about 12 ms a
scan to decode, so over half a minute in all): how long ``submit`` takes to refuse it (the
structure walk), and, with the walk's limit lifted (a bomb of a shape no walk catches), how long
it holds a worker under ``render_timeout=5`` before it fails, and that the next task then runs.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path
from typing import Final

from PIL import Image

# benchmarks/queue.py and benchmarks/http.py would shadow the standard library's modules of
# those names, which imageproc imports: run as a script, this folder is first on sys.path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from imageproc import ImageLimits, ImageTooLarge, Processor, TaskStatus  # noqa: E402
from imageproc.testing import sample_image  # noqa: E402

#: name → (width, height, format)
SOURCES: Final = {
    "24 MP JPEG": (6000, 4000, "JPEG"),
    "2 MP JPEG": (1600, 1200, "JPEG"),
    "12 MP PNG": (4000, 3000, "PNG"),
    "64 px JPEG": (64, 48, "JPEG"),
}
JOB: Final = "small=fit:256x256,webp:q80;medium=fit:1024x1024,webp:q80;large=fit:1600x1600,jpeg:q85"
TINY_JOB: Final = "t=fit:32x32,jpeg"


def run_round(processor: Processor, data: bytes, job: str, tasks: int, workers: int) -> float:
    ids = [processor.submit(data, job).id for _ in range(tasks)]
    started = time.perf_counter()
    processor.start(workers)
    try:
        for task_id in ids:
            assert processor.wait(task_id, timeout=600).status == TaskStatus.SUCCEEDED
    finally:
        processor.stop()
    return time.perf_counter() - started


def measure(isolation: str, data: bytes, job: str, args: argparse.Namespace) -> float:
    processor = Processor.in_memory(isolation=isolation, poll_interval=0.01)
    run_round(processor, data, job, args.workers * 2, args.workers)  # warm-up
    rounds = [run_round(processor, data, job, args.tasks, args.workers) for _ in range(args.repeat)]
    return statistics.median(rounds) / args.tasks


def bomb(size: tuple[int, int], extra_scans: int) -> bytes:
    buffer = io.BytesIO()
    Image.linear_gradient("L").resize(size).save(buffer, "JPEG", progressive=True, quality=50)
    data = buffer.getvalue()
    last_scan = data[data.rindex(b"\xff\xda") : -2]
    return data[:-2] + last_scan * extra_scans + b"\xff\xd9"


def bombs() -> None:
    data = bomb((7000, 7000), 3000)
    print(f"\nbomb: {len(data) / 1024:.0f} KiB, 7000x7000 greyscale, 3000 extra scans")
    processor = Processor.in_memory()
    started = time.perf_counter()
    try:
        processor.submit(data, "fit:256x256")
    except ImageTooLarge as error:
        print(f"  refused by submit in {(time.perf_counter() - started) * 1000:.1f} ms: {error}")
    lifted = Processor.in_memory(
        image_limits=ImageLimits(max_scans=1_000_000), render_timeout=5.0, poll_interval=0.01
    )
    bad = lifted.submit(data, "fit:256x256")
    good = lifted.submit(sample_image(1600, 1200), "fit:256x256")
    lifted.start(1)
    try:
        started = time.perf_counter()
        failed = lifted.wait(bad.id, timeout=120)
        held = time.perf_counter() - started
        after = lifted.wait(good.id, timeout=120)
        freed = time.perf_counter() - started
    finally:
        lifted.stop()
    print(
        f"  past the walk, render_timeout=5: held its worker {held:.2f} s, then"
        f" {failed.status.value} ({failed.error.code if failed.error else '-'});"
        f" the next task {after.status.value} at {freed:.2f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=24)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(f"{args.tasks} tasks a round, {args.workers} workers, median of {args.repeat} rounds")
    print(f"{'source':<12} {'job':<10} {'thread ms':>10} {'process ms':>11} {'ratio':>6}")
    for name, (width, height, fmt) in SOURCES.items():
        data = sample_image(width, height, fmt)
        job, label = (TINY_JOB, "1 variant") if width < 100 else (JOB, "3 variants")
        thread = measure("thread", data, job, args)
        process = measure("process", data, job, args)
        print(
            f"{name:<12} {label:<10} {thread * 1000:>10.1f} {process * 1000:>11.1f}"
            f" {process / thread:>6.2f}"
        )
    bombs()


if __name__ == "__main__":
    main()
