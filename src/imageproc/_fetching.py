"""Fetching an image from a URL, safely: what ``Processor.submit_url`` (and the form field
``url`` of ``POST /upload``) do before the image is checked and stored like an upload.

The fetch happens at submit, in the caller's thread (an HTTP request's in a worker thread), not
in a worker later: the image is then checked (format, size, pixels) before anything is stored
or recorded, exactly as an upload is, and the caller hears at once what was wrong with it (a
404 at the source, a page that is not an image, a file too large) instead of finding a failed
task later. The cost is the caller's wait, which the timeouts bound.

Every hop is checked like a webhook's URL (:class:`~imageproc._addresses.AddressPolicy`: only
``http`` and ``https``, no address that is not public unless allowlisted, the host resolved once
and the connection made to the checked address), and, when :attr:`Fetching.hosts` names any,
the host must be one of them. At most ``max_redirects`` redirects are followed, each checked
the same way; the body is read up to the image size limit and no further; the whole fetch,
redirects included, has one deadline.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final
from urllib.parse import urljoin

import attrs

from imageproc.__version__ import __version__
from imageproc._addresses import AddressPolicy, Target, as_policy
from imageproc._pinned import new_client, send_to_any
from imageproc.errors import FetchFailed, UnsafeURL

__all__ = ["Fetching", "fetch"]

_REDIRECTS: Final = frozenset({301, 302, 303, 307, 308})


def _hosts(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = value.replace(",", " ").split()
    return tuple(str(host).lower().rstrip(".") for host in value)


@attrs.frozen(kw_only=True)
class Fetching:
    """How images are fetched from URLs: pass one as ``Processor(…, fetching=Fetching(…))``
    (the defaults fetch from any public address)."""

    #: Hosts and networks fetches may reach though they are not public: an
    #: :class:`AddressPolicy`, or its entries (``"10.0.0.0/8"``, ``"images.internal"``).
    allow: AddressPolicy = attrs.field(factory=AddressPolicy, converter=as_policy)
    #: If any, the only hosts images are fetched from (a deployment that fetches only from its
    #: own CDN): exact names, case-insensitive; every redirect must stay among them too.
    hosts: tuple[str, ...] = attrs.field(default=(), converter=_hosts)
    #: Seconds to connect to a server...
    connect_timeout: float = attrs.field(default=5.0, validator=attrs.validators.gt(0))
    #: ...and for the whole fetch, redirects and the body included.
    timeout: float = attrs.field(default=30.0, validator=attrs.validators.gt(0))
    #: Redirects followed at most.
    max_redirects: int = 3

    def check(self, url: str) -> Target:
        """``url`` checked without connecting: :class:`~imageproc.UnsafeURL` if it may not be
        fetched."""
        target = self.allow.check_url(url, what="image URL")
        if self.hosts and target.host not in self.hosts:
            raise UnsafeURL(
                f"image URL {target.scheme}://{target.host}: not one of the hosts images are"
                f" fetched from ({', '.join(self.hosts)})"
            )
        return target


def fetch(url: str, settings: Fetching, *, max_bytes: int) -> bytes:
    """The body at ``url``, fetched under ``settings``, at most ``max_bytes`` long.
    :class:`~imageproc.UnsafeURL` for a URL (or a redirect) that may not be fetched,
    :class:`~imageproc.FetchFailed` for one that could not be (transient when the server failed
    or did not answer in time). Runs an event loop of its own (in a thread of its own if this
    one runs a loop already: a blocking call from a coroutine still works, but blocks that loop;
    ``AsyncProcessor.submit_url`` does not)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(_fetch(url, settings, max_bytes))
    with ThreadPoolExecutor(1, thread_name_prefix="imageproc-fetch") as pool:
        return pool.submit(asyncio.run, _fetch(url, settings, max_bytes)).result()


async def _fetch(url: str, settings: Fetching, max_bytes: int) -> bytes:
    target = settings.check(url)  # before the client exists: a refused URL costs nothing
    client = new_client(connect_timeout=settings.connect_timeout, timeout=settings.timeout)
    try:
        async with asyncio.timeout(settings.timeout):
            for _ in range(settings.max_redirects + 1):
                addresses = await settings.allow.resolve_async(target)
                response = await send_to_any(client, "GET", target, addresses, headers=_HEADERS)
                try:
                    if response.status_code in _REDIRECTS and "location" in response.headers:
                        location = urljoin(target.url, response.headers["location"])
                        target = settings.check(location)
                        continue
                    if not 200 <= response.status_code < 300:
                        raise FetchFailed(
                            f"{_origin(target)} answered {response.status_code}",
                            transient=response.status_code >= 500
                            or response.status_code in (408, 429),
                        )
                    return await _body(response, target, max_bytes)
                finally:
                    await response.aclose()
            raise FetchFailed(f"{_origin(target)}: more than {settings.max_redirects} redirects")
    except TimeoutError:
        raise FetchFailed(
            f"{_origin(target)} did not answer within {settings.timeout:g} s", transient=True
        ) from None
    except (UnsafeURL, FetchFailed):
        raise
    except Exception as error:  # the network's errors: one clear message, no traceback
        raise FetchFailed(
            f"could not fetch from {_origin(target)} ({type(error).__name__})", transient=True
        ) from error
    finally:
        await client.aclose()


async def _body(response: Any, target: Target, max_bytes: int) -> bytes:
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise FetchFailed(f"{_origin(target)}: {declared} bytes, over the limit of {max_bytes}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_raw():
        size += len(chunk)
        if size > max_bytes:
            raise FetchFailed(f"{_origin(target)}: more than the limit of {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _origin(target: Target) -> str:
    # Only scheme, host and port: a URL's path and query may hold a token.
    return f"{target.scheme}://{target.host}:{target.port}"


_HEADERS: Final = {
    "user-agent": f"imageproc/{__version__} (image fetch)",
    "accept": "image/*",
    # The bytes as stored: a compressed body could be made to expand past the size limit
    # while only the compressed bytes are counted.
    "accept-encoding": "identity",
}
