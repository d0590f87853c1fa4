"""The worker pool: threads that claim tasks, keep their leases alive, and stop gracefully.

Each worker claims one task at a time and hands it to :meth:`Processor.process`, which records the
outcome. One heartbeat thread renews the lease of every task in flight, so a long task is not
taken over while its worker is alive, and a dead worker's tasks are freed when their leases run
out. The pool grows (up to ``max_workers``) when every worker is busy and shrinks back (to
``min_workers``) after workers have been idle for ``idle_timeout`` seconds.
"""

from __future__ import annotations

import itertools
import logging
import os
import signal
import threading
import time
from datetime import timedelta
from typing import TYPE_CHECKING

from imageproc import allocator
from imageproc.errors import LeaseLost
from imageproc.task import TaskError

if TYPE_CHECKING:
    from types import FrameType

    from imageproc.processor import Processor
    from imageproc.protocols import Lease

__all__ = ["WorkerPool", "run_until_signalled"]

logger = logging.getLogger("imageproc.worker")

_INTERRUPTED = TaskError("interrupted", "the worker stopped before the task finished")
_pool_numbers = itertools.count(1)


class WorkerPool:
    """Worker threads for one :class:`~imageproc.Processor`. Usually reached through
    ``Processor.start`` / ``Processor.stop`` rather than built directly."""

    def __init__(
        self,
        processor: Processor,
        *,
        min_workers: int = 4,
        max_workers: int | None = None,
        idle_timeout: float = 30.0,
    ) -> None:
        max_workers = min_workers if max_workers is None else max_workers
        if not 1 <= min_workers <= max_workers:
            raise ValueError(
                f"need 1 <= min_workers <= max_workers, got {min_workers}, {max_workers}"
            )
        self.processor = processor
        self.min_workers = min_workers
        self.max_workers = max_workers
        self.idle_timeout = idle_timeout
        self._prefix = f"imageproc-{os.getpid()}-{next(_pool_numbers)}"
        self._numbers = itertools.count(1)
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._threads: dict[str, threading.Thread] = {}
        self._in_flight: dict[str, Lease] = {}
        self._heartbeat: threading.Thread | None = None

    @property
    def running(self) -> bool:
        """Whether the pool has started and not been stopped."""
        return self._heartbeat is not None and not self._stopping.is_set()

    @property
    def size(self) -> int:
        """How many worker threads are alive."""
        with self._lock:
            return len(self._threads)

    @property
    def busy(self) -> int:
        """How many workers are processing a task right now."""
        with self._lock:
            return len(self._in_flight)

    def start(self) -> None:
        """Start ``min_workers`` workers and the heartbeat.

        On glibc, first has malloc keep freed image memory for the next image rather than hand
        it back to the system (:func:`imageproc.allocator.reuse_image_memory`; process-wide).
        """
        allocator.reuse_image_memory()
        with self._lock:
            for _ in range(self.min_workers):
                self._spawn()
        self._heartbeat = threading.Thread(
            target=self._beat, name=f"{self._prefix}-heartbeat", daemon=True
        )
        self._heartbeat.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop claiming; wait up to ``timeout`` seconds for tasks in flight, then release the
        leases of those still running so another worker can take them straight away."""
        self._stopping.set()
        deadline = time.monotonic() + timeout
        with self._lock:
            threads = list(self._threads.values())
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            stranded = list(self._in_flight.values())
        for lease in stranded:
            self._give_back(lease, interrupted=True)
        self._stopped.set()
        if self._heartbeat is not None:
            self._heartbeat.join(max(0.0, deadline - time.monotonic()))

    # -- threads ----------------------------------------------------------------------------

    def _spawn(self) -> None:
        """Start one more worker; call with the lock held."""
        name = f"{self._prefix}-w{next(self._numbers)}"
        thread = threading.Thread(target=self._work, args=(name,), name=name, daemon=True)
        self._threads[name] = thread
        thread.start()

    def _work(self, name: str) -> None:
        processor = self.processor
        idle_since = time.monotonic()
        failures = 0
        while not self._stopping.is_set():
            try:
                leases = processor.queue.claim(name, lease_seconds=processor.lease_seconds)
            except Exception:
                failures += 1
                logger.exception("%s: claim failed (%d in a row); backing off", name, failures)
                self._stopping.wait(min(30.0, processor.poll_interval * 2**failures))
                continue
            failures = 0
            if not leases:
                if self._retire_if_idle(name, idle_since):
                    return
                try:
                    processor.queue.wait(processor.poll_interval)
                except Exception:
                    self._stopping.wait(processor.poll_interval)
                continue
            for lease in leases:
                self._run_one(name, lease)
            idle_since = time.monotonic()
        with self._lock:
            self._threads.pop(name, None)

    def _give_back(self, lease: Lease, *, interrupted: bool) -> None:
        """Return a leased task to the queue: ``interrupted`` mid-task (the attempt counts), or
        claimed just as the pool stopped and never started (it does not)."""
        queue, now = self.processor.queue, self.processor.clock()
        try:
            if not interrupted:
                queue.release(lease, lease.task.unclaim(now))
                return
            task = lease.task.after_failure(_INTERRUPTED, now, delay=timedelta(0))
            if task.status.is_final:
                queue.complete(lease, task)
            else:
                queue.release(lease, task)
            logger.warning("gave back task %s, still running at stop", lease.task.id)
        except LeaseLost:
            pass  # it finished (or was cancelled) just now
        except Exception:
            # The lease will expire on its own; the task is not lost either way.
            logger.exception("could not give back task %s at stop", lease.task.id)

    def _run_one(self, name: str, lease: Lease) -> None:
        with self._lock:
            # Checked under the lock that stop() collects in-flight leases under, so a lease
            # claimed as the pool stops is either seen by stop() or given back here.
            if self._stopping.is_set():
                self._give_back(lease, interrupted=False)
                return
            self._in_flight[name] = lease
            # Every worker busy and room to grow: more work is probably waiting.
            if len(self._in_flight) == len(self._threads) < self.max_workers:
                self._spawn()
        try:
            self.processor.process(lease)
        except Exception:
            # Recording the outcome failed (the backend is down): the lease will expire and the
            # task will be claimed again, so log and carry on rather than lose the worker.
            logger.exception("%s: could not record the outcome of task %s", name, lease.task.id)
            self._stopping.wait(self.processor.poll_interval)
        finally:
            with self._lock:
                self._in_flight.pop(name, None)

    def _retire_if_idle(self, name: str, idle_since: float) -> bool:
        if time.monotonic() - idle_since < self.idle_timeout:
            return False
        with self._lock:
            if len(self._threads) <= self.min_workers:
                return False
            del self._threads[name]
        logger.debug("%s: idle, retiring", name)
        return True

    def _beat(self) -> None:
        processor = self.processor
        interval = processor.lease_seconds / 3
        # Beats on through stop(): tasks finishing during the grace period still need their leases.
        while not self._stopped.wait(interval):
            with self._lock:
                in_flight = list(self._in_flight.items())
            for name, lease in in_flight:
                try:
                    renewed = processor.queue.renew(lease, lease_seconds=processor.lease_seconds)
                except LeaseLost:
                    continue  # the worker will find out when it tries to record the result
                except Exception:
                    logger.exception("heartbeat for task %s failed", lease.task.id)
                    continue
                with self._lock:
                    if self._in_flight.get(name) is lease:
                        self._in_flight[name] = renewed


def run_until_signalled(
    processor: Processor, workers: int | tuple[int, int], *, stop_timeout: float
) -> None:
    """Run ``processor``'s workers until SIGINT or SIGTERM, then stop them gracefully."""
    stop = threading.Event()

    def _handle(signum: int, frame: FrameType | None) -> None:
        logger.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, _handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        processor.start(workers)
        while not stop.wait(0.5):
            pass
    finally:
        processor.stop(stop_timeout)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
