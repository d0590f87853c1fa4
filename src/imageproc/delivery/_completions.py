"""The completion push: who waits for which task to end, and telling them when it does.

A backend owns one :class:`Completions` and publishes to it every task it records in a final
status (``succeeded``, ``failed``, ``dead``, ``cancelled``), right after the commit; a backend
shared by several processes also publishes what it hears from the others (PostgreSQL: ``LISTEN``
on the ``imageproc_done`` channel, which the recording statement itself notifies). Waiters
subscribe a callback for one task id::

    with completions.subscribe(task_id, lambda task_id, task: woken.set()):
        ...  # read the task; if it is not final yet, wait for ``woken``

Subscribe *before* reading the task, so an end that lands between the read and the wait is not
missed. A callback runs in the thread that published (a worker, the listener), so it must be
quick and must not block or call back into the backend: set an event, or hand the news to an
event loop with ``call_soon_threadsafe``. ``task`` is the final task when the publisher has it
(the same process recorded it), or None when only the id is known (another process did): then
read it.

Where the backend cannot hear every end (SQLite written by another process, a listener that lost
its connection), :attr:`Completions.poll_interval` says how often a waiter should read the task
anyway; None means every end is pushed.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from imageproc._task import Task

__all__ = ["Completions"]

logger = logging.getLogger("imageproc.completions")

#: Called with a task id, and the final task when the publisher has it.
_Callback = Callable[[str, "Task | None"], None]
#: Called with what was published: ``(task_id, task_or_none)`` pairs; none for "anything".
_Watcher = Callable[[Sequence[tuple[str, "Task | None"]] | None], None]


class Completions:
    """Subscriptions to the end of tasks, by task id; thread-safe.

    ``poll_interval``: seconds between the reads a waiter must still make itself (ends this
    process cannot hear of), or None when every end is pushed. ``activate(timeout)`` is called
    (once per subscription, so it must be cheap once done) before a subscription takes effect:
    a backend starts listening there, and returns once it listens or ``timeout`` has passed.
    """

    def __init__(
        self,
        *,
        poll_interval: float | None = None,
        activate: Callable[[float], None] | None = None,
    ) -> None:
        self.poll_interval = poll_interval
        self._activate = activate
        self._lock = threading.Lock()
        self._subscribers: dict[str, list[_Callback]] = {}
        self._watchers: list[_Watcher] = []

    def activate(self, timeout: float = 5.0) -> None:
        """Get ready to hear ends (a backend's first ``LISTEN``): may block for up to
        ``timeout`` seconds, so an event loop calls it in a thread, once, then subscribes with
        ``activate=False``. Past ``timeout``, ends may only be found by :attr:`poll_interval`."""
        if self._activate is not None:
            self._activate(timeout)

    @contextmanager
    def subscribe(
        self, task_id: str, callback: _Callback, *, timeout: float = 5.0, activate: bool = True
    ) -> Iterator[None]:
        """Call ``callback(task_id, task_or_none)`` each time ``task_id`` is published, until the
        ``with`` block ends. Getting ready to hear (:meth:`activate`) takes at most ``timeout``
        seconds; ``activate=False`` skips it (the caller has activated already), and then
        subscribing never blocks but on this object's own short lock."""
        if activate:
            self.activate(timeout)
        with self._lock:
            self._subscribers.setdefault(task_id, []).append(callback)
        try:
            yield
        finally:
            with self._lock:
                callbacks = self._subscribers.get(task_id, [])
                if callback in callbacks:
                    callbacks.remove(callback)
                if not callbacks:
                    self._subscribers.pop(task_id, None)

    @contextmanager
    def watch(self, callback: _Watcher) -> Iterator[None]:
        """Call ``callback(ended)`` after every publish of ends, with every ``(task_id,
        task_or_none)`` published, and with None (anything may have changed) on :meth:`nudge`
        and :meth:`publish_all`, until the
        ``with`` block ends: how the webhook sender hears that the outbox may have grown. The
        same rules as for a subscription's callback: quick, never blocking."""
        with self._lock:
            self._watchers.append(callback)
        try:
            yield
        finally:
            with self._lock:
                if callback in self._watchers:
                    self._watchers.remove(callback)

    def nudge(self) -> None:
        """Call the watchers only (something other than a task's end changed, such as dead
        deliveries made due again)."""
        self._call_watchers(None)

    def __len__(self) -> int:
        """How many tasks have subscribers now."""
        with self._lock:
            return len(self._subscribers)

    def publish(self, ended: Iterable[tuple[str, Task | None]]) -> None:
        """Tell the subscribers of each ``(task_id, task_or_none)`` that the task has ended."""
        if self._watchers:
            ended = list(ended)  # read twice
        if not self._subscribers:  # the usual case: nobody waits (a racy read is fine here)
            self._call_watchers(ended)
            return
        with self._lock:
            calls = [
                (callback, task_id, task)
                for task_id, task in ended
                for callback in tuple(self._subscribers.get(task_id, ()))
            ]
        self._call(calls)
        self._call_watchers(ended)

    def publish_tasks(self, tasks: Iterable[Task]) -> None:
        """Publish the tasks among ``tasks`` that are in a final status."""
        if self._subscribers or self._watchers:
            self.publish((task.id, task) for task in tasks if task.status.is_final)

    def publish_all(self) -> None:
        """Wake every subscriber: any task may have ended meanwhile (news may have been lost,
        as when a listener reconnects), so each should read its task again."""
        with self._lock:
            calls: list[tuple[_Callback, str, Task | None]] = [
                (callback, task_id, None)
                for task_id, callbacks in self._subscribers.items()
                for callback in tuple(callbacks)
            ]
        self._call(calls)
        self._call_watchers(None)

    def _call_watchers(self, ended: Iterable[tuple[str, Task | None]] | None) -> None:
        if not self._watchers:
            return
        told = None if ended is None else tuple(ended)
        if told == ():
            return  # nothing ended
        with self._lock:
            watchers = tuple(self._watchers)
        for callback in watchers:
            try:
                callback(told)
            except Exception:
                logger.exception("completion watcher raised")

    @staticmethod
    def _call(calls: list[tuple[_Callback, str, Task | None]]) -> None:
        for callback, task_id, task in calls:
            try:
                callback(task_id, task)
            except Exception:
                # One broken subscriber must not keep the news from the others, or fail the
                # worker that published.
                logger.exception("completion callback for task %s raised", task_id)
