"""Prometheus metrics for a Processor (the ``metrics`` extra: ``pip install 'imageproc[metrics]'``).

::

    metrics = Metrics()                          # its own CollectorRegistry, not the global one
    processor = Processor.from_urls(…, events=metrics)
    metrics.watch(processor)                     # queue and worker gauges, read at scrape time
    metrics.serve(9100)                          # a worker process: /metrics on a port of its own

or hand ``metrics.registry`` to ``imageproc.http.create_app(…, metrics_registry=…)``, which serves
it at ``/metrics``. Every name starts with ``imageproc_``:

* ``imageproc_tasks_{submitted,succeeded,failed,dead,retried}_total`` (counters);
* ``imageproc_stage_seconds{stage}``: a histogram per stage (fetch, decode, transform, encode,
  store);
* ``imageproc_uploaded_bytes_total`` and ``imageproc_produced_bytes_total``;
* with :meth:`Metrics.watch`: ``imageproc_queue_tasks{state="queued"|"processing"}``,
  ``imageproc_queue_oldest_age_seconds``, ``imageproc_queue_up`` (0 while the backend cannot
  answer), ``imageproc_workers_busy`` and ``imageproc_workers_total``.

This is the only module that imports :mod:`prometheus_client`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from imageproc._events import STAGES, Events
from imageproc._task import Task, TaskStatus
from imageproc.delivery._outbox import Delivery

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from imageproc._processor import Processor

__all__ = ["Metrics"]

logger = logging.getLogger("imageproc.metrics")

# From a millisecond (a small thumbnail's encode) to a minute (fetching a huge original from a
# slow store); the defaults stop at 10 s and are too coarse below 5 ms.
_STAGE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_WEBHOOK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 30)
#: How a try of a webhook delivery ends (the ``outcome`` label).
WEBHOOK_OUTCOMES = ("delivered", "retry", "dead")


class Metrics(Events):
    """Prometheus collectors fed by the Processor's :class:`~imageproc.Events` hooks.

    ``registry`` defaults to a new :class:`~prometheus_client.CollectorRegistry` (exposed as
    :attr:`registry`), so several Processors or tests never collide in the global one.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = CollectorRegistry() if registry is None else registry

        def tasks(what: str, doc: str) -> Counter:
            return Counter(f"imageproc_tasks_{what}", doc, registry=self.registry)

        self.tasks_submitted = tasks("submitted", "Tasks accepted and queued.")
        self.tasks_succeeded = tasks("succeeded", "Tasks that produced every variant.")
        self.tasks_failed = tasks("failed", "Tasks that failed permanently (bad image, …).")
        self.tasks_dead = tasks("dead", "Tasks that ran out of attempts after transient errors.")
        self.tasks_retried = tasks(
            "retried", "Attempts put back in the queue after a transient error."
        )
        self.stage_seconds = Histogram(
            "imageproc_stage_seconds",
            "Time spent in each stage of processing a task.",
            ["stage"],
            buckets=_STAGE_BUCKETS,
            registry=self.registry,
        )
        for stage in STAGES:
            self.stage_seconds.labels(stage)  # every stage shows up from the first scrape
        self.uploaded_bytes = Counter(
            "imageproc_uploaded_bytes", "Bytes of originals submitted.", registry=self.registry
        )
        self.produced_bytes = Counter(
            "imageproc_produced_bytes", "Bytes of outputs produced.", registry=self.registry
        )
        self.webhook_deliveries = Counter(
            "imageproc_webhook_deliveries",
            "Tries of webhook deliveries, by outcome (delivered, retry, dead).",
            ["outcome"],
            registry=self.registry,
        )
        self.webhook_seconds = Histogram(
            "imageproc_webhook_delivery_seconds",
            "Time one try of a webhook delivery took, by outcome.",
            ["outcome"],
            buckets=_WEBHOOK_BUCKETS,
            registry=self.registry,
        )
        for outcome in WEBHOOK_OUTCOMES:  # every outcome shows up from the first scrape
            self.webhook_deliveries.labels(outcome)
            self.webhook_seconds.labels(outcome)
        self._watcher: _ProcessorCollector | None = None
        self._server: WSGIServer | None = None
        self._server_thread: threading.Thread | None = None

    # -- Events -----------------------------------------------------------------------------

    def submitted(self, task: Task) -> None:
        """Count the task and the bytes of its original."""
        self.tasks_submitted.inc()
        self.uploaded_bytes.inc(task.source.bytes)

    def finished(self, task: Task) -> None:
        """Count the outcome, and the bytes produced by a task that succeeded."""
        if task.status == TaskStatus.SUCCEEDED:
            self.tasks_succeeded.inc()
            self.produced_bytes.inc(sum(output.bytes for output in task.outputs))
        elif task.status == TaskStatus.FAILED:
            self.tasks_failed.inc()
        elif task.status == TaskStatus.DEAD:
            self.tasks_dead.inc()

    def retried(self, task: Task) -> None:
        """Count an attempt that goes back to the queue."""
        self.tasks_retried.inc()

    def stage(self, name: str, seconds: float) -> None:
        """Observe how long one stage took."""
        self.stage_seconds.labels(name).observe(seconds)

    def delivered(self, delivery: Delivery, outcome: str, seconds: float) -> None:
        """Count one try of a webhook delivery, and observe how long it took."""
        self.webhook_deliveries.labels(outcome).inc()
        self.webhook_seconds.labels(outcome).observe(seconds)

    # -- gauges and serving ----------------------------------------------------------------

    def watch(self, processor: Processor) -> None:
        """Add gauges read from ``processor`` at each scrape: queue depth by state, the age of the
        oldest due task, and workers busy and total. Watching another Processor replaces it."""
        if self._watcher is not None:
            self.registry.unregister(self._watcher)
        self._watcher = _ProcessorCollector(processor)
        self.registry.register(self._watcher)

    def serve(self, port: int, addr: str = "127.0.0.1") -> None:
        """Serve :attr:`registry` over HTTP on ``addr:port`` from a background thread (for worker
        processes, which have no HTTP app of their own)."""
        self._server, self._server_thread = start_http_server(port, addr, registry=self.registry)

    def close(self) -> None:
        """Stop the server :meth:`serve` started, if any."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class _ProcessorCollector(Collector):
    """Gauges computed at scrape time, so they are never stale and cost nothing between scrapes."""

    def __init__(self, processor: Processor) -> None:
        self.processor = processor

    def describe(self) -> Iterator[GaugeMetricFamily]:
        # Names only, so the registry can refuse duplicates without calling the backend.
        yield from self._families()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        depth, age, up, busy, total = self._families()
        processor = self.processor
        try:
            stats = processor.repository.queue_stats()
        except Exception as error:
            # A scrape must not fail because the database is restarting; the gap in the queue
            # gauges and imageproc_queue_up = 0 say what happened.
            logger.warning("queue statistics unavailable: %s", error)
            up.add_metric([], 0)
        else:
            up.add_metric([], 1)
            depth.add_metric(["queued"], stats.queued)
            depth.add_metric(["processing"], stats.processing)
            waited = 0.0
            if stats.oldest_due_at is not None:
                waited = max(0.0, (processor.clock() - stats.oldest_due_at).total_seconds())
            age.add_metric([], waited)
            yield depth
            yield age
        yield up
        pool = processor.pool
        busy.add_metric([], pool.busy if pool is not None else 0)
        total.add_metric([], pool.size if pool is not None else 0)
        yield busy
        yield total

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, ...]:
        return (
            GaugeMetricFamily(
                "imageproc_queue_tasks", "Tasks in the queue, by state.", labels=["state"]
            ),
            GaugeMetricFamily(
                "imageproc_queue_oldest_age_seconds",
                "How long the oldest due task has waited to be claimed (0: none waiting).",
            ),
            GaugeMetricFamily(
                "imageproc_queue_up", "1 if the queue statistics could be read at this scrape."
            ),
            GaugeMetricFamily("imageproc_workers_busy", "Worker threads processing a task."),
            GaugeMetricFamily("imageproc_workers_total", "Worker threads running."),
        )
