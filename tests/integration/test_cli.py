"""The ``imageproc`` command, each subcommand run as a real subprocess in a temporary folder."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from imageproc import Processor, TaskNotFound, TaskStatus, __version__
from imageproc import _keys as keys
from imageproc.testing import sample_image
from tests.support.processes import (
    TIMEOUT,
    environment,
    eventually,
    fetch,
    free_port,
    start,
    stop,
)


def imageproc(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "imageproc", *args],
        cwd=cwd,
        env=env or environment(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


@pytest.fixture
def urls(tmp_path: Path) -> tuple[str, str]:
    return f"sqlite:///{tmp_path / 'imageproc.db'}", f"file://{tmp_path / 'data'}"


@pytest.fixture
def library(urls: tuple[str, str]) -> Iterator[Processor]:
    """The library side, on the same database and storage as the commands."""
    with Processor.from_urls(*urls) as processor:
        yield processor


# -- usage and configuration ------------------------------------------------------------------


def test_help_lists_every_command(tmp_path: Path) -> None:
    result = imageproc("--help", cwd=tmp_path)
    assert result.returncode == 0
    for command in ("serve", "worker", "process", "status", "migrate", "purge", "tasks"):
        assert command in result.stdout


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["worker"], {"IMAGEPROC_WORKERS": "lots"}, "IMAGEPROC_WORKERS: expected a count"),
        (["worker", "--workers", "4:2"], {}, "--workers: need 1 <= MIN <= MAX, got 4:2"),
        (["serve", "--port", "99999"], {}, "--port: must be a port number from 1 to 65535"),
        (["--env-file", "nope.env", "migrate"], {}, "cannot read nope.env"),
        (["--database-url", "mysql://x", "worker"], {}, "unsupported database URL scheme"),
        (["--database-url", "mysql://x", "status", "x"], {}, "status needs a SQLite or PostgreSQL"),
        (["--database-url", "memory://", "migrate"], {}, "migrate needs a SQLite or PostgreSQL"),
        (
            ["purge", "--older-than", "0s"],
            {},
            "no database at imageproc.db: run `imageproc migrate`",
        ),
        (["migrate"], {"IMAGEPROC_PIPELINE": "thumbnail"}, "IMAGEPROC_PIPELINE: neither a preset"),
        (["serve", "--root-path", "images/"], {}, "--root-path: must start with / and not end"),
        (
            ["serve"],
            {"IMAGEPROC_API_KEYS": "alice:k1"},
            "IMAGEPROC_API_KEYS: too weak to use: the API key of 'alice'",
        ),
        (
            ["serve"],
            {"IMAGEPROC_SIGNING_KEYS": "s1", "IMAGEPROC_ALLOW_WEAK_KEYS": "no"},
            "IMAGEPROC_SIGNING_KEYS: too weak to use: signing key 1",
        ),
    ],
)
def test_bad_configuration_is_one_line_and_exit_2(
    tmp_path: Path, args: list[str], env: dict[str, str], message: str
) -> None:
    result = imageproc(*args, cwd=tmp_path, env=environment(**env))
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"imageproc: error: {message}")
    assert result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr


def test_env_file_in_the_working_directory_is_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("IMAGEPROC_DATABASE_URL=sqlite:///from-dotenv.db\n")
    assert imageproc("migrate", cwd=tmp_path).returncode == 0
    assert (tmp_path / "from-dotenv.db").is_file()
    # The environment wins over .env, and a flag over both.
    env = environment(IMAGEPROC_DATABASE_URL="sqlite:///from-env.db")
    assert imageproc("migrate", cwd=tmp_path, env=env).returncode == 0
    assert (tmp_path / "from-env.db").is_file()
    flag = imageproc("--database-url", "sqlite:///from-flag.db", "migrate", cwd=tmp_path, env=env)
    assert flag.returncode == 0
    assert (tmp_path / "from-flag.db").is_file()


# -- migrate and status -----------------------------------------------------------------------


def test_migrate_creates_the_schema_and_prints_the_revision(tmp_path: Path) -> None:
    first = imageproc("migrate", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stdout == "schema at revision 0007\n"
    assert (tmp_path / "imageproc.db").is_file()  # the default database
    again = imageproc("migrate", cwd=tmp_path)  # idempotent
    assert (again.returncode, again.stdout) == (0, "schema at revision 0007\n")


def test_status_prints_the_task_as_json(
    tmp_path: Path, urls: tuple[str, str], library: Processor
) -> None:
    task = library.submit(sample_image(300, 200), "small=fit:30x30,png")
    result = imageproc(
        "--database-url", urls[0], "--storage-url", urls[1], "status", task.id, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["id"] == task.id
    assert shown["status"] == "queued"
    assert shown["pipeline"] == "small=fit:30x30,png"
    assert shown["source"]["width"] == 300
    assert shown["created_at"].endswith("Z")
    assert shown["outputs"] == []
    assert shown["error"] is None


def test_status_of_an_unknown_task_exits_1(tmp_path: Path, urls: tuple[str, str]) -> None:
    imageproc("--database-url", urls[0], "migrate", cwd=tmp_path)
    result = imageproc("--database-url", urls[0], "status", "no-such-task", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr == "imageproc: error: no task with id 'no-such-task'\n"


def test_purge_deletes_old_finished_tasks_with_their_files(
    tmp_path: Path, urls: tuple[str, str], library: Processor
) -> None:
    done = library.submit(sample_image(300, 200), "small=fit:30x30,png")
    library.run_until_idle()
    waiting = library.submit(sample_image(200, 300), "small=fit:30x30,png")
    output = library.get(done.id).outputs[0].key
    args = ("--database-url", urls[0], "--storage-url", urls[1], "purge")
    kept = imageproc(*args, "--older-than", "1d", cwd=tmp_path)
    assert (kept.returncode, kept.stdout) == (
        0,
        "purged 0 finished task(s) older than 1d\nremoved 0 orphaned original(s) older than 1h\n",
    )
    purged = imageproc(*args, "--older-than", "0s", cwd=tmp_path)
    assert purged.returncode == 0, purged.stderr
    assert purged.stdout.splitlines()[0] == "purged 1 finished task(s) older than 0s"
    with pytest.raises(TaskNotFound):
        library.get(done.id)
    assert not library.storage.exists(output)
    assert library.get(waiting.id).status == TaskStatus.QUEUED  # unfinished tasks stay


def test_purge_removes_originals_no_task_refers_to_after_the_grace_period(
    tmp_path: Path, urls: tuple[str, str], library: Processor
) -> None:
    task = library.submit(sample_image(300, 200), "small=fit:30x30,png")
    # Stored, but its task never recorded (a process killed in between): an orphan, 2 hours old.
    orphan = keys.source_key("ab" * 32, "png", "alice")
    library.storage.put(orphan, b"png", content_type="image/png")
    path = tmp_path / "data" / orphan
    two_hours_ago = time.time() - 7200
    os.utime(path, (two_hours_ago, two_hours_ago))
    args = ("--database-url", urls[0], "--storage-url", urls[1], "purge", "--older-than", "1d")

    kept = imageproc(*args, "--orphans-older-than", "3h", cwd=tmp_path)
    assert (kept.returncode, kept.stdout.splitlines()[1:]) == (
        0,
        ["removed 0 orphaned original(s) older than 3h"],
    )
    assert path.exists()
    removed = imageproc(*args, cwd=tmp_path)  # the default grace period: 1h
    assert removed.returncode == 0, removed.stderr
    assert removed.stdout == (
        "purged 0 finished task(s) older than 1d\nremoved 1 orphaned original(s) older than 1h\n"
    )
    assert not path.exists()
    assert library.storage.exists(task.source_key)  # its task is queued
    refused = imageproc(*args, "--orphans-older-than", "soon", cwd=tmp_path)
    assert refused.returncode == 2
    assert "argument --orphans-older-than" in refused.stderr


def test_tasks_lists_a_status_as_json_lines(
    tmp_path: Path, urls: tuple[str, str], library: Processor
) -> None:
    first = library.submit(sample_image(30, 20), "a=png")
    second = library.submit(sample_image(20, 30), "a=png")
    library.cancel(first.id)
    args = ("--database-url", urls[0], "tasks")
    queued = imageproc(*args, "--status", "queued", cwd=tmp_path)
    assert queued.returncode == 0, queued.stderr
    assert [json.loads(line)["id"] for line in queued.stdout.splitlines()] == [second.id]
    cancelled = imageproc(*args, "--status", "cancelled", "--limit", "5", cwd=tmp_path)
    [shown] = [json.loads(line) for line in cancelled.stdout.splitlines()]
    assert (shown["id"], shown["status"]) == (first.id, "cancelled")
    dead = imageproc(*args, "--status", "dead", cwd=tmp_path)
    assert (dead.stdout, dead.stderr) == ("", "no dead tasks\n")  # stdout stays JSON lines
    wrong = imageproc(*args, "--status", "lost", cwd=tmp_path)
    assert wrong.returncode == 2
    assert "invalid choice: 'lost'" in wrong.stderr


def test_tasks_filters_by_metadata(
    tmp_path: Path, urls: tuple[str, str], library: Processor
) -> None:
    text = library.submit(sample_image(30, 20), "a=png", metadata={"user": "42", "n": 7})
    number = library.submit(sample_image(20, 30), "a=png", metadata={"user": 42, "ok": True})
    args = ("--database-url", urls[0], "tasks", "--status", "queued")

    def ids(*flags: str) -> list[str]:
        result = imageproc(*args, *flags, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        return [json.loads(line)["id"] for line in result.stdout.splitlines()]

    assert ids("--metadata", "user=42") == [text.id]
    assert ids("--metadata-json", "user=42") == [number.id]
    assert ids("--metadata-json", "ok=true", "--metadata-json", "user=42") == [number.id]
    assert ids("--metadata", "user=42", "--metadata-json", "n=7") == [text.id]
    assert ids("--metadata", "user=43") == []
    [shown] = [
        json.loads(line)
        for line in imageproc(*args, "--metadata", "user=42", cwd=tmp_path).stdout.splitlines()
    ]
    assert shown["metadata"] == {"user": "42", "n": 7}
    for bad in (("--metadata", "user"), ("--metadata", "a b=1"), ("--metadata-json", "user=x")):
        refused = imageproc(*args, *bad, cwd=tmp_path)
        assert refused.returncode == 2, refused.stderr
        assert bad[0] in refused.stderr


def test_purge_needs_a_duration_with_a_unit(tmp_path: Path) -> None:
    result = imageproc("purge", "--older-than", "30", cwd=tmp_path)
    assert result.returncode == 2
    assert "expected a duration such as 30d, 12h or 90m, got '30'" in result.stderr
    huge = imageproc("purge", "--older-than", "99999999999d", cwd=tmp_path)
    assert huge.returncode == 2
    assert "'99999999999d' is longer than a duration can be" in huge.stderr
    assert "Traceback" not in huge.stderr


# -- process ----------------------------------------------------------------------------------


def test_process_writes_every_variant_of_every_file(tmp_path: Path) -> None:
    (tmp_path / "cat.jpg").write_bytes(sample_image(800, 600))
    (tmp_path / "dog.png").write_bytes(sample_image(300, 600, "PNG"))
    result = imageproc(
        "process", "cat.jpg", "dog.png", "-o", "out",
        "-p", "thumb=fit:100x100,webp;gray=fit:200x200,grayscale,png", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    expected = {
        "cat-thumb.webp": ("WEBP", (100, 75)),
        "cat-gray.png": ("PNG", (200, 150)),
        "dog-thumb.webp": ("WEBP", (50, 100)),
        "dog-gray.png": ("PNG", (100, 200)),
    }
    assert {p.name for p in (tmp_path / "out").iterdir()} == set(expected)
    for name, (format, size) in expected.items():
        with Image.open(tmp_path / "out" / name) as image:
            assert (image.format, image.size) == (format, size), name
    assert "[1/2]" in result.stderr
    assert "[2/2]" in result.stderr
    assert "2 processed, 0 failed" in result.stderr
    assert not (tmp_path / "imageproc.db").exists()  # no queue, no database


def test_process_uses_the_default_pipeline_and_the_current_folder(tmp_path: Path) -> None:
    (tmp_path / "wide.jpg").write_bytes(sample_image(1600, 400))
    result = imageproc("process", "wide.jpg", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    outputs = [p for p in tmp_path.iterdir() if p.name.startswith("wide-")]
    assert len(outputs) == 1
    with Image.open(outputs[0]) as image:
        assert (image.format, image.width) == ("JPEG", 800)


def test_process_reports_bad_files_and_exits_1(tmp_path: Path) -> None:
    (tmp_path / "good.jpg").write_bytes(sample_image(200, 100))
    (tmp_path / "notes.jpg").write_text("not an image")
    image = sample_image(400, 300)
    (tmp_path / "cut.jpg").write_bytes(image[: len(image) // 2])
    result = imageproc(
        "process", "good.jpg", "notes.jpg", "cut.jpg", "missing.jpg", "-p", "t=fit:50x50,png",
        "-o", "out", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "error: notes.jpg: not a readable image" in result.stderr
    assert "error: cut.jpg: corrupt or truncated image" in result.stderr
    assert "error: missing.jpg: cannot read: No such file or directory" in result.stderr
    assert "1 processed, 3 failed" in result.stderr
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["good-t.png"]


def test_process_refuses_a_bad_pipeline_with_exit_2(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(sample_image(20, 20))
    result = imageproc("process", "a.jpg", "-p", "t=zoom:3", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("imageproc: error: unknown operation, format or option 'zoom'")
    assert "Traceback" not in result.stderr


# -- worker and serve -------------------------------------------------------------------------


@pytest.mark.slow
def test_worker_processes_tasks_submitted_through_the_library(
    tmp_path: Path, urls: tuple[str, str], library: Processor
) -> None:
    ids = [library.submit(sample_image(400, 300), "t=fit:40x40,png").id for _ in range(3)]
    port = free_port()
    env = environment(
        IMAGEPROC_DATABASE_URL=urls[0], IMAGEPROC_STORAGE_URL=urls[1], IMAGEPROC_LEASE_SECONDS="5"
    )
    worker = start("worker", "--workers", "1:2", "--metrics-port", str(port), cwd=tmp_path, env=env)
    try:
        eventually(
            lambda: all(library.get(i).status == TaskStatus.SUCCEEDED for i in ids),
            what="the worker to process every task",
        )
        metrics = eventually(
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read(),
            what="the metrics endpoint",
        ).decode()
        assert "imageproc_tasks_succeeded_total 3.0" in metrics
        assert "imageproc_workers_total" in metrics
    finally:
        status, _, stderr = stop(worker)
    assert status == 0, stderr
    assert "Traceback" not in stderr
    task = library.get(ids[0])
    assert (task.outputs[0].width, task.outputs[0].height) == (40, 30)


@pytest.mark.slow
def test_serve_answers_uploads_and_stops_on_sigterm(tmp_path: Path) -> None:
    pytest.importorskip("imageproc.http", reason="the HTTP adapter (imageproc.http) is not built")
    port = free_port()
    server = start("serve", "--port", str(port), "--workers", "1:2", cwd=tmp_path)
    base = f"http://127.0.0.1:{port}"
    try:
        status, body = eventually(lambda: fetch(f"{base}/healthz"), what="/healthz")
        assert status == 200
        upload = BytesIO()
        Image.new("RGB", (640, 480), "teal").save(upload, "PNG")
        boundary = "imageproc-test-boundary"
        form = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="pipeline"\r\n\r\n'
                "small=fit:64x64,png\r\n"
                f"--{boundary}\r\n"
                'Content-Disposition: form-data; name="image"; filename="a.png"\r\n'
                "Content-Type: image/png\r\n\r\n"
            ).encode()
            + upload.getvalue()
            + f"\r\n--{boundary}--\r\n".encode()
        )
        status, body = fetch(
            f"{base}/upload", form, {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        )
        assert status == 202, body
        task_id = json.loads(body)["id"]

        def succeeded() -> dict[str, Any] | None:
            task: dict[str, Any] = json.loads(fetch(f"{base}/status/{task_id}")[1])
            return task if task["status"] == "succeeded" else None

        task = eventually(succeeded, what="the upload to be processed")
        output = task["outputs"][0]
        assert (output["width"], output["height"]) == (64, 48)
        status, image = fetch(output["url"] if "://" in output["url"] else base + output["url"])
        with Image.open(BytesIO(image)) as picture:
            assert picture.size == (64, 48)
        status, metrics = fetch(f"{base}/metrics")
        assert b"imageproc_tasks_succeeded_total 1.0" in metrics
    finally:
        code, _, stderr = stop(server)
    assert code == 0, stderr
    assert "Traceback" not in stderr
    # It says where it serves, with how many workers, on which database and storage.
    said = f"serving on http://127.0.0.1:{port} with 1-2 worker threads, tasks in"
    assert f"{said} sqlite:///imageproc.db, files in file://imageproc-data" in stderr
    assert "received SIGTERM: letting tasks in flight finish" in stderr
    assert (tmp_path / "imageproc.db").is_file()  # SQLite and a local folder by default
    assert (tmp_path / "imageproc-data" / "outputs").is_dir()


@pytest.mark.slow
def test_serve_without_workers_behind_a_path_prefix(tmp_path: Path) -> None:
    pytest.importorskip("imageproc.http", reason="the HTTP adapter (imageproc.http) is not built")
    port = free_port()
    env = environment(
        IMAGEPROC_PRESETS='{"tiny": "fit:8x8,png"}',
        IMAGEPROC_PIPELINE="tiny",
        IMAGEPROC_MAX_PRIORITY="*:0",
    )
    server = start(
        "serve", "--port", str(port), "--no-workers", "--root-path", "/images",
        cwd=tmp_path, env=env,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        eventually(lambda: fetch(f"{base}/healthz")[0] == 200, what="/healthz")
        upload = BytesIO()
        Image.new("RGB", (64, 48), "teal").save(upload, "PNG")
        status, body = fetch(f"{base}/upload", upload.getvalue(), {"Content-Type": "image/png"})
        assert status == 202, body
        accepted = json.loads(body)
        with pytest.raises(urllib.error.HTTPError) as urgent:
            fetch(f"{base}/upload?priority=1", upload.getvalue(), {"Content-Type": "image/png"})
        urgent.value.close()  # it holds the connection
        assert urgent.value.code == 403  # IMAGEPROC_MAX_PRIORITY reached the app
        # The proxy in front adds /images: the URLs the service writes must carry it.
        assert accepted["status_url"] == f"{base}/images/status/{accepted['id']}"
        time.sleep(1)  # long enough for an embedded worker to have taken it, were there one
        assert json.loads(fetch(f"{base}/status/{accepted['id']}")[1])["status"] == "queued"
    finally:
        code, _, stderr = stop(server)
    assert code == 0, stderr
    shown = imageproc("status", accepted["id"], cwd=tmp_path, env=env)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["pipeline"] == "default=fit:8x8,png"  # IMAGEPROC_PIPELINE


def test_serve_on_a_taken_port_fails_with_a_message(tmp_path: Path) -> None:
    pytest.importorskip("imageproc.http", reason="the HTTP adapter (imageproc.http) is not built")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = imageproc("serve", "--port", str(port), cwd=tmp_path)
        # Weak keys, allowed: the app is made (and says so, loudly) before the port is tried.
        weak = environment(IMAGEPROC_SIGNING_KEYS="s1", IMAGEPROC_ALLOW_WEAK_KEYS="true")
        allowed = imageproc("serve", "--port", str(port), cwd=tmp_path, env=weak)
    assert result.returncode == 1
    assert f"imageproc: error: the HTTP server could not start on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr
    assert "WEAK KEYS IN USE" not in result.stderr
    assert allowed.returncode == 1, allowed.stderr
    assert (
        "WARNING imageproc.http: WEAK KEYS IN USE: signing key 1 can be guessed" in allowed.stderr
    )


def test_status_without_a_database_says_to_migrate_and_creates_nothing(tmp_path: Path) -> None:
    result = imageproc("status", "some-task", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == (
        "imageproc: error: no database at imageproc.db: run `imageproc migrate` first\n"
    )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal")
def test_process_redraws_one_progress_line_on_a_terminal(tmp_path: Path) -> None:
    import pty

    for name in ("a.jpg", "b.jpg"):
        (tmp_path / name).write_bytes(sample_image(100, 100))
    controller, terminal = pty.openpty()
    try:
        completed = subprocess.run(
            [sys.executable, "-m", "imageproc", "process", "a.jpg", "b.jpg", "-o", "out"],
            cwd=tmp_path, env=environment(), stderr=terminal, stdout=subprocess.DEVNULL,
            timeout=TIMEOUT, check=False,
        )  # fmt: skip
        os.close(terminal)
        terminal = -1
        shown = b""
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # EIO: the terminal's other end is closed and drained
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(controller)
        if terminal != -1:
            os.close(terminal)
    assert completed.returncode == 0
    text = shown.decode()
    assert f"\r[{'#' * 10}{'-' * 10}] 1/2 " in text  # a bar, half full...
    assert f"\r[{'#' * 20}] 2/2 " in text  # ...then full
    assert "2 processed, 0 failed" in text


def test_process_refuses_files_whose_outputs_would_overwrite_each_other(tmp_path: Path) -> None:
    for name in ("a/cat.jpg", "b/cat.jpg", "dog.jpg", "dog.png"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(
            sample_image(40, 30, "PNG" if name.endswith("png") else "JPEG")
        )
    result = imageproc("process", "a/cat.jpg", "b/cat.jpg", "dog.jpg", "dog.png", cwd=tmp_path)
    assert result.returncode == 2
    assert "a/cat.jpg and b/cat.jpg" in result.stderr
    assert "dog.jpg and dog.png" in result.stderr
    assert not list(tmp_path.glob("*-default.*"))  # refused before anything was written


def test_process_takes_a_folder_as_the_files_in_it(tmp_path: Path) -> None:
    (tmp_path / "photos").mkdir()
    for name in ("one.jpg", "two.jpg", ".hidden.jpg"):
        (tmp_path / "photos" / name).write_bytes(sample_image(40, 30))
    result = imageproc("process", "photos", "-p", "t=fit:20x20,png", "-o", "out", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["one-t.png", "two-t.png"]


def test_version_and_every_commands_help_say_what_they_are(tmp_path: Path) -> None:
    version = imageproc("--version", cwd=tmp_path)
    assert (version.returncode, version.stdout.strip()) == (0, f"imageproc {__version__}")
    for name in ("serve", "worker", "process", "status", "migrate", "purge", "tasks"):
        shown = imageproc(name, "--help", cwd=tmp_path)
        assert shown.returncode == 0
        description = shown.stdout.split("\n\n")[1]  # after the usage lines
        assert description[:1].isupper(), (name, description)
    process = " ".join(imageproc("process", "--help", cwd=tmp_path).stdout.split())  # unwrapped
    assert "default: the current folder" in process
    assert "default: one per core" in process


@pytest.mark.parametrize(
    ("args", "refused"),
    [
        (("tasks", "--status", "dead", "--limit", "1_0"), "argument --limit"),
        (("tasks", "--status", "dead", "--limit", "\uff11\uff10"), "argument --limit"),  # fullwidth
        (("purge", "--older-than", "\u0663d"), "argument --older-than"),  # Arabic-Indic 3
        (("process", "--jobs", "\u0968", "x.jpg"), "argument -j/--jobs"),  # Devanagari 2
    ],
)
def test_numbers_on_the_command_line_are_ascii_digits_only(
    tmp_path: Path, args: tuple[str, ...], refused: str
) -> None:
    result = imageproc(*args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert refused in result.stderr  # a usage error naming the option, before anything runs
    assert "Traceback" not in result.stderr


def test_webhooks_lists_and_resends_dead_deliveries(tmp_path: Path, urls: tuple[str, str]) -> None:
    from datetime import timedelta

    from imageproc import DeliveryStore, Webhooks

    hook = "https://93.184.216.34/hook"  # never sent to: no sender runs
    with Processor.from_urls(*urls, webhooks=Webhooks(secrets=[Webhooks.new_secret()])) as lib:
        task = lib.submit(sample_image(30, 20), "a=png", callback_url=hook)
        lib.cancel(task.id)
        store = lib.repository
        assert isinstance(store, DeliveryStore)
        [taken] = store.claim_deliveries(lib.clock(), limit=1, hold=timedelta(seconds=30))
        assert store.settle_delivery(taken.failed("answered 502", status_code=502, retry_at=None))
    args = ("--database-url", urls[0], "webhooks")
    listed = imageproc(*args, "list", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    [shown] = [json.loads(line) for line in listed.stdout.splitlines()]
    assert (shown["id"], shown["task_id"], shown["last_error"]) == (
        taken.id,
        task.id,
        "answered 502",
    )
    unnamed = imageproc(*args, "resend", cwd=tmp_path)
    assert unnamed.returncode == 2
    assert "--all" in unnamed.stderr
    resent = imageproc(*args, "resend", taken.id, cwd=tmp_path)
    assert (resent.returncode, resent.stdout) == (0, "1 dead deliveries due again\n")
    none = imageproc(*args, "list", cwd=tmp_path)
    assert (none.stdout, none.stderr) == ("", "no dead deliveries\n")
    pending = imageproc(*args, "list", "--status", "pending", cwd=tmp_path)
    assert json.loads(pending.stdout)["attempts"] == 0
    secret = imageproc("webhooks", "secret", cwd=tmp_path)
    assert secret.stdout.startswith("whsec_")
    Webhooks(secrets=[secret.stdout.strip()])  # a secret Webhooks accepts
