"""Helpers for tests that start processes of their own: the ``imageproc`` command, servers on a
free port, and waiting for them to answer."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

#: Seconds a command may take to answer or to stop.
TIMEOUT = 60


def environment(**extra: str) -> dict[str, str]:
    # The developer's own IMAGEPROC_* settings must not leak into the commands under test.
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEPROC_")}
    return env | extra


def start(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """``python -m imageproc ARGS`` started in ``cwd``, its output piped."""
    return subprocess.Popen(
        [sys.executable, "-m", "imageproc", *args],
        cwd=cwd,
        env=env or environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def stop(process: subprocess.Popen[str], *, timeout: float = TIMEOUT) -> tuple[int, str, str]:
    """SIGTERM, then the exit status, stdout and stderr (killing it if it will not stop within
    ``timeout`` seconds, and failing the test)."""
    process.send_signal(signal.SIGTERM)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        _, stderr = process.communicate()
        pytest.fail(f"{process.args[1:3]} did not stop on SIGTERM:\n{stderr}")
    return process.returncode, stdout, stderr


def end(process: subprocess.Popen[Any], *, timeout: float = 30) -> None:
    """Stop ``process`` if it still runs: SIGTERM, and SIGKILL if it has not ended within
    ``timeout`` seconds (a test's teardown, which must not hang)."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def eventually(check: Any, *, timeout: float = TIMEOUT, what: str = "condition") -> Any:
    """``check()``'s first true result, retried every 0.1 s (a refused connection counts as
    false) until ``timeout`` seconds have passed, when the test fails."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
        except (OSError, urllib.error.URLError):
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


def fetch(url: str, data: bytes | None = None, headers: dict[str, str] | None = None) -> Any:
    """The status and body of a GET (or, with ``data``, a POST) to ``url``."""
    request = urllib.request.Request(url, data=data, headers=headers or {})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, response.read()


class ServeProcess:
    """``imageproc serve`` run in ``folder`` with ``env`` (which names ``port``), its log in a file
    (a pipe could fill up and stall it); constructed once ``/healthz`` answers, or the test
    fails with the log."""

    #: Seconds the server may take to answer its first health check.
    STARTUP = 30.0

    def __init__(self, folder: Path, port: int, env: dict[str, str], *args: str) -> None:
        self.port = port
        self.log_path = folder / "serve.log"
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "imageproc", "serve", *args],
                cwd=folder,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + self.STARTUP
        while not self._healthy():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"imageproc serve did not start:\n{self.log()}")
            time.sleep(0.1)

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=1) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def log(self) -> str:
        """What the server has written so far."""
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL if it lingers)."""
        end(self.process)
