"""The HTTP adapter: :func:`create_app` wraps a :class:`~imageproc.Processor` in a Starlette app.

Endpoints (see :data:`imageproc.http.OPENAPI` for the full description)::

    POST   /upload                 store an image and queue a task          202
    GET    /status/{task_id}       the task, with signed URLs of its outputs 200
                                   (?wait=N: as soon as it is final, N s at most)
    GET    /status/{task_id}/events  the task's status as server-sent events   200
    GET    /image/{key}  (+HEAD)   a stored original or output              200 / 304
    DELETE /tasks/{task_id}        cancel                                   200
    POST   /tasks/{task_id}/retry  queue a failed or dead task again        200
    GET    /healthz  /readyz  /metrics  /openapi.json

The app does not start workers: run them in the same process from your lifespan
(``processor.start()`` / ``processor.stop()``, see ``examples/starlette_app.py``) or in separate
worker processes. It can be served on its own or mounted inside another ASGI application.

Access rules:

* With ``api_keys``, every endpoint but ``/healthz`` needs ``Authorization: Bearer <key>``; a key
  sees only its owner's tasks, and anything else is ``404`` as if it did not exist.
* ``/image`` also serves a request carrying a valid, unexpired ``expires`` + ``signature`` pair
  (the ``url`` of each output in ``/status``), with no API key, so it works in an ``<img>`` tag.
  With an API key and no signature, an owner may fetch the recorded outputs of their own tasks;
  originals (``originals/…``, content-addressed and shared by an owner's tasks) are
  served only with a signature (``/status`` gives one as ``source.url``), never by owner.
* Without ``api_keys`` everything is open and tasks have no owner.
* After ``max_auth_failures`` missing or unknown keys from one client address within any
  ``auth_failure_window``, that address is answered ``429`` (``too_many_auth_failures``, with
  ``Retry-After``) on every endpoint that needs a key, a valid key included, until the oldest of
  those failures is that old: guessing keys goes no faster than that.

This module composes the app (routes, middleware, state); the endpoints live in the modules
named for what they serve. ``import imageproc`` never loads Starlette.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING

import attrs
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.routing import Route

from imageproc._processor import Processor
from imageproc._protocols import QueueLimits
from imageproc._signing import (
    ANY_OWNER,
    PRIORITY_RANGE,
    STRONG_KEY_HINT,
    ApiKeys,
    UrlSigner,
    weak_keys,
)
from imageproc.http._errors import SecurityHeaders, guard, http_error
from imageproc.http._health import healthz, metrics, readyz
from imageproc.http._images import image
from imageproc.http._openapi import openapi
from imageproc.http._ratelimit import WindowLimit
from imageproc.http._reprocess import reprocess
from imageproc.http._service import AUTH_FAILURE_ADDRESSES, Service
from imageproc.http._tasks import cancel, events, retry, status
from imageproc.http._uploads import upload
from imageproc.http._webhooks import list_webhooks, resend_webhook, resend_webhooks

if TYPE_CHECKING:
    import prometheus_client

__all__ = ["create_app"]

logger = logging.getLogger("imageproc.http")


def create_app(
    processor: Processor,
    *,
    api_keys: Mapping[str, str] | None = None,
    signing_keys: Sequence[str] = (),
    max_upload_bytes: int = 50 * 1024 * 1024,
    max_queue_depth: int | None = None,
    max_priority: Mapping[str, int] | None = None,
    max_uploads_per_minute: int | None = None,
    url_ttl: timedelta = timedelta(hours=1),
    metrics_registry: prometheus_client.CollectorRegistry | None = None,
    allow_weak_keys: bool = False,
    max_auth_failures: int | None = 10,
    auth_failure_window: timedelta = timedelta(minutes=1),
) -> Starlette:
    """A Starlette app serving ``processor`` over HTTP (see the module docstring).

    Args:
        api_keys: owner → key; a key written ``sha256:<hex>`` is compared by its SHA-256. None
            (or empty) leaves every endpoint open and tasks without an owner.
        signing_keys: secrets for the output URLs; the first signs, all verify (rotation). Empty
            means a random key for this app only.
        max_upload_bytes: largest image accepted (also capped by the processor's image limit);
            a larger body is cut off with 413 while it streams in.
        max_queue_depth: most tasks queued at once; sets the processor's
            ``queue_limits.max_queued`` (:class:`~imageproc.QueueLimits`, checked as each task
            is recorded, retries included). Beyond it uploads and retries are answered 429
            ``queue_full`` with ``Retry-After``; a full queue also refuses uploads before their
            body is read.
        max_uploads_per_minute: most uploads one owner (without API keys: one client address)
            may make in any minute; beyond it 429 ``rate_limited`` with ``Retry-After``.
        max_priority: owner → the highest priority their uploads may ask for (above it: 403
            ``priority_not_allowed``); ``"*"`` for every owner not named, and for every client
            when there are no API keys. None: anyone may ask for all of :data:`PRIORITY_RANGE`.
            :func:`imageproc.http.parse_max_priorities` reads ``IMAGEPROC_MAX_PRIORITY``.
        url_ttl: how long signed URLs stay valid.
        metrics_registry: the Prometheus registry ``/metrics`` serves; 404 when None.
        allow_weak_keys: accept API keys and signing keys estimated under 128 bits
            of entropy, logging a warning, instead of raising
            :class:`ValueError`: for tests and development only.
        max_auth_failures: missing or unknown API keys one client address may present within
            any ``auth_failure_window``; past that its requests are answered 429
            (``too_many_auth_failures``, with ``Retry-After``) until the oldest of those
            failures is that old. None: no limit. Only with ``api_keys``; IPv6 addresses count
            by their /64.
        auth_failure_window: the sliding window ``max_auth_failures`` is counted in.

    The app starts no workers; start them in your lifespan or run worker processes.
    """
    if max_upload_bytes < 1:
        raise ValueError("max_upload_bytes must be positive")
    if url_ttl <= timedelta(0):
        raise ValueError("url_ttl must be positive")
    if max_auth_failures is not None and max_auth_failures < 1:
        raise ValueError("max_auth_failures must be at least 1, or None")
    if auth_failure_window <= timedelta(0):
        raise ValueError("auth_failure_window must be positive")
    weak = weak_keys(api_keys, signing_keys)
    if weak and not allow_weak_keys:
        raise ValueError(
            f"too weak to use: {', '.join(weak)} ({STRONG_KEY_HINT});"
            " allow_weak_keys=True allows weak keys in tests and development"
        )
    if weak:
        # Loud on purpose: a development setting that reached production must not go unseen.
        logger.warning(
            "WEAK KEYS IN USE: %s can be guessed; weak keys are allowed for tests and development"
            " only (allow_weak_keys, IMAGEPROC_ALLOW_WEAK_KEYS): never expose this service",
            ", ".join(weak),
        )
    max_priority = dict(max_priority or {})
    for owner, cap in max_priority.items():
        if isinstance(cap, bool) or not isinstance(cap, int) or cap not in PRIORITY_RANGE:
            raise ValueError(f"max_priority of {owner!r} must be an int in {PRIORITY_RANGE}")
        # A misspelt owner would leave the real one without its limit, silently.
        if owner != ANY_OWNER and api_keys and owner not in api_keys:
            raise ValueError(f"max_priority names {owner!r}, who has no API key")
    if max_queue_depth is not None:
        processor.queue_limits = attrs.evolve(
            processor.queue_limits or QueueLimits(), max_queued=max_queue_depth
        )
    service = Service(
        processor,
        api_keys=ApiKeys(api_keys) if api_keys else None,
        signer=UrlSigner(signing_keys),
        max_upload_bytes=max_upload_bytes,
        max_priority=max_priority,
        url_ttl=url_ttl,
        metrics_registry=metrics_registry,
        auth_failures=(
            WindowLimit(
                max_auth_failures,
                auth_failure_window.total_seconds(),
                max_keys=AUTH_FAILURE_ADDRESSES,
            )
            if max_auth_failures is not None
            else None
        ),
        max_uploads_per_minute=max_uploads_per_minute,
    )

    routes = [
        Route("/upload", guard(upload), methods=["POST"], name="upload"),
        Route("/status/{task_id}", guard(status), methods=["GET"], name="status"),
        Route("/status/{task_id}/events", guard(events), methods=["GET"], name="events"),
        Route("/image/{image_key:path}", guard(image), methods=["GET", "HEAD"], name="image"),
        Route("/tasks/{task_id}", guard(cancel), methods=["DELETE"], name="cancel"),
        Route("/tasks/{task_id}/retry", guard(retry), methods=["POST"], name="retry"),
        Route("/tasks/{task_id}/reprocess", guard(reprocess), methods=["POST"], name="reprocess"),
        Route("/webhooks", guard(list_webhooks), methods=["GET"], name="webhooks"),
        Route("/webhooks/resend", guard(resend_webhooks), methods=["POST"], name="resend_webhooks"),
        Route(
            "/webhooks/{delivery_id}/resend",
            guard(resend_webhook),
            methods=["POST"],
            name="resend_webhook",
        ),
        Route("/healthz", guard(healthz), methods=["GET"], name="healthz"),
        Route("/readyz", guard(readyz), methods=["GET"], name="readyz"),
        Route("/metrics", guard(metrics), methods=["GET"], name="metrics"),
        Route("/openapi.json", guard(openapi), methods=["GET"], name="openapi"),
    ]

    app = Starlette(
        routes=routes,
        exception_handlers={HTTPException: http_error},
        middleware=[Middleware(SecurityHeaders)],
    )
    app.state.imageproc = service
    return app
