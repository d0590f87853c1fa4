"""The framework examples, served in this process by the frameworks' own test clients:
examples/fastapi_app.py (ASGI, workers in the lifespan), examples/fastapi_transactional.py (the
application's rows and imageproc's tasks in one transaction) and examples/flask_app.py (WSGI,
workers started with the app and stopped at exit)."""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import io
import json
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import sqlalchemy as sa
from PIL import Image

from imageproc import Processor, TaskStatus
from imageproc.testing import sample_image
from tests.support.processes import environment, eventually, fetch, free_port, stop

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TIMEOUT = 60


def load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"examples_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def until(check: Any, what: str) -> Any:
    deadline = time.monotonic() + TIMEOUT
    while not (result := check()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)
    return result


def picture(data: bytes) -> tuple[str | None, tuple[int, int]]:
    with Image.open(io.BytesIO(data)) as image:
        return image.format, image.size


def test_fastapi_example_submits_from_its_own_endpoint(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    app = load_example("fastapi_app").build(
        f"sqlite:///{tmp_path / 'tasks.db'}",
        f"file://{tmp_path / 'data'}",
        workers=2,
        signing_keys=["test-signing-key-0123456789-AbCdEf"],
    )
    processor: Processor = app.state.processor
    assert processor.pool is None
    with TestClient(app) as client:  # runs the lifespan: the workers start
        assert processor.pool is not None
        assert processor.pool.size == 2

        reply = client.post(
            "/users/alice/avatar", files={"image": ("me.jpg", sample_image(900, 600), "image/jpeg")}
        )
        assert reply.status_code == 202, reply.text
        task_id = reply.json()["task_id"]
        status_url = reply.json()["status_url"]
        assert status_url == f"http://testserver/images/status/{task_id}"

        mine = until(
            lambda: (r := client.get("/users/alice/avatar").json())["ready"] and r, "the avatar"
        )
        assert mine == {
            "task_id": task_id,
            "status": "succeeded",
            "ready": True,
            "sizes": {"small": [64, 64], "large": [256, 256]},
        }
        # imageproc's own API, mounted under /images, knows the task and signs its outputs.
        status = client.get(status_url)
        assert status.status_code == 200
        fetched = {}
        for output in status.json()["outputs"]:
            assert output["url"].startswith("http://testserver/images/image/outputs/")
            image = client.get(output["url"])
            assert image.status_code == 200
            assert image.headers["content-type"] == "image/webp"
            fetched[output["name"]] = picture(image.content)
        assert fetched == {"small": ("WEBP", (64, 64)), "large": ("WEBP", (256, 256))}

        # Its endpoints await the app's AsyncProcessor, which shares the mounted API's Processor;
        # ?wait= answers once the task has ended, in one request.
        assert app.state.images.sync is processor
        reply = client.post(
            "/users/carol/avatar", files={"image": ("me.jpg", sample_image(600, 400), "image/jpeg")}
        )
        assert reply.status_code == 202, reply.text
        waited = client.get("/users/carol/avatar", params={"wait": 30})
        assert waited.status_code == 200
        assert (waited.json()["status"], waited.json()["ready"]) == ("succeeded", True)
        assert client.get("/users/carol/avatar", params={"wait": 31}).status_code == 422

        refused = client.post(
            "/users/bob/avatar", files={"image": ("notes.txt", b"not an image", "text/plain")}
        )
        assert refused.status_code == 415
        assert "not a readable image" in refused.json()["detail"]
        assert client.get("/users/bob/avatar").status_code == 404
        assert client.get("/images/healthz").status_code == 200
        assert client.get("/images/readyz").status_code == 200
    # Leaving the client ran the rest of the lifespan: workers stopped, backends closed.
    assert processor.pool is None


def test_fastapi_example_waits_at_most_as_long_as_asked(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    app = load_example("fastapi_app").build(
        f"sqlite:///{tmp_path / 'tasks.db'}", f"file://{tmp_path / 'data'}", workers=0
    )
    with TestClient(app) as client:  # no workers: the task stays queued
        reply = client.post("/users/dan/avatar", files=avatar_upload(sample_image(300, 200)))
        assert reply.status_code == 202, reply.text
        started = time.monotonic()
        waited = client.get("/users/dan/avatar", params={"wait": 0.3})
        assert 0.3 <= time.monotonic() - started < 10
        assert waited.json()["status"] == "queued"
        assert waited.json()["ready"] is False


@pytest.mark.slow
def test_fastapi_example_serves_from_the_command_line(tmp_path: Path) -> None:
    port = free_port()
    keys = "key-1-0123456789-AbCdEfGhIj,key-0-0123456789-KlMnOpQrSt"
    server = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "fastapi_app.py"), "--port", str(port), "--workers", "1"],
        cwd=tmp_path, env=environment(IMAGEPROC_SIGNING_KEYS=keys),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip

    def healthy() -> bool:
        url = f"http://127.0.0.1:{port}/images/healthz"
        with urllib.request.urlopen(url, timeout=5) as response:
            return bool(response.status == 200)

    try:
        eventually(healthy, timeout=TIMEOUT, what="the FastAPI example to serve /images/healthz")
    finally:
        code, _, stderr = stop(server, timeout=TIMEOUT)
    # uvicorn shuts down gracefully, then re-raises the signal: exiting "by SIGTERM" is normal.
    assert code in (0, -signal.SIGTERM), stderr
    assert "Traceback" not in stderr
    assert "Application shutdown complete" in stderr  # the lifespan stopped the workers
    assert (tmp_path / "imageproc.db").is_file()


def every_task(processor: Processor) -> list[str]:
    """The ids of all the tasks in the database, whatever their status (once each: a worker
    may move a task on between the reads of two statuses, so it can be seen in both)."""
    return sorted({task.id for status in TaskStatus for task in processor.tasks(status)})


def avatar_upload(data: bytes) -> dict[str, Any]:
    return {"image": ("me.jpg", data, "image/jpeg")}


def transactional_example(tmp_path: Path, *, workers: int) -> Any:
    return load_example("fastapi_transactional").build(
        f"sqlite:///{tmp_path / 'app.db'}", f"file://{tmp_path / 'data'}", workers=workers
    )


def profile_rows(app: Any) -> list[tuple[str, str, str | None]]:
    with app.state.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT id, name, avatar_task FROM profiles ORDER BY id"))
        return [tuple(row) for row in rows]


def test_fastapi_transactional_example_commits_the_profile_and_its_task_together(
    tmp_path: Path,
) -> None:
    from fastapi.testclient import TestClient

    app = transactional_example(tmp_path, workers=2)
    processor: Processor = app.state.processor
    # What imageproc's own connections (the workers') can see at each moment the application
    # commits: the task is written in the application's transaction, so not before.
    seen_at_commit: list[list[str]] = []
    sa.event.listen(
        app.state.engine, "commit", lambda conn: seen_at_commit.append(every_task(processor))
    )
    with TestClient(app) as client:
        assert client.post("/profiles", json={"id": "alice", "name": "Alice"}).status_code == 201
        reply = client.put("/profiles/alice/avatar", files=avatar_upload(sample_image(900, 600)))
        assert reply.status_code == 202, reply.text
        task_id = reply.json()["task_id"]

        assert seen_at_commit == [[], []]  # the profile's insert, then the avatar's update
        assert every_task(processor) == [task_id]  # committed: now there for the workers
        mine = {
            t.id for status in TaskStatus for t in processor.tasks(status, owner="profile:alice")
        }
        assert mine == {task_id}
        assert profile_rows(app) == [("alice", "Alice", task_id)]

        profile = until(
            lambda: (
                (r := client.get("/profiles/alice").json())["avatar"]["status"] == "succeeded" and r
            ),
            "the avatar",
        )
        assert profile == {
            "id": "alice",
            "name": "Alice",
            "avatar": {
                "task_id": task_id,
                "status": "succeeded",
                "sizes": {"small": [64, 64], "large": [256, 256]},
            },
        }
        assert client.get("/profiles/nobody").status_code == 404
    assert processor.pool is None  # the lifespan stopped the workers


def test_fastapi_transactional_example_rolls_the_task_back_with_a_failed_update(
    tmp_path: Path,
) -> None:
    from fastapi.testclient import TestClient

    app = transactional_example(tmp_path, workers=0)  # no workers: every task stays queued
    processor: Processor = app.state.processor
    with TestClient(app) as client:
        assert client.post("/profiles", json={"id": "alice", "name": "Alice"}).status_code == 201
        kept = client.put("/profiles/alice/avatar", files=avatar_upload(sample_image()))
        assert kept.status_code == 202, kept.text
        first = kept.json()["task_id"]

        # bob has no profile: the update after the submit matches no row, and the 404 raised
        # inside the transaction rolls the task back with it.
        missing = client.put("/profiles/bob/avatar", files=avatar_upload(sample_image(300)))
        assert missing.status_code == 404
        assert missing.json() == {"detail": "no such profile"}
        assert every_task(processor) == [first]
        assert profile_rows(app) == [("alice", "Alice", first)]
        # Its original was stored before (storage is not transactional): no task refers to it,
        # and the sweep of orphans removes it.
        assert processor.purge_orphans(timedelta(0)) == 1

        # A refused upload stores nothing and changes nothing.
        refused = client.put(
            "/profiles/alice/avatar", files={"image": ("a.txt", b"not an image", "text/plain")}
        )
        assert refused.status_code == 415
        assert "not a readable image" in refused.json()["detail"]
        assert every_task(processor) == [first]
        assert profile_rows(app) == [("alice", "Alice", first)]


def test_fastapi_transactional_example_answers_a_retry_with_the_same_task(
    tmp_path: Path,
) -> None:
    from fastapi.testclient import TestClient

    app = transactional_example(tmp_path, workers=0)
    processor: Processor = app.state.processor
    image = sample_image(800, 800)
    with TestClient(app) as client:
        assert client.post("/profiles", json={"id": "alice", "name": "Alice"}).status_code == 201
        key = {"Idempotency-Key": "avatar-7f3a"}
        first = client.put("/profiles/alice/avatar", files=avatar_upload(image), headers=key)
        again = client.put("/profiles/alice/avatar", files=avatar_upload(image), headers=key)
        assert first.status_code == again.status_code == 202, (first.text, again.text)
        task_id = first.json()["task_id"]
        assert again.json()["task_id"] == task_id
        assert every_task(processor) == [task_id]  # one task for the two requests
        assert profile_rows(app) == [("alice", "Alice", task_id)]

        other = client.put(
            "/profiles/alice/avatar", files=avatar_upload(sample_image(500)), headers=key
        )
        assert other.status_code == 422
        assert "already used for a different request" in other.json()["detail"]
        assert every_task(processor) == [task_id]
        assert profile_rows(app) == [("alice", "Alice", task_id)]

        # A key is remembered in the application's transaction: when that rolls back (bob has
        # no profile yet), the key goes with its task, and under it another request is a first
        # request, not a conflict with one that never happened.
        bob = {"Idempotency-Key": "bob-1"}
        missing = client.put(
            "/profiles/bob/avatar", files=avatar_upload(sample_image(300)), headers=bob
        )
        assert missing.status_code == 404
        assert every_task(processor) == [task_id]
        assert client.post("/profiles", json={"id": "bob", "name": "Bob"}).status_code == 201
        made = client.put(
            "/profiles/bob/avatar", files=avatar_upload(sample_image(400)), headers=bob
        )
        assert made.status_code == 202, made.text
        second = made.json()["task_id"]
        assert every_task(processor) == sorted([task_id, second])
        assert profile_rows(app) == [("alice", "Alice", task_id), ("bob", "Bob", second)]


@pytest.mark.postgres
def test_fastapi_transactional_example_on_postgresql(postgres_url: str, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    # A plain postgresql:// URL, as a user gives it: the example's own engine uses psycopg 3 too.
    url = postgres_url.replace("postgresql+psycopg://", "postgresql://", 1)
    app = load_example("fastapi_transactional").build(url, f"file://{tmp_path / 'data'}", workers=1)
    processor: Processor = app.state.processor
    seen_at_commit: list[list[str]] = []
    sa.event.listen(
        app.state.engine, "commit", lambda conn: seen_at_commit.append(every_task(processor))
    )
    with TestClient(app) as client:
        assert client.post("/profiles", json={"id": "alice", "name": "Alice"}).status_code == 201
        reply = client.put("/profiles/alice/avatar", files=avatar_upload(sample_image()))
        assert reply.status_code == 202, reply.text
        task_id = reply.json()["task_id"]
        assert seen_at_commit == [[], []]
        missing = client.put("/profiles/bob/avatar", files=avatar_upload(sample_image(300)))
        assert missing.status_code == 404
        assert every_task(processor) == [task_id]
        assert profile_rows(app) == [("alice", "Alice", task_id)]
        assert processor.wait(task_id, timeout=TIMEOUT).status == TaskStatus.SUCCEEDED


@pytest.mark.slow
def test_fastapi_transactional_example_serves_from_the_command_line(tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "fastapi_transactional.py"), "--port", str(port),
         "--workers", "1"],
        cwd=tmp_path, env=environment(),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip

    def answer(method: str, path: str, body: bytes, content_type: str) -> Any:
        request = urllib.request.Request(
            base + path, data=body, method=method, headers={"Content-Type": content_type}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())

    def avatar() -> Any:
        with urllib.request.urlopen(f"{base}/profiles/alice", timeout=10) as response:
            found = json.loads(response.read())["avatar"]
        return found["status"] == "succeeded" and found

    boundary = "imageproc-example-boundary"
    form = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="me.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + sample_image()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    try:
        eventually(
            lambda: fetch(f"{base}/openapi.json")[0] == 200,
            timeout=TIMEOUT,
            what="the transactional FastAPI example to serve",
        )
        created = answer(
            "POST", "/profiles", b'{"id": "alice", "name": "Alice"}', "application/json"
        )
        assert created == (201, {"id": "alice"})
        status, put = answer(
            "PUT", "/profiles/alice/avatar", form, f"multipart/form-data; boundary={boundary}"
        )
        assert status == 202
        with pytest.raises(urllib.error.HTTPError) as missing:  # rolled back: no task
            answer("PUT", "/profiles/bob/avatar", form, f"multipart/form-data; boundary={boundary}")
        missing.value.close()
        assert missing.value.code == 404
        done = eventually(avatar, timeout=TIMEOUT, what="the avatar")
        assert done["task_id"] == put["task_id"]
        assert done["sizes"] == {"small": [64, 64], "large": [256, 256]}
    finally:
        code, _, stderr = stop(server, timeout=TIMEOUT)
    assert code in (0, -signal.SIGTERM), stderr
    assert "Traceback" not in stderr
    assert "Application shutdown complete" in stderr
    # One database file holds the application's table and imageproc's, as the example says.
    with contextlib.closing(sqlite3.connect(tmp_path / "imageproc.db")) as db:
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master")}
        assert {"profiles", "imageproc_tasks", "imageproc_idempotency_keys"} <= tables
        assert db.execute("SELECT avatar_task FROM profiles").fetchall() == [(put["task_id"],)]
        assert db.execute("SELECT id FROM imageproc_tasks").fetchall() == [(put["task_id"],)]


@pytest.fixture
def flask_example() -> Any:
    module = load_example("flask_app")
    yield module
    atexit.unregister(module.shutdown)  # the tests shut their processors down themselves


def test_flask_example_uploads_and_serves_variants(tmp_path: Path, flask_example: Any) -> None:
    app = flask_example.create_app(
        f"sqlite:///{tmp_path / 'tasks.db'}", f"file://{tmp_path / 'data'}", workers=2
    )
    processor: Processor = app.extensions["imageproc"]
    try:
        assert processor.pool is not None
        assert processor.pool.size == 2
        client = app.test_client()
        reply = client.post(
            "/photos", data={"image": (io.BytesIO(sample_image(2000, 1000)), "cat.jpg")}
        )
        assert reply.status_code == 202, reply.get_data(as_text=True)
        task_id = reply.get_json()["id"]
        assert reply.headers["Location"] == f"/photos/{task_id}"

        done = until(
            lambda: (
                (r := client.get(f"/photos/{task_id}").get_json())["status"] == "succeeded" and r
            ),
            "the photo's variants",
        )
        fetched = {}
        for output in done["outputs"]:
            variant = client.get(output["url"])
            assert variant.status_code == 200
            fetched[output["name"]] = (variant.mimetype, picture(variant.data))
        assert fetched == {
            "thumb": ("image/webp", ("WEBP", (256, 128))),
            "large": ("image/jpeg", ("JPEG", (1600, 800))),
        }

        assert client.post("/photos", data={}).status_code == 400
        refused = client.post("/photos", data={"image": (io.BytesIO(b"plain text"), "a.txt")})
        assert refused.status_code == 415
        assert "not a readable image" in refused.get_json()["error"]
        assert client.get("/photos/no-such-task").status_code == 404
        assert client.get(f"/photos/{task_id}/no-such-variant").status_code == 404
    finally:
        flask_example.shutdown(processor)
    assert processor.pool is None


def test_flask_example_stops_its_workers_at_exit(tmp_path: Path) -> None:
    # A process that uploads and exits at once: at exit the worker finishes the task in flight
    # (or leaves it queued if it had not claimed it yet), never stranded in "processing".
    database, storage = f"sqlite:///{tmp_path / 'tasks.db'}", f"file://{tmp_path / 'data'}"
    script = (
        "import io, sys\n"
        f"sys.path.insert(0, {str(EXAMPLES)!r})\n"
        "from flask_app import create_app\n"
        "from imageproc.testing import sample_image\n"
        "client = create_app(workers=1).test_client()\n"
        "reply = client.post('/photos', data={'image': (io.BytesIO(sample_image(4000, 3000)),"
        " 'big.jpg')})\n"
        "print(reply.status_code, reply.get_json()['id'])\n"
    )
    env = environment(IMAGEPROC_DATABASE_URL=database, IMAGEPROC_STORAGE_URL=storage)
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=TIMEOUT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    status, task_id = result.stdout.split()
    assert status == "202"
    with Processor.from_urls(database, storage, migrate=False) as library:
        task = library.get(task_id)
    assert task.status in (TaskStatus.SUCCEEDED, TaskStatus.QUEUED), task


def test_flask_example_loads_with_the_flask_command(tmp_path: Path) -> None:
    # The command line the guide gives (`flask --app 'examples/flask_app.py:create_app()' …`);
    # `routes` builds the app, starts its workers (IMAGEPROC_WORKERS as MIN:MAX), prints the
    # routes, and exits cleanly.
    result = subprocess.run(
        [sys.executable, "-m", "flask", "--app", f"{EXAMPLES / 'flask_app.py'}:create_app()",
         "routes"],
        cwd=tmp_path, env=environment(IMAGEPROC_WORKERS="1:3"), capture_output=True, text=True,
        timeout=TIMEOUT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    rules = {line.split()[-1] for line in result.stdout.splitlines()[2:]}
    assert {"/photos", "/photos/<task_id>", "/photos/<task_id>/<name>"} <= rules
    assert (tmp_path / "imageproc.db").is_file()  # the defaults: SQLite and a folder here
