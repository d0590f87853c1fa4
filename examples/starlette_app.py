"""An application that embeds imageproc: its own page at ``/``, the imageproc API under ``/api``,
and worker threads started and stopped with the application.

    python examples/starlette_app.py [--port 8000] [--host 127.0.0.1] [--workers 2]
                                     [--database URL] [--storage URL]
                                     [--api-keys alice:KEY,…] [--signing-key SECRET …]
                                     [--log-level info|warning|…]

It serves until SIGINT or SIGTERM; on shutdown the workers finish what they hold (for up to
``--stop-timeout`` seconds) and release anything still unfinished back to the queue, so a restarted
server (or any other worker on the same database and storage) picks it up. Try it::

    curl -F image=@cat.jpg --form-string pipeline='thumb=fit:256x256,webp' http://127.0.0.1:8000/api/upload
    curl http://127.0.0.1:8000/api/status/<id>        # outputs[].url fetches each variant

API keys and signing keys also come from ``IMAGEPROC_API_KEYS`` and ``IMAGEPROC_SIGNING_KEYS``
(comma-separated), as the ``imageproc`` command reads them. It bounds slow clients as
``imageproc serve`` does, with the pieces in ``imageproc.http.serving``, and keeps signatures out of
its access log.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
from collections.abc import AsyncIterator

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Mount, Route

from imageproc import AsyncProcessor, Processor
from imageproc.http import create_app, parse_api_keys
from imageproc.http.serving import BodyDeadline, RedactQuerySecrets, header_deadline_protocol

PAGE = """<!doctype html><title>imageproc demo</title>
<form method=post action=api/upload enctype=multipart/form-data>
<input type=file name=image accept="image/*"> <input name=pipeline value="thumb=fit:256x256,webp">
<button>Upload</button></form>"""


def build(args: argparse.Namespace) -> Starlette:
    """The application: a page of its own and imageproc mounted under /api."""
    processor = Processor.from_urls(args.database, args.storage)
    api_keys = parse_api_keys(args.api_keys) if args.api_keys else None
    given = args.signing_key or os.environ.get("IMAGEPROC_SIGNING_KEYS", "").split(",")
    signing_keys = [key.strip() for key in given if key.strip()]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # The Processor's async twin runs each blocking call in threads of its own, never on
        # the event loop; owns=True: leaving the block closes the Processor.
        async with AsyncProcessor(processor, owns=True) as images:
            if args.workers > 0:
                await images.start(workers=args.workers)
            try:
                yield
            finally:
                await images.stop(args.stop_timeout)  # waits for tasks in flight, in a thread

    async def home(request: Request) -> Response:
        return HTMLResponse(PAGE)

    api = create_app(
        processor,
        api_keys=api_keys,
        signing_keys=signing_keys,
        max_upload_bytes=args.max_upload_bytes,
        max_queue_depth=args.max_queue_depth,
    )
    # What `imageproc serve` does against slow clients: a body that pauses for 20 s, or comes
    # slower than 8 KiB/s after that, is answered 408 and dropped (see the security guide).
    guarded = BodyDeadline(api, timeout=20.0, min_rate=8 * 1024)
    return Starlette(routes=[Route("/", home), Mount("/api", app=guarded)], lifespan=lifespan)


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and serve until SIGINT or SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=2, help="worker threads (0: none)")
    parser.add_argument("--database", default="sqlite:///imageproc.db")
    parser.add_argument("--storage", default="file://imageproc-data")
    parser.add_argument("--api-keys", default=os.environ.get("IMAGEPROC_API_KEYS", ""))
    parser.add_argument(
        "--signing-key",
        action="append",
        default=[],
        help="repeat to rotate: the first signs, all verify (default: IMAGEPROC_SIGNING_KEYS)",
    )
    parser.add_argument("--max-upload-bytes", type=int, default=50 * 1024 * 1024)
    parser.add_argument("--max-queue-depth", type=int, default=None)
    parser.add_argument("--stop-timeout", type=float, default=30.0)
    parser.add_argument("--log-level", default="info", help="info prints where it listens")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s %(message)s")
    try:
        app = build(args)
    except ValueError as error:  # a key too weak, say: a message, not a traceback
        parser.error(str(error))
    # Signed URLs work as passwords until they expire: keep their signatures out of the log.
    logging.getLogger("uvicorn.access").addFilter(RedactQuerySecrets())
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        http=header_deadline_protocol(10.0),  # request headers complete within 10 s
        limit_concurrency=257,  # 256 connections; one more is answered 503
        timeout_keep_alive=5,
    )


if __name__ == "__main__":
    main()
