"""The service examples run: examples/worker.py (a worker process with its own metrics port) and
examples/batch.py (a folder with a progress bar)."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from imageproc import Processor, TaskStatus
from imageproc.testing import sample_image
from tests.support.processes import environment, eventually, free_port, stop

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TIMEOUT = 60


@pytest.mark.slow
def test_worker_example_processes_a_task_and_stops_on_sigterm(tmp_path: Path) -> None:
    database, storage = f"sqlite:///{tmp_path / 'tasks.db'}", f"file://{tmp_path / 'data'}"
    port = free_port()
    with Processor.from_urls(database, storage) as library:
        task = library.submit(sample_image(600, 400), "t=fit:60x60,png")
        worker = subprocess.Popen(
            [sys.executable, str(EXAMPLES / "worker.py"), "--database", database,
             "--storage", storage, "--workers", "1", "--metrics-port", str(port)],
            cwd=tmp_path, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        try:
            done = eventually(
                lambda: (t := library.get(task.id)).status == TaskStatus.SUCCEEDED and t,
                timeout=TIMEOUT,
                what="the worker example to process the task",
            )
            metrics = eventually(
                lambda: urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/metrics", timeout=5
                ).read(),
                what="the worker example's metrics",
            ).decode()
        finally:
            code, stdout, stderr = stop(worker, timeout=TIMEOUT)
    assert code == 0, stderr
    assert "Traceback" not in stderr
    assert stdout.splitlines() == [f"metrics on http://127.0.0.1:{port}/metrics", "stopped"]
    assert (done.outputs[0].width, done.outputs[0].height) == (60, 40)
    assert "imageproc_tasks_succeeded_total 1.0" in metrics
    assert 'imageproc_queue_tasks{state="queued"} 0.0' in metrics


def test_batch_example_processes_a_folder_and_reports_bad_files(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "wide.jpg").write_bytes(sample_image(1000, 500))
    (folder / "tall.png").write_bytes(sample_image(200, 400, "PNG"))
    (folder / "readme.txt").write_text("not an image")
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "batch.py"), str(folder), "-p", "t=fit:100x100,webp",
         "-o", "out"],
        cwd=tmp_path, env=environment(), capture_output=True, text=True, timeout=TIMEOUT,
    )  # fmt: skip
    assert time.monotonic() - started < TIMEOUT
    assert result.returncode == 1  # one file was not an image
    assert "Traceback" not in result.stderr
    assert "readme.txt: refused: not a readable image" in result.stderr
    assert "2/2" in result.stderr  # the progress bar reached the end
    assert result.stdout.strip() == "2 of 3 files processed into out"
    sizes = {}
    for path in sorted((tmp_path / "out").iterdir()):
        with Image.open(path) as image:
            sizes[path.name] = (image.format, image.size)
    assert sizes == {"tall-t.webp": ("WEBP", (50, 100)), "wide-t.webp": ("WEBP", (100, 50))}


def test_starlette_example_refuses_a_weak_key_with_a_message(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "starlette_app.py"), "--api-keys", "alice:short"],
        cwd=tmp_path,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "too weak" in result.stderr or "128 bits" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
