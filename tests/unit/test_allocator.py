"""Tests of ``engine._allocator``: malloc's thresholds, set once and only on glibc."""

from __future__ import annotations

import pytest

from imageproc import Processor
from imageproc.engine import _allocator as allocator


def test_off_glibc_nothing_is_changed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(allocator, "_in_force", False)
    monkeypatch.setattr(allocator, "_glibc", lambda: False)
    assert allocator.reuse_image_memory() is False


def test_the_worker_pool_sets_it_on_start(
    processor: Processor, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[None] = []
    monkeypatch.setattr(allocator, "reuse_image_memory", lambda: calls.append(None) or True)
    processor.start(workers=1)
    assert calls == [None]
