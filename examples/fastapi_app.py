"""A FastAPI application that embeds imageproc: its own endpoints for user avatars, the imageproc
API mounted under ``/images``, and worker threads started and stopped in the lifespan.

    python examples/fastapi_app.py [--port 8000] [--host 127.0.0.1] [--workers 2]
                                   [--database URL] [--storage URL]

Try it::

    curl -F image=@me.jpg http://127.0.0.1:8000/users/alice/avatar      # 202, a task id
    curl http://127.0.0.1:8000/users/alice/avatar                        # its status and sizes
    curl 'http://127.0.0.1:8000/users/alice/avatar?wait=10'              # … once it has ended
    curl http://127.0.0.1:8000/images/status/<task id>                   # signed URLs of each size

Its endpoints are ``async def`` and await an :class:`~imageproc.AsyncProcessor`: every blocking
call runs in the AsyncProcessor's own threads, and ``?wait=`` holds no thread while it waits.

Signing keys come from ``IMAGEPROC_SIGNING_KEYS`` (comma-separated), as ``imageproc serve`` reads
them; without any, signed URLs stop working when the process restarts.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import AsyncIterator, Sequence
from typing import Annotated, Any

import uvicorn
from fastapi import FastAPI, File, HTTPException, Query, Request, UploadFile

from imageproc import AsyncProcessor, InvalidImage, Processor, TaskStatus, WaitTimeout
from imageproc.http import create_app

#: The only pipeline this application asks for, by name.
PRESETS = {"avatar": "small=fill:64x64:smart,webp;large=fill:256x256:smart,webp"}


def build(
    database_url: str = "sqlite:///imageproc.db",
    storage_url: str = "file://imageproc-data",
    *,
    workers: int = 2,
    signing_keys: Sequence[str] = (),
) -> FastAPI:
    """The application: avatar endpoints of its own, imageproc's API under /images."""
    # Built here, before any event loop runs (it connects and migrates: blocking), and shared:
    # the mounted imageproc API takes the Processor, this app's endpoints await its async twin.
    processor = Processor.from_urls(database_url, storage_url, presets=PRESETS)
    images = AsyncProcessor(processor, owns=True)
    # Stands in for your own user table: which task made each user's avatar.
    avatars: dict[str, str] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if workers > 0:
            await images.start(workers=workers)
        try:
            yield
        finally:
            # Stops the workers (waiting for the tasks in flight, in a thread, not on the event
            # loop) and closes the Processor.
            await images.aclose()

    app = FastAPI(title="profiles", lifespan=lifespan)
    app.state.processor = processor
    app.state.images = images
    # Every imageproc endpoint (upload, status, image, healthz, …) under /images. Unnamed, so
    # this app's own code can say url_for("status", …) (a mount named "images" would make it
    # "images:status"); imageproc's own links are right either way.
    app.mount("/images", create_app(processor, signing_keys=signing_keys))

    @app.post("/users/{user_id}/avatar", status_code=202)
    async def set_avatar(
        user_id: str, image: Annotated[UploadFile, File()], request: Request
    ) -> dict[str, str]:
        # Checked, stored and recorded in the AsyncProcessor's threads: the loop never blocks.
        try:
            task = await images.submit(image.file, "avatar")
        except InvalidImage as error:
            raise HTTPException(415, str(error)) from None
        avatars[user_id] = task.id
        status_url = request.url_for("status", task_id=task.id)
        return {"task_id": task.id, "status_url": str(status_url)}

    @app.get("/users/{user_id}/avatar")
    async def get_avatar(
        user_id: str, wait: Annotated[float, Query(ge=0, le=30)] = 0
    ) -> dict[str, Any]:
        # ?wait=N answers once the task has ended, or after N seconds as it is then.
        if user_id not in avatars:
            raise HTTPException(404, "no avatar")
        task_id = avatars[user_id]
        try:
            task = await images.wait(task_id, timeout=wait) if wait else await images.get(task_id)
        except WaitTimeout:
            task = await images.get(task_id)
        sizes = {o.name: [o.width, o.height] for o in task.outputs}
        ready = task.status == TaskStatus.SUCCEEDED
        return {"task_id": task.id, "status": str(task.status), "ready": ready, "sizes": sizes}

    return app


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and serve until SIGINT or SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=2, help="worker threads (0: none)")
    parser.add_argument("--database", default="sqlite:///imageproc.db")
    parser.add_argument("--storage", default="file://imageproc-data")
    args = parser.parse_args(argv)
    given = os.environ.get("IMAGEPROC_SIGNING_KEYS", "").split(",")
    app = build(
        args.database,
        args.storage,
        workers=args.workers,
        signing_keys=[key.strip() for key in given if key.strip()],
    )
    uvicorn.run(app, host=args.host, port=args.port)


if __name__ == "__main__":
    main()
