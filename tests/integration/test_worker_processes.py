"""Processor.run in a process of its own: SIGTERM stops it gracefully, the tasks under way
finished or put back."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest


@pytest.mark.slow
def test_run_stops_gracefully_on_sigterm(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys
            from imageproc import TaskStatus
            from imageproc.testing import memory_processor, sample_image
            from tests.support.doubles import SlowStorage

            proc = memory_processor()
            proc.storage = SlowStorage(proc.storage, 0.2)
            ids = [proc.submit(sample_image(64, 48)).id for _ in range(20)]
            print("ready", flush=True)
            proc.run(workers=2, stop_timeout=10)
            counts = {}
            for task_id in ids:
                status = proc.get(task_id).status
                counts[status] = counts.get(status, 0) + 1
            print(sorted(counts.items()), flush=True)
            assert set(counts) <= {TaskStatus.SUCCEEDED, TaskStatus.QUEUED}, counts
            assert counts.get(TaskStatus.SUCCEEDED, 0) >= 2, counts
            """
        )
    )
    root = Path(__file__).resolve().parents[2]
    child = subprocess.Popen(
        [sys.executable, str(script)],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        time.sleep(0.7)
        child.terminate()  # SIGTERM
        out, err = child.communicate(timeout=30)
    finally:
        child.kill()
    assert child.returncode == 0, err
    assert "succeeded" in out
