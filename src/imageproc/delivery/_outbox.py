"""The webhook outbox: one :class:`Delivery` per final status a task with a callback URL reached.

A delivery is written by the backend in the same transaction that records the task's final
status, so a status that was rolled back is never announced and one that was committed always
is, even if the worker dies right after the commit. Senders then claim due deliveries, POST
them, and record how that went: ``delivered``, or another try later, or ``dead`` once the
schedule is used up (a dead delivery can be sent again on request).

The body is fixed when the delivery is written (the task's status JSON at that moment, as
``GET /status`` shows it but without URLs), so every try sends the same bytes under the same
``webhook-id``, and receivers can drop the duplicates that at-least-once sending allows.
"""

from __future__ import annotations

import enum
import json
import secrets
from datetime import datetime
from typing import Any

import attrs

from imageproc._task import Task
from imageproc._taskjson import rfc3339, task_json

__all__ = ["Delivery", "DeliveryStatus", "delivery_for"]


class DeliveryStatus(enum.StrEnum):
    """Where a webhook delivery is."""

    #: Waiting for its first or next try.
    PENDING = "pending"
    #: The receiver answered 2xx.
    DELIVERED = "delivered"
    #: Every try of the schedule failed; sent again only on request.
    DEAD = "dead"


@attrs.frozen(kw_only=True)
class Delivery:
    """One webhook: a task's final status, to be POSTed to its callback URL."""

    #: The ``webhook-id``: the same for every try, so a receiver can drop duplicates.
    id: str
    task_id: str
    owner: str | None
    url: str
    #: The exact body sent (JSON text), fixed when the task's status was recorded.
    payload: str
    status: DeliveryStatus = DeliveryStatus.PENDING
    #: Tries made so far (a claim counts one).
    attempts: int = 0
    created_at: datetime
    #: When the next try is due; while a sender holds it, when its hold runs out.
    next_attempt_at: datetime
    last_attempt_at: datetime | None = None
    #: Why the last try failed, if it did.
    last_error: str | None = None
    #: The HTTP status the receiver last answered, if it answered.
    last_status_code: int | None = None
    delivered_at: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        """This delivery as JSON (``GET /webhooks``, ``imageproc webhooks list``), without the
        body it carries."""
        return {
            "id": self.id,
            "task_id": self.task_id,
            "url": self.url,
            "status": str(self.status),
            "attempts": self.attempts,
            "created_at": rfc3339(self.created_at),
            "next_attempt_at": rfc3339(self.next_attempt_at)
            if self.status == DeliveryStatus.PENDING
            else None,
            "last_attempt_at": rfc3339(self.last_attempt_at),
            "last_status_code": self.last_status_code,
            "last_error": self.last_error,
            "delivered_at": rfc3339(self.delivered_at),
        }

    def claimed(self, now: datetime, *, until: datetime) -> Delivery:
        """This delivery taken by a sender at ``now`` for one try, held until ``until``."""
        return attrs.evolve(
            self, attempts=self.attempts + 1, last_attempt_at=now, next_attempt_at=until
        )

    def succeeded(self, now: datetime, status_code: int) -> Delivery:
        """This delivery after a 2xx answer."""
        return attrs.evolve(
            self,
            status=DeliveryStatus.DELIVERED,
            delivered_at=now,
            last_status_code=status_code,
            last_error=None,
        )

    def failed(self, error: str, *, status_code: int | None, retry_at: datetime | None) -> Delivery:
        """This delivery after a failed try: due again at ``retry_at``, or ``dead`` if None."""
        if retry_at is None:
            return attrs.evolve(
                self, status=DeliveryStatus.DEAD, last_error=error, last_status_code=status_code
            )
        return attrs.evolve(
            self, next_attempt_at=retry_at, last_error=error, last_status_code=status_code
        )

    def resent(self, now: datetime) -> Delivery:
        """A dead (or delivered) delivery made due again now, with a fresh schedule."""
        return attrs.evolve(
            self, status=DeliveryStatus.PENDING, attempts=0, next_attempt_at=now, delivered_at=None
        )


def delivery_for(task: Task, now: datetime) -> Delivery | None:
    """The delivery that announces ``task``'s final status, or None when it asked for none (no
    callback URL) or is not final."""
    if task.callback_url is None or not task.status.is_final:
        return None
    payload = json.dumps(task_json(task), separators=(",", ":"), ensure_ascii=False)
    return Delivery(
        id="msg_" + secrets.token_urlsafe(18),
        task_id=task.id,
        owner=task.owner,
        url=task.callback_url,
        payload=payload,
        created_at=now,
        next_attempt_at=now,
    )
