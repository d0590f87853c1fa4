"""One try of one webhook delivery: check where it goes, connect there, POST, read the answer.

The callback URL is checked again at every try (a host that resolved to a public address when
the task was submitted may resolve to a private one now), its host resolved once, every address
checked, and the connection made to the checked address itself (the request names the host in
``Host`` and, over TLS, in SNI and the certificate check), so a second resolution cannot lead
elsewhere (DNS rebinding). Redirects are not followed; an answer is read to a few KB at most;
the whole try has a deadline.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import datetime

import attrs

from imageproc._addresses import Address, Target
from imageproc._pinned import new_client, send_to_any
from imageproc.delivery._outbox import Delivery
from imageproc.delivery._webhooks import Webhooks
from imageproc.errors import UnsafeURL

__all__ = ["Attempt", "Sender"]


@attrs.frozen
class Attempt:
    """How one try went."""

    delivered: bool
    #: The receiver's HTTP status, if it answered.
    status_code: int | None
    #: Why it failed (None when delivered).
    error: str | None
    seconds: float
    #: Whether trying again cannot help (the URL itself is refused).
    permanent: bool = False


class Sender:
    """Sends deliveries for one Processor; one HTTP client, used from one event loop."""

    def __init__(
        self,
        settings: Webhooks,
        *,
        user_agent: str,
        resolve: Callable[[Target], Awaitable[list[Address]]] | None = None,
    ) -> None:
        self.settings = settings
        self._user_agent = user_agent
        #: How a checked target's host is resolved (and every address checked).
        self._resolve = resolve or settings.allow.resolve_async
        self._client = new_client(
            connect_timeout=settings.connect_timeout, timeout=settings.timeout
        )

    async def aclose(self) -> None:
        """Close the HTTP client."""
        await self._client.aclose()

    async def send(self, delivery: Delivery, now: datetime) -> Attempt:
        """Try ``delivery`` once (signed for ``now``)."""
        started = time.perf_counter()
        policy = self.settings.allow
        try:
            target = policy.check_url(delivery.url, what="callback URL")
        except UnsafeURL as error:
            return Attempt(False, None, error.message, time.perf_counter() - started, True)
        try:
            async with asyncio.timeout(self.settings.timeout):
                addresses = await self._resolve(target)
                status = await self._post(delivery, now, target, addresses)
        except UnsafeURL as error:
            return Attempt(False, None, error.message, time.perf_counter() - started)
        except TimeoutError:
            message = f"no answer within {self.settings.timeout:g} s"
            return Attempt(False, None, message, time.perf_counter() - started)
        except Exception as error:  # any failure to reach the receiver is one failed try
            message = f"{type(error).__name__}: {error}".rstrip(": ")
            return Attempt(False, None, message, time.perf_counter() - started)
        seconds = time.perf_counter() - started
        if 200 <= status < 300:
            return Attempt(True, status, None, seconds)
        if 300 <= status < 400:
            return Attempt(False, status, f"answered {status}: redirects are not followed", seconds)
        return Attempt(False, status, f"answered {status}", seconds)

    async def _post(
        self, delivery: Delivery, now: datetime, target: Target, addresses: list[Address]
    ) -> int:
        body = delivery.payload.encode()
        headers = {
            "content-type": "application/json",
            "user-agent": self._user_agent,
            **self.settings.headers(delivery.id, now, body),
        }
        response = await send_to_any(
            self._client, "POST", target, addresses, headers=headers, content=body
        )
        try:
            read = 0
            async for chunk in response.aiter_raw():
                read += len(chunk)
                if read >= self.settings.max_answer_bytes:
                    break
        finally:
            await response.aclose()
        return response.status_code
