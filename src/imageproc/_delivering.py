"""The Processor's webhooks: its sender, started and stopped with the workers, and the methods
that list deliveries and send dead ones again. :class:`Processor <imageproc.Processor>` has
these methods from :class:`Delivering`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection

from imageproc.__version__ import __version__
from imageproc._events import Events
from imageproc._protocols import DeliveryStore, Repository
from imageproc._running import Running
from imageproc.delivery._completions import Completions
from imageproc.delivery._dispatcher import Dispatcher
from imageproc.delivery._outbox import Delivery, DeliveryStatus
from imageproc.delivery._webhooks import Webhooks
from imageproc.errors import ConfigurationError

__all__ = ["Delivering"]

logger = logging.getLogger("imageproc")


class Delivering(Running):
    """The webhook methods; the Processor provides what they use."""

    _webhooks: Webhooks | None
    _dispatcher: Dispatcher | None
    _dispatcher_lock: threading.Lock

    @property
    def repository(self) -> Repository:
        """Where tasks are recorded (the Processor's)."""
        raise NotImplementedError

    @property
    def events(self) -> Events:
        """The hooks called as tasks move (the Processor's)."""
        raise NotImplementedError

    @property
    def webhooks(self) -> Webhooks | None:
        """How webhooks are sent (:class:`~imageproc.Webhooks`), or None if they are not."""
        return self._webhooks

    @property
    def sending(self) -> bool:
        """Whether this Processor's webhook sender is running."""
        dispatcher = self._dispatcher
        return dispatcher is not None and dispatcher.running

    def start(self, workers: int | tuple[int, int] = 4, *, idle_timeout: float = 30.0) -> None:
        """Start background worker threads in this process and return at once (and, with
        :attr:`webhooks` that ``send``, the webhook sender).

        ``workers`` is a count, or ``(min, max)`` to grow the pool while tasks wait and shrink it
        back after workers have been idle for ``idle_timeout`` seconds. Stop them with
        :meth:`stop` (or by leaving the ``with`` block).
        """
        # The sender first: a task that ends at once then finds it listening.
        self.start_sending()
        super().start(workers, idle_timeout=idle_timeout)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop claiming, let tasks in flight finish for up to ``timeout`` seconds, then release
        the leases of any still running so another worker takes them at once; stop the webhook
        sender likewise (a try cut short is sent again later)."""
        super().stop(timeout)
        self.stop_sending(min(timeout, 10.0))

    def start_sending(self) -> None:
        """Start the webhook sender alone (``start`` does, with the workers): for a process
        that sends but runs no workers. Does nothing without :attr:`webhooks` or when its
        ``send`` is off."""
        settings = self._webhooks
        if settings is None or not settings.send:
            return
        store = self._outbox()
        with self._dispatcher_lock:
            if self._dispatcher is None:
                completions = getattr(self.repository, "completions", None)
                self._dispatcher = Dispatcher(
                    store,
                    completions if isinstance(completions, Completions) else Completions(),
                    settings,
                    clock=lambda: self.clock(),
                    events=self.events,
                    user_agent=f"imageproc/{__version__} (webhooks)",
                )
            self._dispatcher.start()

    def stop_sending(self, timeout: float = 10.0) -> None:
        """Stop the webhook sender (``stop`` does)."""
        with self._dispatcher_lock:
            dispatcher, self._dispatcher = self._dispatcher, None
        if dispatcher is not None:
            dispatcher.stop(timeout)

    def deliveries(
        self,
        status: DeliveryStatus | str = DeliveryStatus.DEAD,
        *,
        owner: str | None = None,
        task_id: str | None = None,
        limit: int = 100,
    ) -> list[Delivery]:
        """Up to ``limit`` webhook deliveries in ``status`` (``"dead"`` by default: those whose
        every try failed), of ``owner`` or of ``task_id`` if given, the most recent first. Each
        says where it went, how many tries it took and why the last one failed."""
        return self._outbox().deliveries(
            DeliveryStatus(status), owner=owner, task_id=task_id, limit=limit
        )

    def redeliver(self, ids: Collection[str] | None = None, *, owner: str | None = None) -> int:
        """Send dead deliveries again, with a fresh schedule and the same ``webhook-id``: those
        named by ``ids``, or every dead one (of ``owner`` only, if given). Returns how many
        were made due: this process's sender takes them at once, another process's within its
        ``poll_interval``."""
        if isinstance(ids, str):
            ids = [ids]
        count = self._outbox().resend_deliveries(ids, now=self.clock(), owner=owner)
        logger.info("%d dead webhook deliveries due again", count)
        return count

    def _outbox(self) -> DeliveryStore:
        repository = self.repository
        if not isinstance(repository, DeliveryStore):
            raise ConfigurationError(
                f"webhooks need a repository that keeps an outbox"
                f" ({type(repository).__name__} is no DeliveryStore)"
            )
        return repository
