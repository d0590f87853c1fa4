"""Tests of ``http._ratelimit.WindowLimit``: a sliding window in bounded memory."""

from __future__ import annotations

import pytest

from imageproc.http._ratelimit import WindowLimit


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_allows_the_limit_per_window_then_says_how_long_to_wait() -> None:
    clock = Clock()
    limit = WindowLimit(3, 60, clock=clock)
    assert [limit.hit("a") for _ in range(3)] == [None, None, None]
    clock.now += 10
    assert limit.hit("a") == pytest.approx(50)
    assert limit.hit("b") is None  # keys are counted apart
    clock.now += 50
    assert limit.hit("a") is None  # the first three have left the window
    assert limit.hit("a") is None
    assert limit.hit("a") is None
    assert limit.hit("a") == pytest.approx(60)


def test_a_refused_event_is_not_counted() -> None:
    clock = Clock()
    limit = WindowLimit(1, 10, clock=clock)
    assert limit.hit("a") is None
    for _ in range(100):
        clock.now += 0.05
        assert limit.hit("a") is not None
    clock.now += 10
    assert limit.hit("a") is None


def test_memory_is_bounded_by_max_keys() -> None:
    limit = WindowLimit(1, 60, max_keys=100, clock=Clock())
    for key in range(10_000):
        limit.hit(key)
    assert len(limit._events) == 100
    assert limit.hit(9_999) is not None  # the most recent are the ones remembered
    assert limit.hit(0) is None


def test_keys_are_forgotten_least_recently_counted_first_and_when_their_window_ends() -> None:
    clock = Clock()
    failures = WindowLimit(2, 60.0, max_keys=3, clock=clock)
    for address in ("a", "a", "b", "c", "d"):
        failures.count(address)
        clock.now += 1
    assert len(failures) == 3  # "a", whose last failure is oldest, was forgotten
    assert failures.blocked_for("a") is None
    failures.count("b")
    assert failures.blocked_for("b") == 60 - 3  # its window began 3 s ago
    assert failures.blocked_for("c") is None
    clock.now += 60
    assert failures.blocked_for("b") is None
    assert len(failures) == 2  # b's window is over, and it was forgotten
