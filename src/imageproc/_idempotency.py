"""Idempotency keys: what a submit under a key is remembered as, and how two requests compare.

A client that sends a request again after a timeout cannot know whether the first one was
accepted. With an idempotency key (the IETF httpapi "Idempotency-Key" draft, as Stripe and most
payment APIs use it) the service remembers, per owner and for a retention period, which task the
first request under that key created and a fingerprint of what it asked for: the same key with
the same request gets that task back; the same key with a different request is refused
(:class:`~imageproc.IdempotencyConflict`). The record is written in the transaction that records
the task, so two requests under one key can never both create one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import attrs

from imageproc._task import TaskStatus
from imageproc.errors import IdempotencyConflict, InvalidInput
from imageproc.pipeline._pipeline import Pipeline

__all__ = [
    "DEFAULT_RETENTION",
    "MAX_KEY_LENGTH",
    "IdempotencyRecord",
    "checked_key",
    "conflict",
    "fingerprint",
    "scope_of",
]

#: How long a key is remembered unless the Processor is told otherwise (the draft suggests at
#: least as long as a client keeps retrying; a day covers a phone that was offline overnight).
DEFAULT_RETENTION: Final = timedelta(hours=24)
#: The longest key accepted: a UUID is 36 characters; room for a prefix or two.
MAX_KEY_LENGTH: Final = 255


@attrs.frozen
class IdempotencyRecord:
    """What a submit under an idempotency key is remembered as, until ``expires_at``."""

    #: The owner the key belongs to, ``""`` for uploads without one: keys of two owners never
    #: meet.
    scope: str
    key: str
    #: A digest of what the request asked for (:func:`fingerprint`).
    fingerprint: str
    #: The task the first request was answered with.
    task_id: str
    #: The task's status in that first answer (``queued``, or a deduplicated task's).
    status: TaskStatus
    #: The task's ``created_at``, as the first answer gave it.
    created_at: datetime
    #: When the key was first used: its retention runs from here.
    remembered_at: datetime
    expires_at: datetime

    def live(self, now: datetime) -> bool:
        """Whether the key is still remembered at ``now``."""
        return now < self.expires_at


def scope_of(owner: str | None) -> str:
    """The scope an owner's keys live in."""
    return "" if owner is None else owner


def checked_key(key: object) -> str:
    """``key`` if it is a usable idempotency key: text of 1 to :data:`MAX_KEY_LENGTH`
    printable ASCII characters (what an HTTP header can carry as a string). Otherwise
    :class:`~imageproc.InvalidInput` saying what is wrong."""
    if not isinstance(key, str):
        raise InvalidInput(f"an idempotency key must be text, got {type(key).__name__}")
    if not key:
        raise InvalidInput("an idempotency key must not be empty")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidInput(f"an idempotency key may be at most {MAX_KEY_LENGTH} characters")
    if not all(" " <= character <= "~" for character in key):
        raise InvalidInput(
            "an idempotency key must be printable ASCII (letters, digits, punctuation, space)"
        )
    return key


def fingerprint(
    *,
    sha256: str,
    pipeline: Pipeline,
    priority: int,
    not_before: datetime | timedelta | None,
    metadata: Mapping[str, Any],
    dedupe: bool,
    callback_url: str | None = None,
) -> str:
    """A digest of what a submit asks for: the image's bytes (by their digest), the pipeline
    (however it was named: a preset and its text are the same request), and every option.
    ``not_before`` counts as given, so a delay of 60 s sent twice is the same request."""
    if isinstance(not_before, timedelta):
        when: str | None = f"+{not_before.total_seconds()!r}s"
    elif isinstance(not_before, datetime):
        when = not_before.astimezone(UTC).isoformat()
    else:
        when = None
    request: dict[str, Any] = {
        "image": sha256,
        "pipeline": pipeline.to_json(),
        "priority": priority,
        "not_before": when,
        "metadata": dict(metadata),
        "dedupe": dedupe,
    }
    if callback_url is not None:  # only when given, so keys remembered before it still match
        request["callback_url"] = callback_url
    text = json.dumps(request, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def conflict(key: str) -> IdempotencyConflict:
    """The refusal of a request that reuses ``key`` for something else."""
    # Not what the first request was: that is the first client's business (it may be another
    # device of the same owner, but it may also be a guess).
    return IdempotencyConflict(
        f"the idempotency key {key!r} was already used for a different request (another image,"
        " pipeline or option); use a new key for a new request"
    )
