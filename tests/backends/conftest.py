from __future__ import annotations

import attrs
import pytest

from imageproc import Queue, Repository
from imageproc.backends.memory import MemoryQueue, MemoryRepository


@attrs.frozen
class Backend:
    repository: Repository
    queue: Queue


@pytest.fixture(params=["memory"])
def backend(request: pytest.FixtureRequest) -> Backend:
    """Every Repository + Queue implementation; the SQL ones join this list."""
    repository = MemoryRepository()
    return Backend(repository, MemoryQueue(repository))
