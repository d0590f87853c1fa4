"""A FastAPI application whose own table and imageproc's tasks share one database and one
transaction: a profile's new avatar and the task that makes it commit together, or not at all.

    python examples/fastapi_transactional.py [--port 8000] [--host 127.0.0.1] [--workers 2]
                                             [--database URL] [--storage URL]

Try it::

    curl -H 'Content-Type: application/json' -d '{"id": "alice", "name": "Alice"}' \\
         http://127.0.0.1:8000/profiles                                     # 201
    curl -X PUT -H 'Idempotency-Key: 7f3a' -F image=@me.jpg \\
         http://127.0.0.1:8000/profiles/alice/avatar                        # 202, a task id
    curl http://127.0.0.1:8000/profiles/alice                               # the avatar's status

The database is one SQLite file by default (``imageproc.db``, with imageproc's tables in it); a
PostgreSQL URL works the same way. Sending the same ``Idempotency-Key`` again returns the same
task; a different image under that key is a 422.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import AsyncIterator
from typing import Annotated, Any

import sqlalchemy as sa
import uvicorn
from fastapi import FastAPI, File, HTTPException, Request, UploadFile
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from imageproc import (
    IdempotencyConflict,
    ImageTooLarge,
    InvalidImage,
    InvalidInput,
    Processor,
    TaskNotFound,
)

PRESETS = {"avatar": "small=fill:64x64:smart,webp;large=fill:256x256:smart,webp"}

# The application's own table, in the same database as imageproc's.
metadata = sa.MetaData()
profiles = sa.Table(
    "profiles",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("avatar_task", sa.String(64)),  # the task that makes the current avatar
)


class NewProfile(BaseModel):
    id: str = Field(pattern=r"^[a-z0-9-]{1,64}$")
    name: str = Field(min_length=1, max_length=200)


def build(
    database_url: str = "sqlite:///imageproc.db",
    storage_url: str = "file://imageproc-data",
    *,
    workers: int = 2,
) -> FastAPI:
    """The application: profiles in its own table, avatars made by imageproc's workers."""
    processor = Processor.from_urls(database_url, storage_url, presets=PRESETS)
    url = sa.make_url(database_url)
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")  # psycopg 3, as imageproc uses
    # The application's own engine and pool; submit(connection=) checks that it reaches the very
    # database (and schema) that holds imageproc's tables, or there would be two transactions.
    engine = sa.create_engine(url)
    metadata.create_all(engine)

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
            engine.dispose()

    app = FastAPI(title="profiles", lifespan=lifespan)
    app.state.processor = processor
    app.state.engine = engine

    @app.post("/profiles", status_code=201)
    def create_profile(profile: NewProfile) -> dict[str, str]:
        try:
            with engine.begin() as conn:
                conn.execute(profiles.insert().values(id=profile.id, name=profile.name))
        except sa.exc.IntegrityError:
            raise HTTPException(409, "that profile exists") from None
        return {"id": profile.id}

    @app.put("/profiles/{profile_id}/avatar", status_code=202)
    def set_avatar(
        profile_id: str, image: Annotated[UploadFile, File()], request: Request
    ) -> dict[str, str]:
        # A plain `def`: FastAPI runs it in its thread pool, so the blocking calls are fine.
        try:
            # One transaction: the task row (and its idempotency key) is written on `conn`, so
            # no worker can see it before the profile's row says so, and if anything below
            # raises, leaving the block rolls back both. (Only the original stays in storage,
            # which is not transactional, until purge() sweeps it.) On SQLite this holds the
            # database's one write lock from the task's insert to the commit: keep it short.
            with engine.begin() as conn:
                task = processor.submit(
                    image.file,
                    "avatar",
                    owner=f"profile:{profile_id}",  # idempotency keys are per owner
                    idempotency_key=request.headers.get("Idempotency-Key"),
                    connection=conn,
                )
                # The update is also the existence check: no check-then-write race with a
                # profile deleted meanwhile. A retry under the same key gets the same task and
                # points the profile at it again.
                updated = conn.execute(
                    profiles.update().where(profiles.c.id == profile_id).values(avatar_task=task.id)
                )
                if updated.rowcount == 0:
                    raise HTTPException(404, "no such profile")  # rolls back: no task
        except IdempotencyConflict as error:  # the key was used for another image
            raise HTTPException(422, error.message) from None
        except ImageTooLarge as error:  # an image, of a size refused
            raise HTTPException(422, error.message) from None
        except InvalidImage as error:  # not an image, or a format refused
            raise HTTPException(415, error.message) from None
        except InvalidInput as error:  # e.g. a malformed Idempotency-Key
            raise HTTPException(422, error.message) from None
        return {"task_id": task.id, "status": str(task.status)}

    @app.get("/profiles/{profile_id}")
    def get_profile(profile_id: str) -> dict[str, Any]:
        with engine.connect() as conn:
            row = conn.execute(profiles.select().where(profiles.c.id == profile_id)).first()
        if row is None:
            raise HTTPException(404, "no such profile")
        avatar = None
        if row.avatar_task is not None:
            try:
                task = processor.get(row.avatar_task)
            except TaskNotFound:  # purged after its retention period: no avatar to show
                pass
            else:
                sizes = {o.name: [o.width, o.height] for o in task.outputs}
                avatar = {"task_id": task.id, "status": str(task.status), "sizes": sizes}
        return {"id": row.id, "name": row.name, "avatar": avatar}

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
    uvicorn.run(
        build(args.database, args.storage, workers=args.workers), host=args.host, port=args.port
    )


if __name__ == "__main__":
    main()
