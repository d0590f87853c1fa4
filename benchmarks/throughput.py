"""Throughput of the in-memory Processor against a plain Pillow loop doing the same work.

    python benchmarks/throughput.py [--tasks 200] [--size 1600x1200]

The reference is the floor of what imageproc adds: the same decode, resize and encode in a bare
loop in one thread, with no storage, queue or records. Each imageproc row runs the whole path
(submit, store, lease, heartbeat, record) with N worker threads and prints tasks per second and
the ratio to that reference, measured in the same run.
"""

from __future__ import annotations

import argparse
import io
import threading
import time

from PIL import Image, ImageOps

from imageproc import TaskStatus
from imageproc.testing import memory_processor, sample_image

PIPELINE = "thumb=fit:256x256,jpeg:q85"


def reference(images: list[bytes]) -> float:
    # In a thread of its own, like imageproc's workers: on glibc, the same Pillow work runs
    # markedly slower on the main thread (its malloc arena returns the big buffers to the OS and
    # faults them back in), which would flatter imageproc.
    rates: list[float] = []
    thread = threading.Thread(target=lambda: rates.append(_loop(images)))
    thread.start()
    thread.join()
    return rates[0]


def _loop(images: list[bytes]) -> float:
    started = time.perf_counter()
    for data in images:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            upright = ImageOps.exif_transpose(image) or image
            upright.thumbnail((256, 256), Image.Resampling.LANCZOS, reducing_gap=3.0)
            upright.convert("RGB").save(io.BytesIO(), "JPEG", quality=85, optimize=True)
    return len(images) / (time.perf_counter() - started)


def imageproc_rate(images: list[bytes], workers: int) -> float:
    processor = memory_processor()
    started = time.perf_counter()
    ids = [processor.submit(data, PIPELINE).id for data in images]
    processor.start(workers=workers)
    try:
        for task_id in ids:
            assert processor.wait(task_id, timeout=600).status == TaskStatus.SUCCEEDED
    finally:
        processor.stop()
    return len(images) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--size", default="1600x1200")
    args = parser.parse_args()
    width, height = (int(n) for n in args.size.split("x"))
    # Distinct images, so content addressing cannot store just one.
    base = sample_image(width, height, "PNG")
    with Image.open(io.BytesIO(base)) as image:
        image.load()
        images = []
        for i in range(args.tasks):
            variant = image.copy()
            variant.putpixel((i % width, 0), (i % 256, 0, 0))
            buffer = io.BytesIO()
            variant.save(buffer, "JPEG", quality=90)
            images.append(buffer.getvalue())

    floor = reference(images)
    print(f"{args.tasks} tasks, {width}x{height} JPEG -> 256 px JPEG thumbnail")
    print(f"{'run':<28}{'tasks/s':>10}{'vs loop':>10}")
    print(f"{'plain Pillow loop':<28}{floor:>10.1f}{1.0:>10.2f}")
    for workers in (1, 2, 4):
        rate = imageproc_rate(images, workers)
        print(f"{f'imageproc, {workers} workers':<28}{rate:>10.1f}{rate / floor:>10.2f}")


if __name__ == "__main__":
    main()
