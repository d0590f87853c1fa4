"""Submit an image to imageproc on PostgreSQL and S3, let workers make its variants, print them.

    export IMAGEPROC_DATABASE_URL=postgresql+psycopg://imageproc:secret@db.internal/imageproc
    export IMAGEPROC_STORAGE_URL=s3://my-bucket/images
    imageproc migrate                        # once per schema version, not in every process
    python examples/postgres_s3.py [IMAGE] [--workers N] [--s3-endpoint URL] [--timeout S]

The URLs come from ``--database`` and ``--storage`` or, as for the ``imageproc`` command, from
``IMAGEPROC_DATABASE_URL`` and ``IMAGEPROC_STORAGE_URL``. For an S3-compatible server (MinIO,
Ceph, R2…) give ``--s3-endpoint`` or set ``IMAGEPROC_S3_ENDPOINT_URL``; credentials come from the
usual AWS chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, a profile, an instance role).

With ``--workers 0`` this process only submits and waits: the variants are then made by workers
elsewhere (``imageproc worker`` on any machine with the same two URLs). With no IMAGE, a generated
sample picture is used. The exit status is 0 once every variant is stored, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from imageproc import ImageprocError, Processor, TaskStatus, WaitTimeout
from imageproc.testing import sample_image


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image", nargs="?", type=Path, help="image file (default: a sample)")
    parser.add_argument("--database", default=os.environ.get("IMAGEPROC_DATABASE_URL"))
    parser.add_argument("--storage", default=os.environ.get("IMAGEPROC_STORAGE_URL"))
    parser.add_argument("--s3-endpoint", help="S3-compatible server (IMAGEPROC_S3_ENDPOINT_URL)")
    parser.add_argument("--pipeline", default="thumb=fit:256x256,webp:q80;large=fit:1600x1600")
    parser.add_argument("--workers", type=int, default=2, help="worker threads here (0: none)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait at most")
    args = parser.parse_args(argv)
    if not args.database or not args.storage:
        parser.error("give --database and --storage, or IMAGEPROC_DATABASE_URL/_STORAGE_URL")

    # Without an explicit endpoint the storage reads IMAGEPROC_S3_ENDPOINT_URL, then botocore's
    # AWS_ENDPOINT_URL_S3; with neither it talks to AWS itself.
    storage_options: dict[str, Any] = {}
    if args.s3_endpoint:
        storage_options["endpoint_url"] = args.s3_endpoint
    source = args.image if args.image is not None else sample_image(2400, 1600)

    # migrate=False: the schema belongs to `imageproc migrate`, run once per deployment. A
    # database that was never migrated raises ConfigurationError, telling you so.
    with Processor.from_urls(
        args.database, args.storage, migrate=False, storage_options=storage_options
    ) as processor:
        try:
            task = processor.submit(source, args.pipeline)
            print(f"submitted {task.id}", flush=True)
            if args.workers > 0:
                processor.start(workers=args.workers)
            task = processor.wait(task.id, timeout=args.timeout)
        except WaitTimeout:
            print(f"not done after {args.timeout:g}s: are any workers running?", file=sys.stderr)
            return 1
        except ImageprocError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        if task.status != TaskStatus.SUCCEEDED:
            print(f"task {task.id} {task.status}: {task.error}", file=sys.stderr)
            return 1
        root = args.storage.rstrip("/")
        for output in task.outputs:
            size = f"{output.width}x{output.height}"
            print(f"{output.name}: {size} {output.format}, {root}/{output.key}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
