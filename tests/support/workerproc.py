"""A worker process for the multi-process tests:
``python -m tests.support.workerproc DB STORAGE LOG``.

Runs ``Processor.run`` until SIGTERM, appending the id of every task whose success it actually
recorded to LOG (one line each), so the tests can count completions across processes.
"""

from __future__ import annotations

import argparse
import logging
import os

from imageproc import Processor, Task, TaskStatus
from tests.support.doubles import CountingQueue, SlowStorage


class LoggingQueue(CountingQueue):
    def __init__(self, queue: object, log: int) -> None:
        super().__init__(queue)  # type: ignore[arg-type]
        self.log = log

    def _count(self, task: Task) -> None:
        # Called only for outcomes that were recorded (never for a lost lease).
        super()._count(task)
        if task.status == TaskStatus.SUCCEEDED:
            os.write(self.log, f"{task.id}\n".encode())  # O_APPEND: whole lines, any process


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("database")
    parser.add_argument("storage")
    parser.add_argument("log")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--lease", type=float, default=30.0)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds each task takes")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    processor = Processor.from_urls(
        args.database,
        args.storage,
        migrate=False,
        lease_seconds=args.lease,
        poll_interval=0.05,
        backoff_base=0.05,
        in_place_wait=0.01,
    )
    log = os.open(args.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    processor.queue = LoggingQueue(processor.queue, log)
    if args.delay:
        processor.storage = SlowStorage(processor.storage, args.delay)
    print("ready", flush=True)
    processor.run(workers=args.threads, stop_timeout=10)
    processor.close()


if __name__ == "__main__":
    main()
