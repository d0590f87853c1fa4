"""The memory backends beyond the contracts they share with the others (those are in
tests/integration/backends)."""

from __future__ import annotations

from datetime import timedelta

from imageproc.backends._memory import MemoryStorage
from imageproc.testing import FastForwardClock


def test_memory_storage_lists_with_its_clock() -> None:
    clock = FastForwardClock()
    storage = MemoryStorage(clock=clock)
    storage.put("originals/ab/x.jpg", b"x", content_type="image/jpeg")
    clock.advance(3600)
    storage.put("originals/ab/y.jpg", b"yy", content_type="image/jpeg")
    x, y = storage.list_objects("originals/")
    assert (x.key, x.size, y.key, y.size) == ("originals/ab/x.jpg", 1, "originals/ab/y.jpg", 2)
    assert y.modified - x.modified >= timedelta(hours=1)
    assert y.modified <= clock()
