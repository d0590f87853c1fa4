"""The ``backend`` fixture: every Repository + Queue implementation, PostgreSQL included."""

from __future__ import annotations

import pytest

from imageproc.backends._memory import MemoryQueue, MemoryRepository
from imageproc.testing import FastForwardClock
from tests.support.backends import Backend
from tests.support.databases import make_backend


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest) -> Backend:
    """Every Repository + Queue implementation."""
    clock = FastForwardClock()
    if request.param == "memory":
        repository = MemoryRepository(clock=clock)
        return Backend(repository, MemoryQueue(repository), clock)
    sql = make_backend(request.param, request, clock)
    return Backend(sql, sql, clock)
