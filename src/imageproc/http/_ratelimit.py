"""Counting events per key over a sliding window, in bounded memory: uploads per owner per
minute, failed API keys per client address."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable

__all__ = ["WindowLimit"]


class WindowLimit:
    """At most ``limit`` events per ``window`` seconds for each key.

    Remembers at most ``max_keys`` keys, forgetting the least recently counted first, so a
    client that invents keys cannot make it grow without bound (a forgotten key starts afresh,
    which errs towards letting a request through). Thread-safe.
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

    def __len__(self) -> int:
        """How many keys are remembered."""
        return len(self._events)

    def hit(self, key: Hashable) -> float | None:
        """Count one event for ``key`` if the limit allows it: None then, otherwise (counting
        nothing) the seconds until it would be allowed."""
        with self._lock:
            wait = self._blocked_for(key, self.clock())
            if wait is None:
                self._count(key, self.clock())
            return wait

    def blocked_for(self, key: Hashable) -> float | None:
        """Seconds until ``key`` may have another event, or None if it may now; counts
        nothing."""
        with self._lock:
            return self._blocked_for(key, self.clock())

    def count(self, key: Hashable) -> None:
        """Count one event for ``key``, whatever the limit (a failure that happened)."""
        with self._lock:
            self._count(key, self.clock())

    def _blocked_for(self, key: Hashable, now: float) -> float | None:
        events = self._events.get(key)
        if events is None:
            return None
        while events and events[0] <= now - self.window:
            events.popleft()
        if not events:
            del self._events[key]  # nothing left in its window: forget it
            return None
        return events[0] + self.window - now if len(events) >= self.limit else None

    def _count(self, key: Hashable, now: float) -> None:
        events = self._events.pop(key, None) or deque()
        events.append(now)
        if len(events) > self.limit:  # older ones no longer decide anything
            events.popleft()
        self._events[key] = events  # now the most recently counted
        while len(self._events) > self.max_keys:
            self._events.popitem(last=False)
