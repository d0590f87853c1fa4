"""Hooks the Processor calls as tasks move through it, for metrics, logs or tracing.

Subclass :class:`Events`, override what you need, and pass an instance as
``Processor(events=…)``. :mod:`imageproc.metrics` is one such subclass (Prometheus). Hooks run in
the thread doing the work (the caller of ``submit``, or a worker), so they must be thread-safe
and quick; an exception from a hook is logged and otherwise ignored.
"""

from __future__ import annotations

import logging
from typing import Final

from imageproc._task import Task
from imageproc.delivery._outbox import Delivery

__all__ = ["STAGES", "Events", "emit"]

logger = logging.getLogger("imageproc")

#: The stages of processing one task that :meth:`Events.stage` times.
STAGES: Final = ("fetch", "decode", "transform", "encode", "store")


class Events:
    """No-op hooks; see the module documentation."""

    def submitted(self, task: Task) -> None:
        """A task was accepted and queued (``task.source.bytes`` were uploaded)."""

    def finished(self, task: Task) -> None:
        """A task's final outcome was recorded: ``succeeded``, ``failed`` or ``dead``."""

    def retried(self, task: Task) -> None:
        """A task was put back in the queue after a transient error, to try again later."""

    def stage(self, name: str, seconds: float) -> None:
        """One stage of processing a task (one of :data:`STAGES`) took ``seconds``."""

    def delivered(self, delivery: Delivery, outcome: str, seconds: float) -> None:
        """One try of a webhook ``delivery`` took ``seconds`` and ended in ``outcome``:
        ``"delivered"``, ``"retry"`` (it failed and will be tried again) or ``"dead"``."""


def emit(events: Events, hook: str, *args: object) -> None:
    """Call ``events.<hook>(*args)``, logging (never raising) what the hook raises: observability
    must never fail a task."""
    try:
        getattr(events, hook)(*args)
    except Exception:
        logger.exception("events.%s raised", hook)
