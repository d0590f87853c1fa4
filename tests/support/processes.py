"""Helpers for tests that start processes of their own."""

from __future__ import annotations

import signal
import subprocess
from typing import Any


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
