"""Helpers for tests that run an asyncio event loop: a bounded ``run``, a heartbeat that shows
whether the loop was ever blocked, and a sampler of the process's thread count."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from types import TracebackType
from typing import Any, TypeVar

T = TypeVar("T")

#: No test's event loop runs longer than this (each wait inside is bounded more tightly).
LOOP_TIMEOUT = 60.0


def run(coroutine: Coroutine[Any, Any, T], timeout: float = LOOP_TIMEOUT) -> T:
    """``asyncio.run`` the coroutine, failing after ``timeout`` seconds."""

    async def bounded() -> T:
        return await asyncio.wait_for(coroutine, timeout)

    return asyncio.run(bounded())


class _Sampler:
    """Runs ``sample()`` every ``interval`` seconds on the loop between ``async with`` and its
    end."""

    interval = 0.01

    def __init__(self) -> None:
        self._task: asyncio.Task[None] | None = None

    def sample(self) -> None:
        raise NotImplementedError

    async def _run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.interval)

    async def __aenter__(self) -> Any:
        self.sample()
        self._task = asyncio.get_running_loop().create_task(self._run())
        await asyncio.sleep(0)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self.sample()


class Heartbeat(_Sampler):
    """Ticks every 10 ms; :attr:`max_gap` is the longest time between two ticks: a loop blocked
    by a synchronous call shows as a long gap."""

    def __init__(self) -> None:
        super().__init__()
        self.ticks = 0
        self.max_gap = 0.0
        self._last: float | None = None

    def sample(self) -> None:
        now = time.monotonic()
        if self._last is not None:
            self.max_gap = max(self.max_gap, now - self._last)
        self._last = now
        self.ticks += 1


class ThreadPeak(_Sampler):
    """The most threads alive at any sample (every 5 ms)."""

    interval = 0.005

    def __init__(self) -> None:
        super().__init__()
        self.peak = threading.active_count()

    def sample(self) -> None:
        self.peak = max(self.peak, threading.active_count())


async def gather_bounded(*awaitables: Awaitable[T], timeout: float) -> list[T]:
    """``asyncio.gather`` them, failing after ``timeout`` seconds."""
    return await asyncio.wait_for(asyncio.gather(*awaitables), timeout)


async def until(condition: Callable[[], bool], *, timeout: float = 30.0) -> None:
    """Return once ``condition()`` holds, looking every 10 ms; fail after ``timeout`` seconds
    (a loaded machine is slow, not wrong: never a fixed sleep before an assertion)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"still not true after {timeout}s")
        await asyncio.sleep(0.01)
