"""Counting events per key over a sliding window, in bounded memory: uploads per owner per
minute, and the like."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable

__all__ = ["WindowLimit"]


class WindowLimit:
    """At most ``limit`` events per ``window`` seconds for each key.

    Remembers at most ``max_keys`` keys, forgetting the least recently seen first, so a client
    that invents keys cannot make it grow without bound (a forgotten key starts afresh, which
    errs towards letting a request through). Thread-safe.
    """

    def __init__(
        self,
        limit: int,
        window: float = 60.0,
        *,
        max_keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if limit < 1 or not window > 0 or max_keys < 1:
            raise ValueError("limit and max_keys must be at least 1, window positive")
        self.limit = limit
        self.window = window
        self.max_keys = max_keys
        self.clock = clock
        self._lock = threading.Lock()
        self._events: OrderedDict[Hashable, deque[float]] = OrderedDict()

    def hit(self, key: Hashable) -> float | None:
        """Count one event for ``key`` if the limit allows it: None then, otherwise (counting
        nothing) the seconds until it would be allowed."""
        now = self.clock()
        with self._lock:
            events = self._events.pop(key, None) or deque()
            while events and events[0] <= now - self.window:
                events.popleft()
            self._events[key] = events  # now the most recently seen
            if len(events) >= self.limit:
                return events[0] + self.window - now
            events.append(now)
            while len(self._events) > self.max_keys:
                self._events.popitem(last=False)
            return None
