"""Execution of one lease: read the original, render, store the outputs, decide, record.

:class:`Execution` carries out a leased task and decides its outcome: ``succeeded`` with its
outputs, ``failed`` at once for a permanent error (not an image, a bomb, an unsupported format),
back in the queue with a backoff delay for a transient one, or ``dead`` once out of attempts.
:class:`Recorder` records the outcomes: the ones that are ready at the same moment, in threads of
one process, go to the queue together, in one transaction (a group commit), so a pool of workers
pays one round trip and one commit for a handful of tasks instead of one each.

Outputs go under deterministic keys (:func:`imageproc._keys.output_key`), so a retried attempt
overwrites what a failed one left, and never duplicates it.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from datetime import timedelta
from typing import Final

from imageproc import _keys as keys
from imageproc._clock import Clock
from imageproc._events import Events, emit
from imageproc._protocols import Lease, ProgressQueue, Queue, Storage, lease_lost, record_all
from imageproc._retrying import RetryPolicy
from imageproc._sandbox import ProcessRenderer, Progress, Renderer
from imageproc._task import Output, Task, TaskError, TaskStatus
from imageproc.engine._imaging import ImageLimits
from imageproc.errors import ImageprocError, LeaseLost, copies_for, is_transient

__all__ = ["Execution", "Recorder"]

logger = logging.getLogger("imageproc")


#: Most outcomes one transaction records; more wait for the next.
_MAX_BATCH: Final = 64
#: Least seconds between two records of one task's progress (and from its start to the first).
PROGRESS_INTERVAL: Final = 0.5
#: Seconds the writer thread stays with nothing to write before it ends.
_WRITER_IDLE: Final = 1.0


class Recorder:
    """Records the outcomes of leased tasks: those handed over while a write is under way go
    together in the next one, one transaction (a group commit).

    :meth:`record_soon` hands an outcome over and returns at once, with a future that says
    whether it was recorded (False: the lease was no longer held, and nothing was); a worker
    can take its next task while the outcome commits. :meth:`record` waits for the commit. A
    thread of its own writes (started on demand, gone after a second with nothing to write), so
    a pool's claims and its records run side by side. Transient errors are retried in place, by
    ``retry``, for the whole batch; an error that outlasts them fails every future of the
    batch.
    """

    def __init__(
        self, queue: Queue, *, retry: RetryPolicy | None = None, max_batch: int = _MAX_BATCH
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.queue = queue
        self.retry = retry or RetryPolicy()
        self.max_batch = max_batch
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._pending: list[tuple[Lease, Task, Future[bool]]] = []
        self._writer: threading.Thread | None = None

    def record(self, lease: Lease, task: Task) -> None:
        """Record ``task`` (final, or queued again) as the outcome of ``lease`` and return once
        it is committed; :class:`~imageproc.LeaseLost` if the lease was no longer held."""
        if not self.record_soon(lease, task).result():
            raise lease_lost(lease)

    def record_soon(self, lease: Lease, task: Task) -> Future[bool]:
        """Hand over ``task`` as the outcome of ``lease``; the future holds True once it is
        committed, False if the lease was lost, or the error that kept it from being written."""
        if task.id != lease.task.id:
            raise ValueError(f"lease is on task {lease.task.id}, not {task.id}")
        if task.status not in _RECORDABLE:
            raise ValueError(f"cannot record a task in status {task.status}")
        future: Future[bool] = Future()
        with self._lock:
            self._pending.append((lease, task, future))
            if self._writer is None:
                self._writer = threading.Thread(
                    target=self._write_all, name="imageproc-recorder", daemon=True
                )
                self._writer.start()
            else:
                self._work.notify()
        return future

    def _write_all(self) -> None:
        while True:
            with self._lock:
                if not self._pending:
                    self._work.wait(_WRITER_IDLE)
                if not self._pending:
                    self._writer = None  # the next record_soon starts another
                    return
                batch = self._pending[: self.max_batch]
                del self._pending[: self.max_batch]
            self._write(batch)

    def _write(self, batch: list[tuple[Lease, Task, Future[bool]]]) -> None:
        try:
            held = self.retry.call(
                record_all, self.queue, [(lease, task) for lease, task, _ in batch]
            )
        except Exception as error:
            for (*_, future), copy in zip(batch, copies_for(error, len(batch)), strict=True):
                future.set_exception(copy)
            return
        except BaseException as error:  # not ours to swallow, but no caller may wait forever
            for *_, future in batch:
                future.set_exception(RuntimeError(f"recording was interrupted: {error!r}"))
            raise
        for ok, (*_, future) in zip(held, batch, strict=True):
            future.set_result(ok)


_RECORDABLE = frozenset(s for s in TaskStatus if s.is_final or s == TaskStatus.QUEUED)


class Execution:
    """Carries out leased tasks: :meth:`run` does one, start to finish.

    The image work goes to ``renderer`` (by default a :class:`~imageproc._sandbox.ProcessRenderer`:
    in a render process, under a deadline); :meth:`abort` stops it for a task whose lease is
    lost. ``storage`` may be replaced on a live instance (tests wrap it).
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
        renderer: Renderer | None = None,
    ) -> None:
        self.storage = storage
        self.renderer = renderer or ProcessRenderer()
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
        return self.start(lease).result()

    def start(self, lease: Lease) -> Future[Task | None]:
        """Carry out one leased task, hand its outcome to the recorder and return at once: the
        future holds what :meth:`run` would return, once the outcome is committed (or the error
        that kept it from being recorded). The worker pool runs tasks this way, so a worker
        takes its next task while the last one's outcome commits."""
        recorded: Future[Task | None] = Future()
        try:
            outcome = self.outcome(lease)
        except LeaseLost:
            logger.info("task %s: lease lost, its render was stopped", lease.task.id)
            recorded.set_result(None)
            return recorded

        def settle(done: Future[bool]) -> None:
            error = done.exception()
            if error is not None:
                recorded.set_exception(error)
            elif done.result():
                event = "retried" if outcome.status == TaskStatus.QUEUED else "finished"
                emit(self.events, event, outcome)
                recorded.set_result(outcome)
            else:
                logger.info("task %s: lease lost, result not recorded", outcome.id)
                recorded.set_result(None)

        self.recorder.record_soon(lease, outcome).add_done_callback(settle)
        return recorded

    def outcome(self, lease: Lease) -> Task:
        """Carry out one leased task: the task as it is to be recorded (succeeded with its
        outputs, failed, dead, or queued again after a transient error).
        :class:`~imageproc.LeaseLost` if :meth:`abort` stopped it: there is nothing to record."""
        task = lease.task
        try:
            outputs = self.produce(task, claim=lease.token, progress=self._reporter(lease))
        except LeaseLost:
            raise
        except Exception as error:  # every failure of a task is recorded on the task
            return self.after_failure(task, error)
        return task.succeed(outputs, self.clock())

    def produce(
        self, task: Task, *, claim: str = "", progress: Progress | None = None
    ) -> tuple[Output, ...]:
        """Render every variant of ``task`` from its original and store them; their outputs.
        ``claim`` (the lease's token) is what :meth:`abort` can name this render by;
        ``progress`` is told how many variants are made, after each one."""
        started = time.perf_counter()
        data = self.retry.call(self.storage.get, task.source_key)
        self._stage("fetch", time.perf_counter() - started)
        rendered_all = self.renderer.render(
            task.id,
            data,
            task.pipeline,
            self.image_limits,
            stage=self._stage,
            claim=claim,
            progress=progress,
        )
        started = time.perf_counter()
        outputs = []
        for rendered in rendered_all:
            key = keys.output_key(task.id, rendered.name, rendered.extension)
            self.retry.call(
                lambda k=key, r=rendered: self.storage.put(k, r.data, content_type=r.content_type)
            )
            outputs.append(rendered.stored_at(key))
        self._stage("store", time.perf_counter() - started)
        return tuple(outputs)

    def abort(self, task_id: str, claim: str | None = None) -> bool:
        """Stop the render of ``task_id`` under way here (under that ``claim``, a lease token,
        only, if given), if any: its lease is lost (cancelled, or taken over). Whether there was
        one; its :meth:`run` returns None."""
        return self.renderer.abort(task_id, claim)

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

    def _reporter(self, lease: Lease) -> Progress | None:
        """What records the progress of ``lease``'s render, if its queue can, and the task has
        more than one variant: at most every :data:`PROGRESS_INTERVAL` seconds (a quick task
        writes none), and never the last variant (its success says it)."""
        queue = self.recorder.queue
        total = len(lease.task.pipeline.variants)
        if not isinstance(queue, ProgressQueue) or total < 2:
            return None
        last = time.monotonic()

        def report(done: int) -> None:
            nonlocal last
            now = time.monotonic()
            if done >= total or now - last < PROGRESS_INTERVAL:
                return
            last = now
            try:
                queue.report_progress(lease, done)
            except Exception as error:  # progress is for show: it must never fail a task
                logger.debug("task %s: progress not recorded (%s)", lease.task.id, error)

        return report

    def _stage(self, name: str, seconds: float) -> None:
        emit(self.events, "stage", name, seconds)


def _task_error(error: BaseException) -> TaskError:
    if isinstance(error, ImageprocError):
        return TaskError(error.code, error.message)
    # Not ours: its text may hold paths or driver internals, so only the type goes on the task.
    return TaskError("internal_error", f"unexpected {type(error).__name__}; see the worker's log")
