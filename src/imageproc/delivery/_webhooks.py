"""How this Processor sends webhooks: :class:`Webhooks`, one value with every setting, and the
Standard Webhooks signature (https://www.standardwebhooks.com) each delivery carries.

Each delivery is a POST of the task's status JSON with three headers: ``webhook-id`` (the same
on every try of one delivery, so receivers drop duplicates), ``webhook-timestamp`` (Unix
seconds of this try) and ``webhook-signature``: ``v1,<base64 HMAC-SHA256>`` of
``{id}.{timestamp}.{body}`` under each secret, space-separated, so a receiver that knows any one
of them verifies (how secrets are rotated). Receivers verify with the ``standardwebhooks``
package or Svix's libraries; signing here uses the former too.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final

import attrs

from imageproc._addresses import AddressPolicy, as_policy
from imageproc._retrying import RetryPolicy

__all__ = ["DEFAULT_SCHEDULE", "Webhooks"]

#: Secrets are written as Standard Webhooks writes them: this prefix, then base64.
SECRET_PREFIX: Final = "whsec_"

#: About a day of tries: 5 s, 10 s, 20 s… doubling to two hours, then every two hours, 23
#: tries in all (each delay up to a quarter shorter at random, so receivers that come back are
#: not hit by every sender at once).
DEFAULT_SCHEDULE: Final = RetryPolicy(
    max_attempts=23, backoff_base=5.0, backoff_max=7200.0, jitter=0.25
)


def _secrets(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    return tuple(str(v) for v in value)


def _check_secrets(_: Any, attribute: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
    for secret in value:
        body = secret.removeprefix(SECRET_PREFIX)
        try:
            raw = base64.b64decode(body, validate=True)
        except ValueError:
            raise ValueError(f"a webhook secret must be {SECRET_PREFIX}<base64>") from None
        if len(raw) < 24:
            raise ValueError(
                "a webhook secret must hold at least 24 random bytes (use Webhooks.new_secret())"
            )


def _urls(value: Mapping[str, str]) -> dict[str, str]:
    return {str(owner): str(url) for owner, url in dict(value).items()}


@attrs.frozen(kw_only=True)
class Webhooks:
    """Webhook settings: pass one as ``Processor(…, webhooks=Webhooks(secrets=[…]))``.

    A task submitted with a ``callback_url`` (or whose owner has one in ``default_urls``) has
    its status POSTed there, signed, once it reaches a final status. The delivery is written in
    the transaction that records that status and sent after commit by the Processor's sender
    (it runs while the workers run: ``start``, ``run``, ``imageproc worker`` and ``serve``),
    tried again on the ``schedule`` until the receiver answers 2xx, then ``dead`` (listed by
    ``Processor.deliveries``, sent again by ``Processor.redeliver``).
    """

    #: Signing secrets (``whsec_…``, see :meth:`new_secret`); each delivery is signed with
    #: every one, so a new secret can be added before receivers switch and the old one
    #: removed after.
    secrets: tuple[str, ...] = attrs.field(converter=_secrets, validator=_check_secrets)
    #: The callback URL of tasks submitted without one, by owner; ``"*"`` for any owner
    #: (and tasks without an owner) not named.
    default_urls: Mapping[str, str] = attrs.field(factory=dict, converter=_urls)
    #: Hosts and networks callbacks may reach though they are not public (loopback, private,
    #: link-local…): an :class:`AddressPolicy`, or its entries (``"10.0.0.0/8"``,
    #: ``"hooks.internal"``).
    allow: AddressPolicy = attrs.field(factory=AddressPolicy, converter=as_policy)
    #: When failed tries are repeated (``max_attempts``, ``backoff_base``, ``backoff_max``,
    #: ``jitter``): :data:`DEFAULT_SCHEDULE` keeps trying for about a day.
    schedule: RetryPolicy = DEFAULT_SCHEDULE
    #: Seconds to connect to a receiver...
    connect_timeout: float = attrs.field(default=5.0, validator=attrs.validators.gt(0))
    #: ...and for a whole try (connecting, sending, and reading the answer's head).
    timeout: float = attrs.field(default=15.0, validator=attrs.validators.gt(0))
    #: Bytes of a receiver's answer after which reading stops (one network read may fetch
    #: more, up to 64 KiB); the rest is dropped unread.
    max_answer_bytes: int = 4096
    #: Deliveries sent at once by one Processor.
    concurrency: int = attrs.field(default=8, validator=attrs.validators.gt(0))
    #: Whether this Processor sends deliveries while its workers run (a web process that only
    #: submits can leave sending to the workers: deliveries are written either way).
    send: bool = True
    #: Seconds between looks for deliveries other processes wrote (this process hears of its
    #: own at once, and PostgreSQL pushes the others' task ends too).
    poll_interval: float = attrs.field(default=5.0, validator=attrs.validators.gt(0))

    @staticmethod
    def new_secret() -> str:
        """A fresh signing secret: ``whsec_`` and 32 random bytes in base64."""
        return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()

    def url_for(self, owner: str | None) -> str | None:
        """The callback URL a task of ``owner`` gets when it was submitted without one."""
        if owner is not None and owner in self.default_urls:
            return self.default_urls[owner]
        return self.default_urls.get("*")

    def signature(self, message_id: str, timestamp: datetime, body: bytes) -> str:
        """The ``webhook-signature`` header for one try: a ``v1,…`` signature per secret."""
        from standardwebhooks.webhooks import Webhook  # only where deliveries are sent

        return " ".join(
            Webhook(secret).sign(message_id, timestamp, body) for secret in self.secrets
        )

    def headers(self, message_id: str, timestamp: datetime, body: bytes) -> dict[str, str]:
        """The Standard Webhooks headers of one try."""
        return {
            "webhook-id": message_id,
            "webhook-timestamp": str(int(timestamp.timestamp())),
            "webhook-signature": self.signature(message_id, timestamp, body),
        }
