"""A worker process that sends webhooks, for the crash tests:
``python -m tests.support.hookworker DB STORAGE SECRET``.

Runs ``Processor.run`` (workers and the webhook sender) until SIGTERM or SIGKILL, sending to
loopback with a 2 s deadline per try.
"""

from __future__ import annotations

import argparse
import logging

from imageproc import Processor, Webhooks


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("database")
    parser.add_argument("storage")
    parser.add_argument("secret")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    processor = Processor.from_urls(
        args.database,
        args.storage,
        migrate=False,
        isolation="thread",
        poll_interval=0.05,
        webhooks=Webhooks(secrets=[args.secret], allow=["127.0.0.1"], timeout=2.0),
    )
    print("ready", flush=True)
    processor.run(workers=1, stop_timeout=5)
    processor.close()


if __name__ == "__main__":
    main()
