"""The state shared by the endpoints of one app, :class:`Service` (``app.state.imageproc``):
who is asking (API keys, failed authentications counted by address), which tasks they see, the
URLs and task JSON the answers carry, the upload rate and queue-depth checks, and the waiting
of long-polls and streams (one :class:`~imageproc.delivery._asyncwait.AsyncWaiters`, with its
one sweep per event loop, for every request of the app).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import math
import threading
import time
from collections.abc import Iterator, Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Final

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from imageproc._processor import Processor
from imageproc._protocols import queue_full
from imageproc._signing import ANY_OWNER, PRIORITY_RANGE, ApiKeys, UrlSigner
from imageproc._task import Task
from imageproc._taskjson import task_json
from imageproc.delivery._asyncwait import AsyncWaiters
from imageproc.delivery._completions import Completions
from imageproc.errors import TaskNotFound
from imageproc.http._batching import SubmitBatcher
from imageproc.http._errors import ApiError, retry_after
from imageproc.http._ratelimit import WindowLimit

if TYPE_CHECKING:
    import prometheus_client

#: How long a queue depth reading is reused, so back-pressure costs no query per upload.
QUEUE_DEPTH_TTL: Final = 0.5
#: Client addresses whose failed authentications are remembered at once; past it the address
#: that failed longest ago is forgotten, so a flood of addresses costs memory only up to this.
AUTH_FAILURE_ADDRESSES: Final = 10_000


def _client_address(request: Request) -> str | None:
    """Who failures are counted against: the client's address, IPv6 by its /64 (one host
    commonly holds a whole /64, so single addresses would not slow it), or None when the server
    gives no address (a Unix socket)."""
    if request.client is None or not request.client.host:
        return None
    host = request.client.host
    try:
        address = ipaddress.ip_address(host)
    except ValueError:  # not an IP address (a test client's name): counted as it is
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:  # ::ffff:192.0.2.1 is that IPv4 client
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class Service:
    """The state shared by the endpoints of one app."""

    def __init__(
        self,
        processor: Processor,
        *,
        api_keys: ApiKeys | None,
        signer: UrlSigner,
        max_upload_bytes: int,
        max_priority: Mapping[str, int],
        url_ttl: timedelta,
        metrics_registry: prometheus_client.CollectorRegistry | None,
        auth_failures: WindowLimit | None,
        max_uploads_per_minute: int | None = None,
    ) -> None:
        self.processor = processor
        self.auth_failures = auth_failures
        self.api_keys = api_keys
        self.signer = signer
        # submit() refuses anything over the image limit too (as a 415); refusing it here, while
        # the body streams in, makes it a 413 and keeps the bytes off the server.
        self.max_upload_bytes = min(max_upload_bytes, processor.image_limits.max_bytes)
        self.url_ttl = url_ttl
        self.max_priority = dict(max_priority)
        self.metrics_registry = metrics_registry
        self._depth: tuple[float, int] | None = None
        self.batcher = SubmitBatcher(processor)
        self.upload_rate = (
            None if max_uploads_per_minute is None else WindowLimit(max_uploads_per_minute, 60.0)
        )
        #: Set by :meth:`stop_waiting`: long-polls answer at once.
        self.stopping = False
        #: The events of the long-polls open now, each with its loop: set on a stop.
        self._stop_events: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()
        self._stop_lock = threading.Lock()
        completions = getattr(processor.repository, "completions", None)
        #: The waiting of every long-poll and stream: woken by the repository's completion
        #: push, the ends only reading finds read by one sweep per loop for all of them.
        self.waiters = AsyncWaiters(
            self._get,
            repository=processor.repository,
            completions=completions if isinstance(completions, Completions) else None,
            run_blocking=run_in_threadpool,
        )

    def _get(self, task_id: str) -> Task:
        # Through the attribute at each call (not a bound method kept from construction).
        return self.processor.get(task_id)

    def stop_waiting(self) -> None:
        """The server is stopping: answer every long-poll now with its task as it is, and any
        that comes later at once (a stop would otherwise wait up to a minute for them). Call it
        from any thread, but not in a signal handler, as it takes a lock: from there,
        ``loop.call_soon_threadsafe(service.stop_waiting)``."""
        self.stopping = True
        with self._stop_lock:
            open_polls = list(self._stop_events)
        for loop, event in open_polls:
            with contextlib.suppress(RuntimeError):  # its loop is closed: nobody waits there
                loop.call_soon_threadsafe(event.set)

    @contextlib.contextmanager
    def until_stopped(self) -> Iterator[asyncio.Event]:
        """For a ``with`` block on the event loop: an event set when the server stops (set
        already if it is stopping)."""
        entry = (asyncio.get_running_loop(), asyncio.Event())
        with self._stop_lock:
            self._stop_events.add(entry)
        try:
            if self.stopping:  # checked once registered: a stop in between is not missed
                entry[1].set()
            yield entry[1]
        finally:
            with self._stop_lock:
                self._stop_events.discard(entry)

    # -- access ---------------------------------------------------------------------------

    def authenticate(self, request: Request) -> str | None:
        """The owner behind the request's API key; None when the app has no keys (open)."""
        if self.api_keys is None:
            return None
        failures = self.auth_failures
        address = _client_address(request) if failures is not None else None
        if failures is not None and address is not None:
            # Checked before the key, and whatever the key: were a valid key let through, the
            # answer would still confirm a right guess.
            left = failures.blocked_for(address)
            if left is not None:
                raise ApiError(
                    429,
                    "too_many_auth_failures",
                    "too many requests without a valid API key from this address; try again later",
                    retry_after(left),
                )
        owner = self._presented_owner(request)
        if owner is None:
            if failures is not None and address is not None:
                failures.count(address)
            raise ApiError(
                401,
                "unauthorized",
                "a valid API key is required: Authorization: Bearer <key>",
                {"WWW-Authenticate": 'Bearer realm="imageproc"'},
            )
        return owner

    def _presented_owner(self, request: Request) -> str | None:
        assert self.api_keys is not None
        return self.api_keys.owner_of_authorization(request.headers.get("authorization", ""))

    def priority_cap(self, owner: str | None) -> int:
        """The highest priority ``owner`` (None: a client of an app without keys) may ask for."""
        default = self.max_priority.get(ANY_OWNER, PRIORITY_RANGE.stop - 1)
        return default if owner is None else self.max_priority.get(owner, default)

    def visible(self, task: Task, owner: str | None) -> bool:
        return self.api_keys is None or task.owner == owner

    async def task_for(self, task_id: str, owner: str | None) -> Task:
        if not task_id or len(task_id) > 64:
            raise TaskNotFound("no task with this id")
        task = await run_in_threadpool(self.processor.get, task_id)
        if not self.visible(task, owner):
            # Someone else's task: indistinguishable from a missing one.
            raise TaskNotFound("no task with this id")
        return task

    # -- presentation -------------------------------------------------------------------------

    def url_for(self, request: Request, name: str, **params: str) -> str:
        """The absolute URL of one of this app's own routes.

        From this app's router (``request.app`` is the innermost application), not
        ``request.url_for``: that searches the router of the outermost application, where a
        named ``Mount`` renames these routes (``images:status``) and an application route of the
        same name would win. ``root_path`` holds the prefix this app is mounted (or proxied)
        under.
        """
        app: Starlette = request.app
        path = app.router.url_path_for(name, **params)
        prefix = str(request.scope.get("root_path", "")).rstrip("/")
        return str(request.url.replace(path=prefix + path, query=""))

    def signed_url(self, request: Request, key: str) -> str:
        # Round the expiry up to a whole minute, so URLs minted close together are identical
        # and caches in front of the app see fewer distinct URLs.
        expires = math.ceil((time.time() + self.url_ttl.total_seconds()) / 60) * 60
        signature = self.signer.sign(key, expires)
        base = self.url_for(request, "image", image_key=key)
        return f"{base}?expires={expires}&signature={signature}"

    def task_json(self, request: Request, task: Task) -> dict[str, Any]:
        """``task`` as ``GET /status`` shows it (:func:`imageproc._taskjson.task_json`)."""
        return task_json(task, url=lambda key: self.signed_url(request, key))

    def check_upload_rate(self, request: Request, owner: str | None) -> None:
        """429 if ``owner`` (without keys: the client's address) is past its uploads a minute."""
        if self.upload_rate is None:
            return
        who = owner if owner is not None else (_client_address(request) or "")
        wait = self.upload_rate.hit(who)
        if wait is not None:
            raise ApiError(
                429,
                "rate_limited",
                f"more than {self.upload_rate.limit} uploads in a minute; try again later",
                retry_after(wait),
            )

    async def check_queue_depth(self) -> None:
        """A cheap early refusal while the queue is clearly full, before the body is read (the
        reading may be half a second old: the check that counts is made as the task is
        recorded, :class:`~imageproc.QueueLimits`)."""
        limits = self.processor.queue_limits
        if limits is None or limits.max_queued is None:
            return
        now = time.monotonic()
        if self._depth is None or now - self._depth[0] > QUEUE_DEPTH_TTL:
            stats = await run_in_threadpool(self.processor.repository.queue_stats)
            self._depth = (now, stats.queued)
        if self._depth[1] >= limits.max_queued:
            raise queue_full(limits.max_queued)


def service_of(request: Request) -> Service:
    """The :class:`Service` of the app serving ``request`` (``request.app`` is the innermost
    application, this one even when it is mounted inside another)."""
    service: Service = request.app.state.imageproc
    return service
