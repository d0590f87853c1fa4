"""Running a Processor's tasks: worker threads in the background (``start``/``stop``), in the
foreground until a signal (``run``), or one by one in the calling thread (``run_until_idle``,
``process``). :class:`Processor <imageproc.Processor>` has these methods from :class:`Running`.
"""

from __future__ import annotations

import logging
import threading

from imageproc._clock import Clock
from imageproc._execution import Execution
from imageproc._protocols import Lease, Queue
from imageproc._signals import on_stop_signals
from imageproc._task import Task
from imageproc._worker import WorkerPool

__all__ = ["Running"]

logger = logging.getLogger("imageproc")


class Running:
    """The methods that run tasks; the Processor provides what they use."""

    lease_seconds: float
    poll_interval: float
    _execution: Execution
    _pool: WorkerPool | None
    _pool_lock: threading.Lock

    @property
    def queue(self) -> Queue:
        """Where tasks are claimed from (the Processor's)."""
        raise NotImplementedError

    @property
    def clock(self) -> Clock:
        """Where timestamps come from (the Processor's)."""
        raise NotImplementedError

    @property
    def pool(self) -> WorkerPool | None:
        """The running worker pool, if :meth:`start` was called and :meth:`stop` was not."""
        return self._pool

    def start(self, workers: int | tuple[int, int] = 4, *, idle_timeout: float = 30.0) -> None:
        """Start background worker threads in this process and return at once.

        ``workers`` is a count, or ``(min, max)`` to grow the pool while tasks wait and shrink it
        back after workers have been idle for ``idle_timeout`` seconds. Stop them with
        :meth:`stop` (or by leaving the ``with`` block).
        """
        with self._pool_lock:
            if self._pool is not None and self._pool.running:
                raise RuntimeError("workers are already running; stop() them first")
            low, high = (workers, workers) if isinstance(workers, int) else workers
            self._pool = WorkerPool(
                self.queue,
                self._execution.start,
                min_workers=low,
                max_workers=high,
                idle_timeout=idle_timeout,
                lease_seconds=self.lease_seconds,
                poll_interval=self.poll_interval,
                clock=self.clock,
                # By its token: the same task claimed again here must not be stopped too.
                on_lost=lambda lease: self._execution.abort(lease.task.id, lease.token),
            )
            self._pool.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop claiming, let tasks in flight finish for up to ``timeout`` seconds, then release
        the leases of any still running so another worker takes them at once."""
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.stop(timeout)

    def run(self, workers: int | tuple[int, int] = 4, *, stop_timeout: float = 30.0) -> None:
        """Run workers in the foreground until SIGINT or SIGTERM, then stop them gracefully.

        For a dedicated worker process; call it from the main thread.
        """
        stop = threading.Event()

        def _handle(name: str) -> None:
            logger.info("received %s, stopping", name)
            stop.set()

        with on_stop_signals(_handle):
            try:
                self.start(workers)
                while not stop.wait(0.5):
                    pass
            finally:
                self.stop(stop_timeout)

    def run_until_idle(self, *, worker: str = "inline") -> int:
        """Process every task that is due, one by one in this thread; return how many were run.

        Tasks put back with a backoff delay are not due, so this always returns.
        """
        count = 0
        while leases := self.queue.claim(worker, lease_seconds=self.lease_seconds):
            for lease in leases:
                self.process(lease)
                count += 1
        return count

    def process(self, lease: Lease) -> Task | None:
        """Carry out one leased task, from reading its original to recording its outcome.

        Returns the task as recorded, or None if the lease was lost meanwhile (the task was
        cancelled, or its lease expired and another worker owns it now). Never raises for a
        problem with the task itself: a permanent error fails the task, a transient one puts it
        back with a backoff delay or, out of attempts, makes it dead.
        """
        return self._execution.run(lease)
