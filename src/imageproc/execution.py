"""Execution of one lease: read the original, render, store the outputs, decide, record.

:class:`Execution` carries out a leased task and decides its outcome: ``succeeded`` with its
outputs, ``failed`` at once for a permanent error (not an image, a bomb, an unsupported format),
back in the queue with a backoff delay for a transient one, or ``dead`` once out of attempts.
:class:`Recorder` records the outcomes: the ones that are ready at the same moment, in threads of
one process, go to the queue together, in one transaction (a group commit), so a pool of workers
pays one round trip and one commit for a handful of tasks instead of one each.

Outputs go under deterministic keys (:func:`imageproc.keys.output_key`), so a retried attempt
overwrites what a failed one left, and never duplicates it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from datetime import timedelta

from imageproc import imaging, keys
from imageproc.backends.groupcommit import GroupCommit
from imageproc.clock import Clock
from imageproc.errors import ImageprocError, LeaseLost, is_transient
from imageproc.events import Events, emit
from imageproc.imaging import ImageLimits
from imageproc.protocols import Lease, Queue, Storage
from imageproc.retrying import RetryPolicy
from imageproc.task import Output, Task, TaskError, TaskStatus

__all__ = ["Execution", "Recorder"]

logger = logging.getLogger("imageproc")


class Recorder:
    """Records the outcomes of leased tasks, those of concurrent threads in one transaction.

    :meth:`record` returns once the outcome is committed, or raises
    :class:`~imageproc.LeaseLost` if the lease was no longer held (nothing is recorded then). A
    lone caller writes at once; callers that arrive while a write is under way share the next
    one (:class:`~imageproc.backends.groupcommit.GroupCommit`). Transient errors are retried in
    place, by ``retry``, for the whole batch.
    """

    def __init__(self, queue: Queue, *, retry: RetryPolicy | None = None) -> None:
        self.queue = queue
        self.retry = retry or RetryPolicy()
        self._group: GroupCommit[tuple[Lease, Task]] = GroupCommit(self._write)

    def record(self, lease: Lease, task: Task) -> None:
        """Record ``task`` (final, or queued again) as the outcome of ``lease``."""
        if task.id != lease.task.id:
            raise ValueError(f"lease is on task {lease.task.id}, not {task.id}")
        if task.status not in _RECORDABLE:
            raise ValueError(f"cannot record a task in status {task.status}")
        self._group.run((lease, task))

    def _write(self, batch: Sequence[tuple[Lease, Task]]) -> list[BaseException | None]:
        held = self.retry.call(self.queue.record_many, batch)
        return [
            None
            if ok
            else LeaseLost(f"lease on task {lease.task.id} is no longer held by {lease.worker}")
            for ok, (lease, _) in zip(held, batch, strict=True)
        ]


_RECORDABLE = frozenset(s for s in TaskStatus if s.is_final or s == TaskStatus.QUEUED)


class Execution:
    """Carries out leased tasks: :meth:`run` does one, start to finish.

    ``storage`` may be replaced on a live instance (tests wrap it).
    """

    def __init__(
        self,
        storage: Storage,
        recorder: Recorder,
        *,
        image_limits: ImageLimits | None = None,
        retry: RetryPolicy | None = None,
        clock: Clock,
        events: Events | None = None,
    ) -> None:
        self.storage = storage
        self.recorder = recorder
        self.image_limits = image_limits or ImageLimits()
        self.retry = retry or RetryPolicy()
        self.clock = clock
        self.events = events or Events()

    def run(self, lease: Lease) -> Task | None:
        """Carry out one leased task and record its outcome.

        Returns the task as recorded, or None if the lease was lost meanwhile (the task was
        cancelled, or its lease expired and another worker owns it now). Never raises for a
        problem with the task itself: a permanent error fails the task, a transient one puts it
        back with a backoff delay or, out of attempts, makes it dead. Raises only when the
        outcome cannot be recorded (the database is down); the lease then expires and the task
        is claimed again.
        """
        task = lease.task
        try:
            outputs = self.produce(task)
        except Exception as error:  # every failure of a task is recorded on the task
            return self._record(lease, self.after_failure(task, error))
        return self._record(lease, task.succeed(outputs, self.clock()))

    def produce(self, task: Task) -> tuple[Output, ...]:
        """Render every variant of ``task`` from its original and store them; their outputs."""
        started = time.perf_counter()
        data = self.retry.call(self.storage.get, task.source_key)
        self._stage("fetch", time.perf_counter() - started)
        rendered_all = imaging.render(data, task.pipeline, self.image_limits, stage=self._stage)
        started = time.perf_counter()
        outputs = []
        for rendered in rendered_all:
            key = keys.output_key(task.id, rendered.name, rendered.extension)
            self.retry.call(
                lambda k=key, r=rendered: self.storage.put(k, r.data, content_type=r.content_type)
            )
            outputs.append(
                Output(
                    name=rendered.name,
                    key=key,
                    format=rendered.format,
                    width=rendered.width,
                    height=rendered.height,
                    bytes=len(rendered.data),
                    blurhash=rendered.blurhash,
                    dominant_color=rendered.dominant_color,
                )
            )
        self._stage("store", time.perf_counter() - started)
        return tuple(outputs)

    def after_failure(self, task: Task, error: Exception) -> Task:
        """What ``task`` becomes when its attempt failed with ``error``: failed (permanent),
        queued again after a backoff (transient), or dead (transient, out of attempts)."""
        now = self.clock()
        task_error = _task_error(error)
        if not is_transient(error):
            logger.info("task %s failed: %s", task.id, task_error.message)
            return task.fail(task_error, now)
        if not isinstance(error, ImageprocError):
            logger.error("task %s: unexpected error", task.id, exc_info=error)
        delay = self.retry.backoff(task.attempts)
        after = task.after_failure(task_error, now, delay=timedelta(seconds=delay))
        if after.status == TaskStatus.DEAD:
            logger.warning("task %s is dead after %d attempts", task.id, task.attempts)
        else:
            logger.info("task %s attempt %d failed, retry in %.1fs", task.id, task.attempts, delay)
        return after

    def _record(self, lease: Lease, task: Task) -> Task | None:
        try:
            self.recorder.record(lease, task)
        except LeaseLost:
            logger.info("task %s: lease lost, result not recorded", task.id)
            return None
        emit(self.events, "retried" if task.status == TaskStatus.QUEUED else "finished", task)
        return task

    def _stage(self, name: str, seconds: float) -> None:
        emit(self.events, "stage", name, seconds)


def _task_error(error: BaseException) -> TaskError:
    if isinstance(error, ImageprocError):
        return TaskError(error.code, error.message)
    # Not ours: its text may hold paths or driver internals, so only the type goes on the task.
    return TaskError("internal_error", f"unexpected {type(error).__name__}; see the worker's log")
