"""Process one image with imageproc on the embedded default: SQLite and a local folder.

    python examples/quickstart.py [IMAGE] [--out DIR] [--pipeline PIPELINE]
                                  [--database URL] [--storage URL]

With no IMAGE, a generated sample picture is used. The task is recorded in ./imageproc.db and the
original and outputs are stored under ./imageproc-data/; two worker threads in this process make
the variants, and each output is also copied to DIR (./imageproc-output) under its variant name.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from imageproc import ImageprocError, Processor, TaskStatus
from imageproc.testing import sample_image


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image", nargs="?", type=Path, help="image file (default: a sample)")
    parser.add_argument("--out", type=Path, default=Path("imageproc-output"))
    parser.add_argument(
        "--pipeline",
        default="thumb=fit:256x256,webp:q80;large=fit:1600x1600,jpeg:q85",
        help="pipeline in the compact text form",
    )
    parser.add_argument("--database", default="sqlite:///imageproc.db")
    parser.add_argument("--storage", default="file://imageproc-data")
    args = parser.parse_args(argv)
    source = args.image if args.image is not None else sample_image(2400, 1600)

    with Processor.from_urls(args.database, args.storage) as processor:
        try:
            task = processor.submit(source, args.pipeline)
        except ImageprocError as error:
            print(f"refused: {error}", file=sys.stderr)
            return 1
        processor.start(workers=2)
        task = processor.wait(task.id, timeout=60)

        if task.status != TaskStatus.SUCCEEDED:
            print(f"task {task.id} {task.status}: {task.error}", file=sys.stderr)
            return 1
        args.out.mkdir(parents=True, exist_ok=True)
        for output in task.outputs:
            path = args.out / f"{output.name}.{output.key.rsplit('.', 1)[-1]}"
            path.write_bytes(processor.read(output.key))
            print(
                f"{output.name}: {output.width}x{output.height} {output.format}, "
                f"{output.bytes} bytes -> {path}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
