"""HTTP requests to an address that was checked, not to a name: the one way imageproc connects
out (webhooks, and images fetched from URLs).

A :class:`~imageproc._addresses.Target`'s host is resolved once and every address checked
(:class:`~imageproc._addresses.AddressPolicy`); the request then goes to one of those addresses
itself, and names the host only in ``Host`` and, over TLS, in SNI and the certificate check.
Nothing resolves the name a second time, so DNS rebinding cannot point the connection
elsewhere. The client follows no redirect (the caller checks each hop itself), keeps no
connection (one kept for one name could carry a request for another name on that address), and
takes no proxy from the environment.
"""

from __future__ import annotations

import functools
import ipaddress
import ssl
from typing import TYPE_CHECKING

from imageproc._addresses import Address, Target

if TYPE_CHECKING:
    import httpx

__all__ = ["new_client", "send_to_any"]


def new_client(*, connect_timeout: float, timeout: float) -> httpx.AsyncClient:
    """An HTTP client for pinned requests: each read, write and connect bounded."""
    import httpx  # here, not at import: only processes that connect out need it

    return httpx.AsyncClient(
        verify=_tls(),
        follow_redirects=False,
        timeout=httpx.Timeout(timeout, connect=connect_timeout),
        limits=httpx.Limits(max_keepalive_connections=0),
        trust_env=False,
    )


@functools.cache
def _tls() -> ssl.SSLContext:
    """The TLS settings every client shares: built once, since loading the certificate
    authorities takes tens of milliseconds (a context is safe to share between threads)."""
    import httpx

    return httpx.create_ssl_context()


async def send_to_any(
    client: httpx.AsyncClient,
    method: str,
    target: Target,
    addresses: list[Address],
    *,
    headers: dict[str, str],
    content: bytes | None = None,
) -> httpx.Response:
    """``method`` ``target`` at the first of ``addresses`` (all checked) that takes the
    connection (a name may resolve to an IPv6 and an IPv4 address, and the server listen on
    one); the response streamed: read it, then ``aclose`` it."""
    import httpx

    for address in addresses[:-1]:
        try:
            return await _send(client, method, target, address, headers, content)
        except (httpx.ConnectError, httpx.ConnectTimeout):
            continue
    return await _send(client, method, target, addresses[-1], headers, content)


async def _send(
    client: httpx.AsyncClient,
    method: str,
    target: Target,
    address: Address,
    headers: dict[str, str],
    content: bytes | None,
) -> httpx.Response:
    host = f"[{address}]" if isinstance(address, ipaddress.IPv6Address) else str(address)
    default_port = 443 if target.scheme == "https" else 80
    named = target.host if ":" not in target.host else f"[{target.host}]"
    request = client.build_request(
        method,
        f"{target.scheme}://{host}:{target.port}{target.path}",
        headers={
            "host": named if target.port == default_port else f"{named}:{target.port}",
            **headers,
        },
        content=content,
        extensions={"sni_hostname": target.host} if target.scheme == "https" else {},
    )
    return await client.send(request, stream=True)
