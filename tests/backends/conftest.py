from __future__ import annotations

import attrs
import pytest

from imageproc import Queue, Repository
from imageproc.backends.memory import MemoryQueue, MemoryRepository
from tests.databases import make_backend


@attrs.frozen
class Backend:
    repository: Repository
    queue: Queue


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest) -> Backend:
    """Every Repository + Queue implementation."""
    if request.param == "memory":
        repository = MemoryRepository()
        return Backend(repository, MemoryQueue(repository))
    sql = make_backend(request.param, request)
    return Backend(sql, sql)
