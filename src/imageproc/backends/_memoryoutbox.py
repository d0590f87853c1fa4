"""The webhook outbox of :class:`~imageproc.backends._memory.MemoryRepository`: the
:class:`~imageproc.DeliveryStore` methods, over the deliveries the repository writes (under its
table lock) when it records a final status."""

from __future__ import annotations

import threading
from collections.abc import Collection
from datetime import datetime, timedelta

from imageproc.delivery._completions import Completions
from imageproc.delivery._outbox import Delivery, DeliveryStatus

__all__ = ["MemoryOutbox"]


class MemoryOutbox:
    """The outbox methods; :class:`~imageproc.backends._memory.MemoryRepository` holds the
    deliveries and the lock."""

    _changed: threading.Condition
    _deliveries: dict[str, Delivery]
    completions: Completions

    def claim_deliveries(self, now: datetime, *, limit: int, hold: timedelta) -> list[Delivery]:
        """Take up to ``limit`` pending deliveries due at ``now``, earliest first."""
        with self._changed:
            due = sorted(
                (
                    d
                    for d in self._deliveries.values()
                    if d.status == DeliveryStatus.PENDING and d.next_attempt_at <= now
                ),
                key=lambda d: (d.next_attempt_at, d.id),
            )[: max(limit, 0)]
            taken = [d.claimed(now, until=now + hold) for d in due]
            self._deliveries.update((d.id, d) for d in taken)
            return taken

    def settle_delivery(self, delivery: Delivery) -> bool:
        """Record how a try went, if that try still holds the delivery."""
        with self._changed:
            known = self._deliveries.get(delivery.id)
            if (
                known is None
                or known.status != DeliveryStatus.PENDING
                or known.attempts != delivery.attempts
                or known.last_attempt_at != delivery.last_attempt_at
            ):
                return False
            self._deliveries[delivery.id] = delivery
            return True

    def deliveries(
        self,
        status: DeliveryStatus,
        *,
        owner: str | None = None,
        task_id: str | None = None,
        limit: int = 100,
    ) -> list[Delivery]:
        """Deliveries in ``status`` (of ``owner``, of ``task_id``), the most recent first."""
        with self._changed:
            found = [
                d
                for d in self._deliveries.values()
                if d.status == status
                and (owner is None or d.owner == owner)
                and (task_id is None or d.task_id == task_id)
            ]
        found.sort(key=lambda d: (d.created_at, d.id), reverse=True)
        return found[: max(limit, 0)]

    def resend_deliveries(
        self, ids: Collection[str] | None, *, now: datetime, owner: str | None = None
    ) -> int:
        """Make the dead deliveries among ``ids`` (all if None) due again now."""
        with self._changed:
            chosen = [
                d
                for d in self._deliveries.values()
                if d.status == DeliveryStatus.DEAD
                and (ids is None or d.id in ids)
                and (owner is None or d.owner == owner)
            ]
            self._deliveries.update((d.id, d.resent(now)) for d in chosen)
        if chosen:
            self.completions.nudge()
        return len(chosen)

    def next_delivery_at(self) -> datetime | None:
        """When the earliest pending delivery is due."""
        with self._changed:
            return min(
                (
                    d.next_attempt_at
                    for d in self._deliveries.values()
                    if d.status == DeliveryStatus.PENDING
                ),
                default=None,
            )

    def purge_deliveries(self, before: datetime, *, limit: int = 500) -> int:
        """Forget up to ``limit`` delivered or dead deliveries written before ``before``."""
        with self._changed:
            old = [
                d.id
                for d in self._deliveries.values()
                if d.status != DeliveryStatus.PENDING and d.created_at < before
            ][: max(limit, 0)]
            for delivery_id in old:
                del self._deliveries[delivery_id]
            return len(old)
