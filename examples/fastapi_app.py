"""A FastAPI application that embeds imageproc: its own endpoints for user avatars, the imageproc
API mounted under ``/images``, and worker threads started and stopped in the lifespan.

    python examples/fastapi_app.py [--port 8000] [--host 127.0.0.1] [--workers 2]
                                   [--database URL] [--storage URL]

Try it::

    curl -F image=@me.jpg http://127.0.0.1:8000/users/alice/avatar      # 202, a task id
    curl http://127.0.0.1:8000/users/alice/avatar                        # its status and sizes
    curl http://127.0.0.1:8000/images/status/<task id>                   # signed URLs of each size

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
from fastapi import FastAPI, File, HTTPException, Request, UploadFile
from starlette.concurrency import run_in_threadpool

from imageproc import InvalidImage, Processor, TaskStatus
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
    processor = Processor.from_urls(database_url, storage_url, presets=PRESETS)
    # Stands in for your own user table: which task made each user's avatar.
    avatars: dict[str, str] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if workers > 0:
            processor.start(workers=workers)
        try:
            yield
        finally:
            # stop() waits for the tasks in flight: run it off the event loop.
            await run_in_threadpool(processor.stop, 30.0)
            await run_in_threadpool(processor.close)

    app = FastAPI(title="profiles", lifespan=lifespan)
    app.state.processor = processor
    # Every imageproc endpoint (upload, status, image, healthz, …) under /images. Unnamed, so
    # this app's own code can say url_for("status", …) (a mount named "images" would make it
    # "images:status"); imageproc's own links are right either way.
    app.mount("/images", create_app(processor, signing_keys=signing_keys))

    @app.post("/users/{user_id}/avatar", status_code=202)
    def set_avatar(
        user_id: str, image: Annotated[UploadFile, File()], request: Request
    ) -> dict[str, str]:
        # A plain `def`: FastAPI runs it in its thread pool, so submit() may block on storage.
        try:
            task = processor.submit(image.file, "avatar")
        except InvalidImage as error:
            raise HTTPException(415, str(error)) from None
        avatars[user_id] = task.id
        status_url = request.url_for("status", task_id=task.id)
        return {"task_id": task.id, "status_url": str(status_url)}

    @app.get("/users/{user_id}/avatar")
    def get_avatar(user_id: str) -> dict[str, Any]:
        if user_id not in avatars:
            raise HTTPException(404, "no avatar")
        task = processor.get(avatars[user_id])
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
