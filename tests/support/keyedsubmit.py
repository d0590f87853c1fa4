"""A process that submits one image under one idempotency key from several threads at once,
at a moment agreed with its siblings, and prints the id of each task it was answered with.

``python -m tests.support.keyedsubmit DATABASE STORAGE START THREADS``: START is a Unix time.
"""

from __future__ import annotations

import sys
import threading
import time

from imageproc import Processor
from imageproc.testing import sample_image


def main() -> None:
    database, storage, start, threads = (
        sys.argv[1],
        sys.argv[2],
        float(sys.argv[3]),
        int(sys.argv[4]),
    )
    processor = Processor.from_urls(database, storage, migrate=False)
    image = sample_image()
    ids: list[str] = []
    lock = threading.Lock()

    def submit() -> None:
        time.sleep(max(0.0, start - time.time()))
        task = processor.submit(image, "thumb=fit:64x64,webp", idempotency_key="same")
        with lock:
            ids.append(task.id)

    workers = [threading.Thread(target=submit) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    processor.close()
    print("\n".join(ids), flush=True)


if __name__ == "__main__":
    main()
