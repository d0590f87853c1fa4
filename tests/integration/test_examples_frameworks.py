"""The framework examples, served in this process by the frameworks' own test clients:
examples/fastapi_app.py (ASGI, workers in the lifespan) and examples/flask_app.py (WSGI, workers
started with the app and stopped at exit)."""

from __future__ import annotations

import atexit
import importlib.util
import io
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from PIL import Image

from imageproc import Processor, TaskStatus
from imageproc.testing import sample_image
from tests.support.processes import environment, eventually, free_port, stop

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
