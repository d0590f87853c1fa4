"""Fixtures every test can use (a memory ``processor``), the database and S3 server plugins,
and the hypothesis profiles."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

from imageproc import Processor
from imageproc.testing import memory_processor

pytest_plugins = ["tests.support.databases", "tests.support.s3server"]

settings.register_profile("ci", max_examples=200, deadline=None)
settings.register_profile(
    "dev", max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


@pytest.fixture
def processor() -> Iterator[Processor]:
    """A fast all-in-memory Processor whose workers are stopped after the test."""
    proc = memory_processor()
    yield proc
    proc.stop(timeout=5)
