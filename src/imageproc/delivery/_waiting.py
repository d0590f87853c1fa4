"""Waiting for a task to end: woken by the completion push where the backend has one, by
polling where it has none."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Final

from imageproc._task import Task
from imageproc.delivery._completions import Completions
from imageproc.errors import WaitTimeout

__all__ = ["wait_for_end"]

#: How a waiter polls a repository that pushes no completions (a custom backend): from the
#: first pause, doubling up to the last.
_POLL_FIRST: Final = 0.005
_POLL_MAX: Final = 0.25


def wait_for_end(
    get: Callable[[str], Task],
    task_id: str,
    *,
    timeout: float,
    completions: Completions | None,
) -> Task:
    """The task once it is in a final status, read with ``get``; woken by ``completions`` (and
    reading again every ``completions.poll_interval`` seconds, if it says so), or polling with
    backoff without them. :class:`~imageproc.WaitTimeout` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    if completions is None:
        return _poll(get, task_id, deadline, timeout)
    woken = threading.Event()
    ended: list[Task] = []

    def on_end(_: str, task: Task | None) -> None:
        if task is not None and task.status.is_final:
            ended.append(task)
        else:  # only the id is known (another process): read it
            ended.clear()
        woken.set()

    # Subscribed before the first read, so an end between the read and the wait wakes it.
    with completions.subscribe(task_id, on_end, timeout=timeout):
        while True:
            woken.clear()
            task = ended[-1] if ended else get(task_id)
            if task.status.is_final:
                return task
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WaitTimeout(f"task {task_id} is still {task.status} after {timeout}s")
            poll = completions.poll_interval
            woken.wait(remaining if poll is None else min(poll, remaining))


def _poll(get: Callable[[str], Task], task_id: str, deadline: float, timeout: float) -> Task:
    pause = _POLL_FIRST
    while True:
        task = get(task_id)
        if task.status.is_final:
            return task
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise WaitTimeout(f"task {task_id} is still {task.status} after {timeout}s")
        time.sleep(min(pause, remaining))
        pause = min(pause * 2, _POLL_MAX)
