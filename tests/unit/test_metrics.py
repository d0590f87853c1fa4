"""Prometheus metrics: counters, stage histograms and bytes from the Events hooks; queue and
worker gauges read at scrape time; a port of their own for worker processes."""

from __future__ import annotations

import socket
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from imageproc import Processor, TaskStatus
from imageproc._events import STAGES
from imageproc.backends._memory import MemoryQueue, MemoryRepository, MemoryStorage
from imageproc.errors import BackendUnavailable
from imageproc.metrics import Metrics
from imageproc.testing import FAST_OPTIONS, FlakyStorage, memory_processor, sample_image

PIPELINE = "small=fit:64x64,png;tiny=fit:16x16,webp"


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = datetime(2030, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def metrics() -> Iterator[Metrics]:
    metrics = Metrics()
    yield metrics
    metrics.close()


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def flaky_processor(metrics: Metrics, *, failures: int, **options: object) -> Processor:
    """A memory processor whose first ``failures`` storage reads fail transiently."""
    repository = MemoryRepository()
    storage = FlakyStorage(MemoryStorage(), failures=failures, methods=frozenset({"get"}))
    return Processor(
        storage,
        MemoryQueue(repository),
        repository,
        events=metrics,
        **{**FAST_OPTIONS, "in_place_tries": 1, **options},  # type: ignore[arg-type]
    )


def run_until_final(processor: Processor, task_id: str, timeout: float = 10) -> TaskStatus:
    deadline = time.monotonic() + timeout
    while not (status := processor.get(task_id).status).is_final:
        assert time.monotonic() < deadline, f"task still {status}"
        processor.run_until_idle()
        time.sleep(0.01)  # let a backoff delay pass
    return status


def test_a_success_counts_the_task_its_stages_and_its_bytes(metrics: Metrics) -> None:
    processor = memory_processor(events=metrics)
    image = sample_image(400, 300)
    task = processor.submit(image, PIPELINE)
    assert value(metrics, "imageproc_tasks_submitted_total") == 1
    assert value(metrics, "imageproc_uploaded_bytes_total") == len(image)
    assert processor.run_until_idle() == 1
    done = processor.get(task.id)
    assert done.status == TaskStatus.SUCCEEDED
    assert value(metrics, "imageproc_tasks_succeeded_total") == 1
    assert value(metrics, "imageproc_produced_bytes_total") == sum(o.bytes for o in done.outputs)
    for name in ("failed", "dead", "retried"):
        assert value(metrics, f"imageproc_tasks_{name}_total") == 0
    for stage in STAGES:
        assert value(metrics, "imageproc_stage_seconds_count", stage=stage) == 1, stage
        assert value(metrics, "imageproc_stage_seconds_sum", stage=stage) > 0, stage  # type: ignore[operator]


def test_a_permanent_failure_is_counted_as_failed(metrics: Metrics) -> None:
    processor = memory_processor(events=metrics)
    image = sample_image(400, 300)
    task = processor.submit(image[: len(image) // 2], PIPELINE)  # the header passes, pixels don't
    processor.run_until_idle()
    assert processor.get(task.id).status == TaskStatus.FAILED
    assert value(metrics, "imageproc_tasks_failed_total") == 1
    assert value(metrics, "imageproc_tasks_succeeded_total") == 0
    assert value(metrics, "imageproc_produced_bytes_total") == 0


def test_a_transient_error_is_counted_as_retried_then_succeeded(metrics: Metrics) -> None:
    processor = flaky_processor(metrics, failures=1)
    task = processor.submit(sample_image(), PIPELINE)
    assert run_until_final(processor, task.id) == TaskStatus.SUCCEEDED
    assert value(metrics, "imageproc_tasks_retried_total") == 1
    assert value(metrics, "imageproc_tasks_succeeded_total") == 1
    assert value(metrics, "imageproc_tasks_dead_total") == 0


def test_running_out_of_attempts_is_counted_as_dead(metrics: Metrics) -> None:
    processor = flaky_processor(metrics, failures=None, max_attempts=2)
    task = processor.submit(sample_image(), PIPELINE)
    assert run_until_final(processor, task.id) == TaskStatus.DEAD
    assert value(metrics, "imageproc_tasks_retried_total") == 1
    assert value(metrics, "imageproc_tasks_dead_total") == 1
    assert value(metrics, "imageproc_tasks_succeeded_total") == 0


def test_queue_gauges_are_read_at_scrape_time(metrics: Metrics) -> None:
    clock = Clock()
    processor = memory_processor(events=metrics, clock=clock)
    metrics.watch(processor)
    assert value(metrics, "imageproc_queue_tasks", state="queued") == 0
    assert value(metrics, "imageproc_queue_oldest_age_seconds") == 0
    processor.submit(sample_image(), PIPELINE)
    clock.now += timedelta(seconds=30)
    processor.submit(sample_image(), PIPELINE)
    clock.now += timedelta(seconds=12)
    assert value(metrics, "imageproc_queue_tasks", state="queued") == 2
    assert value(metrics, "imageproc_queue_tasks", state="processing") == 0
    assert value(metrics, "imageproc_queue_oldest_age_seconds") == 42
    assert value(metrics, "imageproc_queue_up") == 1
    lease = processor.queue.claim("test", lease_seconds=60)[0]
    assert value(metrics, "imageproc_queue_tasks", state="queued") == 1
    assert value(metrics, "imageproc_queue_tasks", state="processing") == 1
    assert value(metrics, "imageproc_queue_oldest_age_seconds") == 12
    processor.process(lease)
    assert value(metrics, "imageproc_queue_tasks", state="processing") == 0


def test_worker_gauges_follow_the_pool(metrics: Metrics) -> None:
    processor = memory_processor(events=metrics)
    metrics.watch(processor)
    assert value(metrics, "imageproc_workers_total") == 0
    processor.start(workers=3)
    try:
        assert value(metrics, "imageproc_workers_total") == 3
        assert value(metrics, "imageproc_workers_busy") == 0
    finally:
        processor.stop(timeout=5)
    assert value(metrics, "imageproc_workers_total") == 0


def test_a_backend_error_at_scrape_time_does_not_fail_the_scrape(
    metrics: Metrics, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    processor = memory_processor(events=metrics)
    metrics.watch(processor)

    def down() -> None:
        raise BackendUnavailable("database restarting")

    monkeypatch.setattr(processor.repository, "queue_stats", down)
    assert value(metrics, "imageproc_queue_up") == 0
    assert value(metrics, "imageproc_queue_tasks", state="queued") is None
    assert value(metrics, "imageproc_workers_total") == 0
    assert "queue statistics unavailable: database restarting" in caplog.text


def test_watching_again_replaces_the_processor(metrics: Metrics) -> None:
    first, second = memory_processor(), memory_processor()
    first.submit(sample_image(), PIPELINE)
    metrics.watch(first)
    metrics.watch(second)
    assert value(metrics, "imageproc_queue_tasks", state="queued") == 0


def test_each_instance_has_its_own_registry() -> None:
    # Two in one process (two Processors, or tests) must not collide in a global registry.
    assert Metrics().registry is not Metrics().registry


def test_serve_answers_on_a_port_of_its_own(metrics: Metrics) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    processor = memory_processor(events=metrics)
    metrics.watch(processor)
    processor.submit(sample_image(), PIPELINE)
    metrics.serve(port)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        body = response.read().decode()
    assert response.status == 200
    assert "imageproc_tasks_submitted_total 1.0" in body
    assert 'imageproc_queue_tasks{state="queued"} 1.0' in body
