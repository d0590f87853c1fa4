from __future__ import annotations

import attrs
import pytest

from imageproc import Queue, Repository, Storage
from imageproc.backends.memory import MemoryQueue, MemoryRepository, MemoryStorage


@attrs.frozen
class Backend:
    repository: Repository
    queue: Queue


@pytest.fixture(params=["memory"])
def backend(request: pytest.FixtureRequest) -> Backend:
    """Every Repository + Queue implementation; the SQL ones join this list."""
    repository = MemoryRepository()
    return Backend(repository, MemoryQueue(repository))


@pytest.fixture(params=["memory"])
def storage(request: pytest.FixtureRequest) -> Storage:
    """Every Storage implementation; the fsspec ones join this list."""
    return MemoryStorage()
