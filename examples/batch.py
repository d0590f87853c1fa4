"""Process every image in a folder, with a progress bar, through the library API.

    python examples/batch.py FOLDER [-p PIPELINE] [-o OUT] [--workers N]

Each file goes to an in-memory Processor (nothing to set up, nothing left behind); worker threads
make the variants while the bar shows how many tasks have finished, then every output is written
to OUT/<file stem>-<variant>.<ext>. Files that are not images are reported, not fatal; the exit
status is 1 if any file failed. `imageproc process` does the same without a queue.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from imageproc import ImageprocError, Processor, TaskStatus


def bar(done: int, total: int, width: int = 30) -> str:
    filled = width * done // max(total, 1)
    return f"[{'#' * filled}{'-' * (width - filled)}] {done}/{total}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("-p", "--pipeline", default="thumb=fit:256x256,webp;large=fit:1600x1600")
    parser.add_argument("-o", "--out", type=Path, default=Path("batch-output"))
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args(argv)
    files = sorted(path for path in args.folder.iterdir() if path.is_file())
    failures = 0

    with Processor.in_memory() as processor:
        tasks = {}
        for path in files:
            try:
                # submit checks the pipeline and the image header before anything is queued.
                tasks[path] = processor.submit(path, args.pipeline).id
            except ImageprocError as error:
                print(f"{path.name}: refused: {error}", file=sys.stderr)
                failures += 1
        processor.start(workers=args.workers)
        pending = dict(tasks)
        while True:
            for path, task_id in list(pending.items()):
                if processor.get(task_id).status.is_final:
                    del pending[path]
            sys.stderr.write("\r" + bar(len(tasks) - len(pending), len(tasks)))
            sys.stderr.flush()
            if not pending:
                break
            time.sleep(0.05)
        sys.stderr.write("\n")

        args.out.mkdir(parents=True, exist_ok=True)
        for path, task_id in tasks.items():
            task = processor.get(task_id)
            if task.status != TaskStatus.SUCCEEDED:
                message = task.error.message if task.error else task.status
                print(f"{path.name}: {task.status}: {message}", file=sys.stderr)
                failures += 1
                continue
            for output in task.outputs:
                extension = output.key.rsplit(".", 1)[-1]
                target = args.out / f"{path.stem}-{output.name}.{extension}"
                target.write_bytes(processor.read(output.key))
    print(f"{len(files) - failures} of {len(files)} files processed into {args.out}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
