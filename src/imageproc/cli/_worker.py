"""``imageproc worker``: workers only, sharing the database and storage, with Prometheus metrics
if asked for (and the metrics extra is installed)."""

from __future__ import annotations

import argparse
import logging
from typing import TYPE_CHECKING

from imageproc.cli._reporting import EXIT_OK, safe_url
from imageproc.config import Settings
from imageproc.errors import ConfigurationError

if TYPE_CHECKING:
    from imageproc.metrics import Metrics

__all__ = ["metrics_or_none", "worker"]

logger = logging.getLogger("imageproc.cli")


def worker(args: argparse.Namespace, settings: Settings) -> int:
    port = settings.metrics_port
    metrics = metrics_or_none() if port is not None else None
    if port is not None and metrics is None:
        raise ConfigurationError(
            "--metrics-port needs the metrics extra (pip install 'imageproc[metrics]')"
        )
    with settings.processor(events=metrics, migrate=not args.no_migrate) as processor:
        if metrics is not None and port is not None:
            metrics.watch(processor)
            try:
                # On IMAGEPROC_HOST (loopback by default): set it to 0.0.0.0 for a remote scraper.
                metrics.serve(port, settings.host)
            except OSError as error:
                raise ConfigurationError(
                    f"cannot serve metrics on {settings.host}:{port}: {error.strerror}"
                ) from None
            logger.info("metrics on http://%s:%d/metrics", settings.host, port)
        low, high = settings.workers
        logger.info(
            "worker started: %d-%d threads on %s", low, high, safe_url(settings.database_url)
        )
        try:
            processor.run(settings.workers)
        finally:
            if metrics is not None:
                metrics.close()
    return EXIT_OK


def metrics_or_none() -> Metrics | None:
    """A :class:`~imageproc.metrics.Metrics`, or None without the ``metrics`` extra."""
    try:
        from imageproc.metrics import Metrics
    except ImportError:
        return None
    return Metrics()
