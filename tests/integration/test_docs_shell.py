"""The getting-started page's shell commands, run as written by bash in a fresh folder against a
real ``imageproc serve``: the install line aside, every block, in order. ``.venv/bin/imageproc``
is this interpreter's ``python -m imageproc``; only the server's port differs from the page."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.error
from pathlib import Path

import pytest
from PIL import Image

from imageproc.testing import sample_image
from tests.support.processes import environment, eventually, fetch, free_port

PAGE = Path(__file__).resolve().parents[2] / "docs" / "getting-started.md"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (shutil.which("curl") and shutil.which("openssl")), reason="needs curl and openssl"
    ),
]


def shell_blocks() -> list[str]:
    return re.findall(r"```sh\n(.*?)```", PAGE.read_text(), flags=re.DOTALL)


def bash(script: str, cwd: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    """``script`` under ``bash -euo pipefail`` in a session of its own (so the whole of it can be
    stopped), its output captured."""
    return subprocess.Popen(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def run(script: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``script`` under ``bash -euo pipefail``, to its end (two minutes at most)."""
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def stop(server: subprocess.Popen[str]) -> str:
    """SIGTERM to everything the block started; what it printed."""
    os.killpg(server.pid, signal.SIGTERM)
    out, err = server.communicate(timeout=30)
    return out + err


def upload_status(base: str, headers: dict[str, str]) -> int:
    try:
        url = f"{base}/upload?pipeline=t=fit:8x8,png"
        return int(fetch(url, TINY, {"Content-Type": "image/png", **headers})[0])
    except urllib.error.HTTPError as error:
        return error.code


TINY = sample_image(16, 16, "PNG")


def test_the_getting_started_shell_commands_work_as_written(tmp_path: Path) -> None:
    install, serve, use, secure, batch = shell_blocks()
    assert ".[http,metrics]" in install  # installing is what the test session itself did
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "imageproc").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m imageproc "$@"\n')
    (bin_dir / "imageproc").chmod(0o755)
    (tmp_path / "cat.jpg").write_bytes(sample_image(1200, 800))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = environment(IMAGEPROC_PORT=str(port))

    server = bash(serve, tmp_path, env)
    try:
        eventually(lambda: fetch(f"{base}/healthz")[0] == 200, what="imageproc serve")
        used = run(use.replace("127.0.0.1:8000", f"127.0.0.1:{port}"), tmp_path, env)
        assert used.returncode == 0, used.stderr
    finally:
        stop(server)
    with Image.open(tmp_path / "thumb.webp") as thumb:
        assert (thumb.format, thumb.size) == ("WEBP", (256, 171))

    secured = bash(secure, tmp_path, env)
    try:
        eventually(lambda: fetch(f"{base}/healthz")[0] == 200, what="the secured serve")
        assert upload_status(base, {}) == 401
        printed = eventually(lambda: secured.stdout and secured.stdout.readline(), what="the key")
        key = re.fullmatch(r"alice's API key: ([0-9a-f]{32})\n", printed)
        assert key is not None, printed
        assert upload_status(base, {"Authorization": f"Bearer {key[1]}"}) == 202
    finally:
        stop(secured)

    (tmp_path / "photos").mkdir()
    for name in ("a.jpg", "b.jpg"):
        (tmp_path / "photos" / name).write_bytes(sample_image(2000, 1000))
    batched = run(batch, tmp_path, env)
    assert batched.returncode == 0, batched.stderr
    made = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert made == ["a-large.jpg", "a-thumb.webp", "b-large.jpg", "b-thumb.webp"]
