"""The worker pool: threads that run leased tasks, one claim for all idle threads, one heartbeat.

A :class:`WorkerPool` knows a :class:`~imageproc.Queue` and a step to run each lease
with (``Processor`` passes :meth:`imageproc._execution.Execution.run`); it never knows the
Processor. Three kinds of thread:

* the **claimer** leases, in one statement, as many tasks as there are idle workers (never more:
  no task waits behind a busy worker while another could take it), hands them over, and when the
  queue is empty sleeps in ``Queue.wait`` until work is queued (a notification, or a poll);
* the **workers** each run one lease at a time; the outcomes of tasks that end together are
  recorded together (:class:`imageproc._execution.Recorder`);
* the **heartbeat** renews every lease in flight in one statement, so a long task is not taken
  over while its worker is alive, and a dead process's tasks are freed when their leases lapse.

The pool grows (up to ``max_workers``) while every worker is busy and claims keep finding work,
and shrinks back (to ``min_workers``) after workers have been idle for ``idle_timeout`` seconds.
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from concurrent import futures
from concurrent.futures import Future
from datetime import timedelta
from queue import Empty, SimpleQueue
from typing import Any

from imageproc._clock import Clock, utcnow
from imageproc._protocols import Lease, Queue, renew_all
from imageproc._task import TaskError
from imageproc.engine import _allocator as allocator
from imageproc.errors import LeaseLost

__all__ = ["WorkerPool"]

logger = logging.getLogger("imageproc.worker")

_INTERRUPTED = TaskError("interrupted", "the worker stopped before the task finished")
#: Shortest wait of an idle worker above the minimum: with ``idle_timeout=0`` it would otherwise
#: spin while a claim under way counts on it.
_LEAST_IDLE_WAIT = 0.01
_pool_numbers = itertools.count(1)


class WorkerPool:
    """Worker threads that run ``execute(lease)`` for every task they lease from ``queue``.

    Usually reached through ``Processor.start`` / ``Processor.stop``. ``execute`` records the
    outcome itself, before it returns or, if it returns a :class:`~concurrent.futures.Future`,
    when that future is done: the worker takes its next task meanwhile, and :meth:`stop` waits
    for such futures too. If ``execute`` raises (or its future fails), the error is logged and
    the lease left to expire, so the task is claimed again. ``clock`` stamps the tasks given
    back at stop. ``on_lost(lease)`` is called when the heartbeat finds that a task under way
    is no longer leased to the pool (cancelled, or taken over): it may stop that work.
    """

    def __init__(
        self,
        queue: Queue,
        execute: Callable[[Lease], object],
        *,
        min_workers: int = 4,
        max_workers: int | None = None,
        idle_timeout: float = 30.0,
        lease_seconds: float = 30.0,
        poll_interval: float = 0.5,
        clock: Clock = utcnow,
        on_lost: Callable[[Lease], object] | None = None,
    ) -> None:
        max_workers = min_workers if max_workers is None else max_workers
        if not 1 <= min_workers <= max_workers:
            raise ValueError(
                f"need 1 <= min_workers <= max_workers, got {min_workers}, {max_workers}"
            )
        if lease_seconds <= 0:
            raise ValueError("lease_seconds must be positive")
        if not 0 <= idle_timeout < math.inf:
            raise ValueError(f"idle_timeout must be a number of seconds, got {idle_timeout!r}")
        self.queue = queue
        self.execute = execute
        self.min_workers = min_workers
        self.max_workers = max_workers
        self.idle_timeout = idle_timeout
        self.lease_seconds = lease_seconds
        self.poll_interval = poll_interval
        self.clock = clock
        self.on_lost = on_lost
        self.name = f"imageproc-{os.getpid()}-{next(_pool_numbers)}"
        self._numbers = itertools.count(1)
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        # The claimer waits on _idle for an idle worker; workers wait on _handoff for a lease (a
        # SimpleQueue: its put and get wake one thread in C, where a Condition's notify runs
        # Python under the GIL for every lease handed over). None in it wakes a worker to stop.
        self._idle = threading.Condition(self._lock)
        self._handoff: SimpleQueue[Lease | None] = SimpleQueue()
        # The leases in _handoff (as the heartbeat last renewed them), by id of the handed one.
        self._handed: dict[int, Lease] = {}
        self._threads: dict[str, threading.Thread] = {}
        self._in_flight: dict[str, Lease] = {}
        # Outcomes handed to the recorder (when ``execute`` returns a future) not yet committed.
        self._recording: set[Future[Any]] = set()
        # Idle workers not yet promised a lease by a claim under way.
        self._free = 0
        self._claimer: threading.Thread | None = None
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
        """Start ``min_workers`` workers, the claimer and the heartbeat.

        On glibc, first has malloc keep freed image memory for the next image rather than hand
        it back to the system (``engine._allocator.reuse_image_memory``; process-wide).
        """
        allocator.reuse_image_memory()
        with self._lock:
            for _ in range(self.min_workers):
                self._spawn()
        self._claimer = threading.Thread(
            target=self._claim_loop, name=f"{self.name}-claimer", daemon=True
        )
        self._heartbeat = threading.Thread(
            target=self._beat, name=f"{self.name}-heartbeat", daemon=True
        )
        self._claimer.start()
        self._heartbeat.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop claiming; wait up to ``timeout`` seconds for tasks in flight, then release the
        leases of those still running so another worker can take them straight away."""
        deadline = time.monotonic() + timeout
        with self._lock:
            self._stopping.set()
            self._idle.notify_all()
            for _ in self._threads:
                self._handoff.put(None)
        if self._claimer is not None:
            self._claimer.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            threads = list(self._threads.values())
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            recording = list(self._recording)
        # Outcomes handed over but not yet committed: their tasks are done, not stranded.
        futures.wait(recording, max(0.0, deadline - time.monotonic()))
        with self._lock:
            stranded = list(self._in_flight.values())
            unstarted = list(self._handed.values())
            self._handed.clear()
        for lease in unstarted:
            self._give_back(lease, interrupted=False)
        for lease in stranded:
            self._give_back(lease, interrupted=True)
        self._stopped.set()
        if self._heartbeat is not None:
            self._heartbeat.join(max(0.0, deadline - time.monotonic()))

    # -- the claimer --------------------------------------------------------------------------

    def _claim_loop(self) -> None:
        failures = 0
        while True:
            with self._lock:
                while self._free == 0 and not self._stopping.is_set():
                    self._idle.wait()
                if self._stopping.is_set():
                    return
                wanted, self._free = self._free, 0
            try:
                leases = self.queue.claim(self.name, lease_seconds=self.lease_seconds, limit=wanted)
            except Exception:
                with self._lock:
                    self._free += wanted
                failures += 1
                logger.exception("%s: claim failed (%d in a row); backing off", self.name, failures)
                self._stopping.wait(min(30.0, self.poll_interval * 2**failures))
                continue
            failures = 0
            with self._lock:
                self._free += wanted - len(leases)
                if self._stopping.is_set():
                    late = leases
                else:
                    late = []
                    for lease in leases:
                        self._handed[id(lease)] = lease
                        self._handoff.put(lease)
                    # Every worker busy, and the claim took all it could: more work is
                    # probably waiting, so grow if there is room.
                    full = leases and len(leases) == wanted and self._free == 0
                    if full and len(self._threads) < self.max_workers:
                        self._spawn()
            for lease in late:  # claimed just as the pool stopped: never started
                self._give_back(lease, interrupted=False)
            if not leases:
                try:
                    self.queue.wait(self.poll_interval)
                except Exception:
                    self._stopping.wait(self.poll_interval)

    # -- the workers --------------------------------------------------------------------------

    def _spawn(self) -> None:
        """Start one more worker; call with the lock held."""
        name = f"{self.name}-w{next(self._numbers)}"
        thread = threading.Thread(target=self._work, args=(name,), name=name, daemon=True)
        self._threads[name] = thread
        thread.start()

    def _work(self, name: str) -> None:
        while True:
            lease = self._next_lease(name)
            if lease is None:
                return
            try:
                result = self.execute(lease)
            except Exception:
                self._unrecorded(lease)
                self._stopping.wait(self.poll_interval)
            else:
                if isinstance(result, Future):
                    with self._lock:
                        self._recording.add(result)
                    result.add_done_callback(functools.partial(self._recorded, lease))
            finally:
                with self._lock:
                    self._in_flight.pop(name, None)

    def _recorded(self, lease: Lease, future: Future[Any]) -> None:
        with self._lock:
            self._recording.discard(future)
        error = future.exception()
        if error is not None:
            self._unrecorded(lease, error)

    @staticmethod
    def _unrecorded(lease: Lease, error: BaseException | None = None) -> None:
        # Recording the outcome failed (the backend is down): the lease will expire and the task
        # will be claimed again, so log and carry on rather than lose the worker.
        logger.error(
            "could not record the outcome of task %s", lease.task.id, exc_info=error or True
        )

    def _next_lease(self, name: str) -> Lease | None:
        """Wait idle for the claimer's next lease; None when this worker is to end (the pool
        stops, or it has been idle too long and the pool is above its minimum)."""
        with self._lock:
            self._free += 1
            self._idle.notify()
        while True:
            with self._lock:
                may_retire = len(self._threads) > self.min_workers
            # At the minimum a worker never retires, so it need not wake to look at the time.
            timeout = max(self.idle_timeout, _LEAST_IDLE_WAIT) if may_retire else None
            try:
                lease = self._handoff.get(timeout=timeout)
            except Empty:
                with self._lock:
                    # Only a worker that no claim under way counts on may leave.
                    if len(self._threads) > self.min_workers and self._free > 0:
                        self._free -= 1
                        del self._threads[name]
                        logger.debug("%s: idle, retiring", name)
                        return None
                continue
            with self._lock:
                if lease is None or self._stopping.is_set():
                    # The pool stops: stop() gives back what is still waiting to be started.
                    if lease is None:  # a stopping worker idle, not one a claim counted on
                        self._free -= 1
                    del self._threads[name]
                    return None
                fresh = self._handed.pop(id(lease), lease)  # as the heartbeat last renewed it
                self._in_flight[name] = fresh
                return fresh

    def _give_back(self, lease: Lease, *, interrupted: bool) -> None:
        """Return a leased task to the queue: ``interrupted`` mid-task (the attempt counts), or
        claimed just as the pool stopped and never started (it does not)."""
        now = self.clock()
        try:
            if not interrupted:
                self.queue.release(lease, lease.task.unclaim(now))
                return
            task = lease.task.after_failure(_INTERRUPTED, now, delay=timedelta(0))
            if task.status.is_final:
                self.queue.complete(lease, task)
            else:
                self.queue.release(lease, task)
            logger.warning("gave back task %s, still running at stop", lease.task.id)
        except LeaseLost:
            pass  # it finished (or was cancelled) just now
        except Exception:
            # The lease will expire on its own; the task is not lost either way.
            logger.exception("could not give back task %s at stop", lease.task.id)

    # -- the heartbeat ------------------------------------------------------------------------

    def _beat(self) -> None:
        interval = self.lease_seconds / 3
        # Beats on through stop(): tasks finishing during the grace period still need their leases.
        while not self._stopped.wait(interval):
            self.beat()

    def beat(self) -> None:
        """Renew every lease the pool holds (running or about to start), in one call."""
        with self._lock:
            held = [*self._in_flight.values(), *self._handed.values()]
        if not held:
            return
        try:
            renewed = renew_all(self.queue, held, lease_seconds=self.lease_seconds)
        except Exception:
            logger.exception("heartbeat for %d task(s) failed", len(held))
            return
        fresh = {id(old): new for old, new in zip(held, renewed, strict=True) if new is not None}
        asked = {id(lease) for lease in held}
        lost = []
        with self._lock:
            for name, lease in self._in_flight.items():
                if id(lease) in fresh:
                    self._in_flight[name] = fresh[id(lease)]
                elif id(lease) in asked:  # not one a worker took up since
                    lost.append(lease)
            for key, lease in self._handed.items():
                if id(lease) in fresh:
                    self._handed[key] = fresh[id(lease)]
        # Without on_lost, its worker finds out when it tries to record the result.
        for lease in lost:
            if self.on_lost is not None:
                try:
                    self.on_lost(lease)
                except Exception:
                    logger.exception("stopping the work on task %s failed", lease.task.id)
