from __future__ import annotations

import attrs
import pytest

from imageproc import Queue, Repository
from imageproc.backends._memory import MemoryQueue, MemoryRepository
from imageproc.testing import FastForwardClock
from tests.databases import make_backend


@attrs.frozen
class Backend:
    repository: Repository
    queue: Queue
    #: The backend's clock: advance it instead of sleeping until a lease or a delay runs out.
    clock: FastForwardClock


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest) -> Backend:
    """Every Repository + Queue implementation."""
    clock = FastForwardClock()
    if request.param == "memory":
        repository = MemoryRepository(clock=clock)
        return Backend(repository, MemoryQueue(repository), clock)
    sql = make_backend(request.param, request, clock)
    return Backend(sql, sql, clock)
