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
import ipaddress
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING

import attrs

from imageproc._addresses import Address, Target
from imageproc.delivery._outbox import Delivery
from imageproc.delivery._webhooks import Webhooks
from imageproc.errors import UnsafeURL

if TYPE_CHECKING:
    import httpx

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
        import httpx  # here, not at import: only a process that sends needs it

        self.settings = settings
        self._user_agent = user_agent
        #: How a checked target's host is resolved (and every address checked).
        self._resolve = resolve or settings.allow.resolve_async
        self._client = httpx.AsyncClient(
            follow_redirects=False,
            timeout=httpx.Timeout(settings.timeout, connect=settings.connect_timeout),
            # No connection kept: connections are made to an address, not a name, so one kept
            # for one host could otherwise carry a request for another name on that address.
            limits=httpx.Limits(max_keepalive_connections=0),
            trust_env=False,  # no proxy from the environment between us and the checks
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
                status = await self._post_to_any(delivery, now, target, addresses)
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

    async def _post_to_any(
        self, delivery: Delivery, now: datetime, target: Target, addresses: list[Address]
    ) -> int:
        """POST to the first of ``addresses`` that takes the connection (a name may resolve to
        an IPv6 and an IPv4 address, and the receiver listen on one of them)."""
        import httpx

        for address in addresses[:-1]:
            try:
                return await self._post(delivery, now, target, address)
            except (httpx.ConnectError, httpx.ConnectTimeout):
                continue
        return await self._post(delivery, now, target, addresses[-1])

    async def _post(
        self, delivery: Delivery, now: datetime, target: Target, address: Address
    ) -> int:
        body = delivery.payload.encode()
        host = f"[{address}]" if isinstance(address, ipaddress.IPv6Address) else str(address)
        default_port = 443 if target.scheme == "https" else 80
        named = target.host if ":" not in target.host else f"[{target.host}]"
        headers = {
            "host": named if target.port == default_port else f"{named}:{target.port}",
            "content-type": "application/json",
            "user-agent": self._user_agent,
            **self.settings.headers(delivery.id, now, body),
        }
        extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
        request = self._client.build_request(
            "POST",
            f"{target.scheme}://{host}:{target.port}{target.path}",
            headers=headers,
            content=body,
            extensions=extensions,
        )
        response: httpx.Response = await self._client.send(request, stream=True)
        try:
            read = 0
            async for chunk in response.aiter_raw():
                read += len(chunk)
                if read >= self.settings.max_answer_bytes:
                    break
        finally:
            await response.aclose()
        return response.status_code
