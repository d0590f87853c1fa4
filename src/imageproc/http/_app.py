"""The HTTP adapter: :func:`create_app` wraps a :class:`~imageproc.Processor` in a Starlette app.

Endpoints (see :data:`OPENAPI` for the full description)::

    POST   /upload                 store an image and queue a task          202
    GET    /status/{task_id}       the task, with signed URLs of its outputs 200
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

This module is the only one that imports Starlette; ``import imageproc`` never loads it.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import math
import re
import secrets
import tempfile
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, BinaryIO, Final

import anyio
import attrs
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, MutableHeaders, UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from imageproc import _keys as keyrules
from imageproc._errors import (
    IllegalTransition,
    ImageprocError,
    ImageTooLarge,
    InvalidImage,
    InvalidInput,
    InvalidKey,
    InvalidPipeline,
    ObjectNotFound,
    QueueFull,
    TaskNotFound,
)
from imageproc._processor import Processor, Upload
from imageproc._protocols import QueueLimits, queue_full
from imageproc._signing import (
    ANY_OWNER,
    PRIORITY_RANGE,
    STRONG_KEY_HINT,
    ApiKeys,
    UrlSigner,
    parse_expires,
    weak_keys,
)
from imageproc._task import Task
from imageproc._taskjson import rfc3339, task_json
from imageproc.config import parse_whole_number
from imageproc.http._batching import SubmitBatcher
from imageproc.http._ratelimit import WindowLimit
from imageproc.pipeline._pipeline import Pipeline

if TYPE_CHECKING:
    import prometheus_client

__all__ = ["OPENAPI", "create_app"]

logger = logging.getLogger("imageproc.http")

#: Room for the multipart envelope (boundaries, part headers, the small fields) on top of the
#: image itself, so an image of exactly ``max_upload_bytes`` still fits in a form.
FORM_OVERHEAD: Final = 64 * 1024
#: Bytes kept in memory before an upload spools to a temporary file.
SPOOL_BYTES: Final = 1024 * 1024
#: Bytes per read when streaming a stored object out.
CHUNK_BYTES: Final = 256 * 1024
#: Seconds a client is told to wait after a 429 or a 503.
RETRY_AFTER: Final = 5
#: How long a queue depth reading is reused, so back-pressure costs no query per upload.
QUEUE_DEPTH_TTL: Final = 0.5
#: How long /readyz waits for the backends before saying "not ready".
READY_TIMEOUT: Final = 5.0
IMMUTABLE: Final = "max-age=31536000, immutable"
#: Client addresses whose failed authentications are remembered at once; past it the address
#: that failed longest ago is forgotten, so a flood of addresses costs memory only up to this.
AUTH_FAILURE_ADDRESSES: Final = 10_000
#: Headers on every response of the app. Error bodies echo what the client sent and originals
#: are whatever was uploaded: no browser may sniff either into HTML, or run what it finds.
SECURITY_HEADERS: Final[Mapping[str, str]] = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; sandbox",
}

_Endpoint = Callable[[Request], Awaitable[Response]]
_DIGITS: Final = re.compile(r"[0-9]{1,19}")


class ApiError(Exception):
    """An error answer: status, stable code, a message safe to show, and extra headers."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


class _TooLarge(Exception):
    """The request body passed its limit while streaming in."""


class _SecurityHeaders:
    """ASGI middleware adding :data:`SECURITY_HEADERS` to every response, Starlette's own 404s
    and 405s included; a header the endpoint set itself is left as it is."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    if name not in headers:
                        headers.append(name, value)
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _error_response(status: int, code: str, message: str, headers: Mapping[str, str]) -> Response:
    return JSONResponse(
        {"error": {"code": code, "message": message}}, status_code=status, headers=dict(headers)
    )


def _map_error(error: ImageprocError) -> ApiError:
    """The HTTP answer for one of imageproc's errors; 5xx answers never carry its text."""
    if isinstance(error, TaskNotFound):
        return ApiError(404, error.code, "no task with this id")
    if isinstance(error, ObjectNotFound):
        return ApiError(404, "not_found", "no image under this key")
    if isinstance(error, InvalidKey):
        return ApiError(400, error.code, error.message)
    if isinstance(error, ImageTooLarge):
        # An image, readable, of a size the limits refuse: not "unsupported media" (415), and
        # not the body's bytes (413, which the upload limit answers).
        return ApiError(422, error.code, error.message)
    if isinstance(error, InvalidImage):
        return ApiError(415, error.code, error.message)
    if isinstance(error, InvalidPipeline | InvalidInput):
        return ApiError(422, error.code, error.message)
    if isinstance(error, IllegalTransition):
        return ApiError(409, error.code, error.message)
    if isinstance(error, QueueFull):
        return ApiError(429, error.code, error.message, {"Retry-After": str(RETRY_AFTER)})
    if error.transient:
        # Driver messages may name hosts, files or SQL: say what is wrong, not how.
        return ApiError(
            503,
            error.code,
            "a backend is temporarily unavailable; try again shortly",
            {"Retry-After": str(RETRY_AFTER)},
        )
    logger.error("request failed: %s: %s", error.code, error.message)
    return ApiError(500, "internal_error", "the server could not complete the request")


def _guarded(endpoint: _Endpoint) -> _Endpoint:
    """Turn every exception of ``endpoint`` into a JSON error answer, never a traceback."""

    async def guarded(request: Request) -> Response:
        try:
            return await endpoint(request)
        except ApiError as error:
            return _error_response(error.status, error.code, error.message, error.headers)
        except ImageprocError as error:
            api = _map_error(error)
            return _error_response(api.status, api.code, api.message, api.headers)
        except ClientDisconnect:
            # The client went away while its body was being read (an upload cut short, or dropped
            # for sending it too slowly): nothing is wrong here and nobody is left to answer. The
            # response only feeds the access log.
            logger.debug("client disconnected during %s %s", request.method, request.url.path)
            return _error_response(
                400, "client_disconnected", "the client closed the connection mid-request", {}
            )
        except Exception:
            logger.exception("unhandled error in %s %s", request.method, request.url.path)
            return _error_response(
                500, "internal_error", "the server could not complete the request", {}
            )

    guarded.__name__ = endpoint.__name__
    guarded.__doc__ = endpoint.__doc__
    return guarded


def _retry_after(seconds: float) -> dict[str, str]:
    """The ``Retry-After`` header for a wait of ``seconds``: whole seconds, at least one."""
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


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


class _Service:
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
                    _retry_after(left),
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
                _retry_after(wait),
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


# -- request bodies ---------------------------------------------------------------------------


async def _limited(request: Request, limit: int) -> AsyncGenerator[bytes, None]:
    """The request body, raising :class:`_TooLarge` as soon as more than ``limit`` bytes came."""
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise _TooLarge
        yield chunk


def _check_length(request: Request, limit: int) -> None:
    declared = request.headers.get("content-length")
    if declared is None:
        return
    # RFC 9110: 1*DIGIT, ASCII. int() would also take "+5", "1_0" and other scripts' digits.
    if not _DIGITS.fullmatch(declared.strip()):
        raise ApiError(400, "bad_request", "Content-Length is not a number")
    if int(declared) > limit:
        raise _TooLarge


def _too_large(limit: int) -> ApiError:
    # "Connection: close" makes the server drop the connection after answering instead of
    # reading (and discarding) the rest of the body to keep the connection alive.
    return ApiError(
        413,
        "too_large",
        f"the upload is larger than the limit of {limit} bytes",
        {"Connection": "close"},
    )


async def _read_form(request: Request, service: _Service) -> FormData:
    parser = MultiPartParser(
        request.headers,
        _limited(request, service.max_upload_bytes + FORM_OVERHEAD),
        max_files=1,
        max_fields=8,
        max_part_size=64 * 1024,
    )
    try:
        return await parser.parse()
    except MultiPartException as error:
        raise ApiError(400, "bad_request", f"malformed multipart body: {error.message}") from None


async def _spool_body(request: Request, limit: int) -> UploadFile:
    spool: Any = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)  # noqa: SIM115
    upload = UploadFile(spool, size=0)  # counted as it is written
    try:
        # UploadFile.write moves to a thread once the spool has rolled over to disk.
        async for chunk in _limited(request, limit):
            await upload.write(chunk)
        await upload.seek(0)
    except BaseException:
        await upload.close()
        raise
    return upload


def _pipeline_spec(
    processor: Processor, pipeline: str | None, preset: str | None
) -> Pipeline | str | None:
    if pipeline is not None and preset is not None:
        raise InvalidPipeline("give either a pipeline or a preset, not both")
    if preset is not None:
        if preset not in processor.presets:
            names = ", ".join(sorted(processor.presets)) or "none are configured"
            raise InvalidPipeline(f"unknown preset {preset!r} (presets: {names})")
        return preset
    if pipeline is None or not pipeline.strip():
        return None
    text = pipeline.strip()
    if text.startswith("{"):
        return Pipeline.from_json_text(text)
    return text


def _priority(value: str | None, cap: int) -> int:
    """The priority asked for, within :data:`PRIORITY_RANGE` and at most ``cap``; none asked
    for is 0, or ``cap`` if that is lower, so a key held below 0 can upload without asking."""
    if value is None or not value.strip():
        return min(0, cap)
    try:
        priority = parse_whole_number(value)
    except ValueError:
        raise ApiError(
            422, "invalid_priority", "priority must be a whole number in ASCII digits"
        ) from None
    if priority not in PRIORITY_RANGE:
        raise ApiError(
            422,
            "invalid_priority",
            f"priority must be between {PRIORITY_RANGE.start} and {PRIORITY_RANGE.stop - 1}",
        )
    if priority > cap:
        # Well-formed, but more than this credential is allowed: a permission, hence 403.
        raise ApiError(
            403,
            "priority_not_allowed",
            f"priority {priority} is above the most this client may ask for ({cap})",
        )
    return priority


def _text_field(form: FormData, name: str) -> str | None:
    value = form.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ApiError(422, "invalid_field", f"the {name!r} field must be text, not a file")
    return value


# -- the app ------------------------------------------------------------------------------------


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
            :func:`imageproc._signing.parse_max_priorities` reads ``IMAGEPROC_MAX_PRIORITY``.
        url_ttl: how long signed URLs stay valid.
        metrics_registry: the Prometheus registry ``/metrics`` serves; 404 when None.
        allow_weak_keys: accept API keys and signing keys estimated under 128 bits
            (:func:`imageproc._signing.key_bits`), logging a warning, instead of raising
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
    service = _Service(
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

    async def upload(request: Request) -> Response:
        owner = service.authenticate(request)
        service.check_upload_rate(request, owner)
        await service.check_queue_depth()
        limit = service.max_upload_bytes
        content_type = request.headers.get("content-type", "").lower()
        image: UploadFile | None = None
        form: FormData | None = None
        try:
            try:
                if content_type.startswith("multipart/form-data"):
                    _check_length(request, limit + FORM_OVERHEAD)
                    form = await _read_form(request, service)
                    field = form.get("image")
                    if not isinstance(field, UploadFile):
                        raise ApiError(
                            422,
                            "missing_image",
                            "the form needs the image as a file in field 'image'",
                        )
                    image = field
                    if image.size is not None and image.size > limit:
                        raise _TooLarge
                    pipeline = _text_field(form, "pipeline")
                    preset = _text_field(form, "preset")
                    priority_text = _text_field(form, "priority")
                elif content_type.startswith("image/"):
                    _check_length(request, limit)
                    image = await _spool_body(request, limit)
                    pipeline = request.query_params.get("pipeline")
                    preset = request.query_params.get("preset")
                    priority_text = request.query_params.get("priority")
                else:
                    raise ApiError(
                        415,
                        "unsupported_media_type",
                        "send multipart/form-data with the image in field 'image',"
                        " or an image/* body",
                    )
            except _TooLarge:
                raise _too_large(limit) from None
            spec = _pipeline_spec(processor, pipeline, preset)
            priority = _priority(priority_text, service.priority_cap(owner))
            task = await service.batcher.submit(
                Upload(image.file, spec, priority=priority, owner=owner), size=image.size or 0
            )
        finally:
            # Closing deletes the spooled temporary files (the form's, or the raw body's).
            if form is not None:
                await form.close()
            elif image is not None:
                await image.close()
        status_url = service.url_for(request, "status", task_id=task.id)
        return JSONResponse(
            {
                "id": task.id,
                "status": str(task.status),
                "status_url": status_url,
                "created_at": rfc3339(task.created_at),
            },
            status_code=202,
            headers={"Location": status_url},
        )

    async def status(request: Request) -> Response:
        owner = service.authenticate(request)
        task = await service.task_for(request.path_params["task_id"], owner)
        return JSONResponse(service.task_json(request, task), headers={"Cache-Control": "no-store"})

    async def cancel(request: Request) -> Response:
        owner = service.authenticate(request)
        task = await service.task_for(request.path_params["task_id"], owner)
        changed = await run_in_threadpool(processor.cancel, task.id)
        return JSONResponse(service.task_json(request, changed))

    async def retry(request: Request) -> Response:
        owner = service.authenticate(request)
        task = await service.task_for(request.path_params["task_id"], owner)
        changed = await run_in_threadpool(processor.retry, task.id)
        return JSONResponse(service.task_json(request, changed))

    async def image(request: Request) -> Response:
        key = request.path_params["image_key"]
        _check_raw_path(request, key)
        keyrules.validate_key(key)
        kind = key.split("/", 1)[0]
        if kind not in ("outputs", "originals"):
            raise ObjectNotFound("not an image key")
        cache = f"public, {IMMUTABLE}"
        if "signature" in request.query_params or "expires" in request.query_params:
            now = time.time()
            expires = _signed_expiry(request, service.signer, key, now)
            # A cache must stop serving the image when the URL stops working, not a year on:
            # the signature's expiry is the most it may keep it (a rotated-out key ends it
            # earlier, which no header can say).
            cache = f"public, max-age={max(0, math.floor(expires - now))}, immutable"
        elif service.api_keys is not None:
            owner = service.authenticate(request)
            if kind != "outputs":
                raise ObjectNotFound("no image under this key")
            # Fetched with a credential: no shared cache may keep it.
            cache = f"private, {IMMUTABLE}"
            await _owned_output(service, key, owner)

        info = await run_in_threadpool(processor.storage.stat, key)
        etag = _etag(key, info.size)
        headers = {"ETag": etag, "Cache-Control": cache, "Content-Length": str(info.size)}
        if kind == "originals":
            # An original is whatever was uploaded, checked only as far as its header: a browser
            # that opens its URL saves it rather than renders it (an <img> shows it all the same).
            headers["Content-Disposition"] = "attachment"
        if _etag_matches(request.headers.get("if-none-match"), etag):
            del headers["Content-Length"]
            return Response(status_code=304, headers=headers)
        if request.method == "HEAD":
            return Response(status_code=200, headers=headers, media_type=info.content_type)
        stream = await run_in_threadpool(processor.open, key)
        return StreamingResponse(_chunks(stream), headers=headers, media_type=info.content_type)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"}, headers={"Cache-Control": "no-store"})

    async def readyz(request: Request) -> Response:
        service.authenticate(request)

        def probe() -> None:
            processor.repository.queue_stats()
            processor.storage.exists("healthz-probe")

        try:
            with anyio.fail_after(READY_TIMEOUT):
                await anyio.to_thread.run_sync(probe, abandon_on_cancel=True)
        except Exception as error:
            logger.warning("not ready: %s", type(error).__name__)
            raise ApiError(
                503,
                "not_ready",
                "the task database or storage is unreachable",
                {"Retry-After": str(RETRY_AFTER)},
            ) from None
        return JSONResponse({"status": "ready"}, headers={"Cache-Control": "no-store"})

    async def metrics(request: Request) -> Response:
        service.authenticate(request)
        registry = service.metrics_registry
        if registry is None:
            raise ApiError(404, "not_found", "metrics are not enabled")
        import prometheus_client

        # Collectors may query the database (queue depth): off the event loop.
        body = await run_in_threadpool(prometheus_client.generate_latest, registry)
        return Response(body, media_type=prometheus_client.CONTENT_TYPE_LATEST)

    async def openapi(request: Request) -> Response:
        service.authenticate(request)
        return JSONResponse(OPENAPI)

    routes = [
        Route("/upload", _guarded(upload), methods=["POST"], name="upload"),
        Route("/status/{task_id}", _guarded(status), methods=["GET"], name="status"),
        Route("/image/{image_key:path}", _guarded(image), methods=["GET", "HEAD"], name="image"),
        Route("/tasks/{task_id}", _guarded(cancel), methods=["DELETE"], name="cancel"),
        Route("/tasks/{task_id}/retry", _guarded(retry), methods=["POST"], name="retry"),
        Route("/healthz", _guarded(healthz), methods=["GET"], name="healthz"),
        Route("/readyz", _guarded(readyz), methods=["GET"], name="readyz"),
        Route("/metrics", _guarded(metrics), methods=["GET"], name="metrics"),
        Route("/openapi.json", _guarded(openapi), methods=["GET"], name="openapi"),
    ]

    async def http_error(request: Request, exc: Exception) -> Response:
        # Unknown routes and wrong methods come from Starlette itself: answer them in JSON too.
        assert isinstance(exc, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _error_response(exc.status_code, code, str(exc.detail), dict(exc.headers or {}))

    app = Starlette(
        routes=routes,
        exception_handlers={HTTPException: http_error},
        middleware=[Middleware(_SecurityHeaders)],
    )
    app.state.imageproc = service
    return app


def _check_raw_path(request: Request, key: str) -> None:
    """Refuse a key that reached us percent-encoded (``%2e%2e``, ``%2f``, ``%00``…).

    Starlette matches routes on the decoded path; valid keys never need encoding, so the raw
    path must end with the key exactly as decoded, or someone is smuggling characters in.
    """
    raw = request.scope.get("raw_path")
    if raw is None:
        return
    raw_path = bytes(raw).split(b"?", 1)[0]
    if not raw_path.endswith(b"/image/" + key.encode("utf-8", "surrogateescape")):
        raise InvalidKey("image keys must not be percent-encoded")


def _signed_expiry(request: Request, signer: UrlSigner, key: str, now: float) -> int:
    """The expiry of the request's valid signature for ``key``; else a 403.

    Only the URL exactly as :meth:`_Service.signed_url` writes it passes: each query parameter
    once (with a repeat, which one counts would depend on the parser), ``expires`` and
    ``signature`` in their canonical text and not percent-encoded. Any other spelling of a valid
    signature would be another URL for the same image: another cache key, and a way around a
    filter on the exact URL.
    """
    params = request.query_params.multi_items()
    if len({name for name, _ in params}) != len(params):
        raise ApiError(
            403, "invalid_signature", "a signed URL carries each query parameter only once"
        )
    expires_text = request.query_params.get("expires", "")
    signature = request.query_params.get("signature", "")
    expires = parse_expires(expires_text)
    raw = bytes(request.scope.get("query_string", b"")).split(b"&")
    # verify() first: past it, both values are known to be ASCII.
    if (
        expires is None
        or not signer.verify(key, expires, signature, now=now)
        or f"expires={expires_text}".encode() not in raw
        or f"signature={signature}".encode() not in raw
    ):
        raise ApiError(403, "invalid_signature", "the URL's signature is invalid or has expired")
    return expires


async def _owned_output(service: _Service, key: str, owner: str | None) -> None:
    """Pass if ``key`` is a recorded output of a task ``owner`` may see; else 404."""
    parts = key.split("/")
    if len(parts) != 3:
        raise ObjectNotFound("no image under this key")
    try:
        task = await service.task_for(parts[1], owner)
    except TaskNotFound:
        raise ObjectNotFound("no image under this key") from None
    if key not in {output.key for output in task.outputs}:
        raise ObjectNotFound("no image under this key")


def _etag(key: str, size: int) -> str:
    """A strong validator from the key and the size, without reading the content.

    Sound because stored objects do not change under a key: originals are content-addressed (the
    key holds their SHA-256), and an output is written only by attempts of its own task, all
    rendering the same pipeline from the same original, and once the task has succeeded it can
    never run again (succeeded is final). The size is mixed in as a cheap guard against the one
    rewrite still possible, a late attempt whose lease was lost, with a different encoder build.
    """
    digest = hashlib.sha256(f"{key}\0{size}".encode()).hexdigest()
    return f'"{digest[:32]}"'


def _etag_matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    if header.strip() == "*":
        return True
    # If-None-Match uses the weak comparison: W/"x" matches "x".
    candidates = (tag.strip().removeprefix("W/") for tag in header.split(","))
    return any(secrets.compare_digest(tag, etag) for tag in candidates if tag.isascii())


async def _chunks(stream: BinaryIO) -> AsyncIterator[bytes]:
    try:
        while chunk := await run_in_threadpool(stream.read, CHUNK_BYTES):
            yield chunk
    finally:
        await run_in_threadpool(stream.close)


def _task_schema() -> dict[str, Any]:
    timestamp = {"type": ["string", "null"], "format": "date-time"}
    image: dict[str, Any] = {
        "key": {"type": "string"},
        "url": {"type": "string", "format": "uri"},
        "format": {"type": "string"},
        "width": {"type": "integer"},
        "height": {"type": "integer"},
        "bytes": {"type": "integer"},
    }
    source = {
        "type": "object",
        "required": [*image, "orientation", "display_width", "display_height"],
        "properties": {
            **image,
            "orientation": {"type": "integer", "minimum": 1, "maximum": 8},
            "display_width": {"type": "integer"},
            "display_height": {"type": "integer"},
        },
    }
    output = {
        "type": "object",
        "required": ["name", *image],
        "properties": {
            **image,
            "name": {"type": "string"},
            "blurhash": {"type": "string"},
            "dominant_color": {"type": "string", "pattern": "^#[0-9a-f]{6}$"},
        },
    }
    return {
        "type": "object",
        "required": [
            "id",
            "status",
            "pipeline",
            "priority",
            "attempts",
            "max_attempts",
            "error",
            "created_at",
            "updated_at",
            "started_at",
            "finished_at",
            "source",
            "outputs",
        ],
        "properties": {
            "id": {"type": "string"},
            "status": {
                "type": "string",
                "enum": ["queued", "processing", "succeeded", "failed", "dead", "cancelled"],
            },
            "pipeline": {"type": "string"},
            "attempts": {"type": "integer"},
            "max_attempts": {"type": "integer"},
            "priority": {"type": "integer"},
            "error": {"oneOf": [{"type": "null"}, {"$ref": "#/components/schemas/ErrorBody"}]},
            "created_at": {"type": "string", "format": "date-time"},
            "updated_at": {"type": "string", "format": "date-time"},
            "started_at": timestamp,
            "finished_at": timestamp,
            "source": source,
            "outputs": {"type": "array", "items": output},
        },
    }


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


_TASK_ID = {
    "name": "task_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "maxLength": 64},
}
_TASK_RESPONSE = {
    "description": "the task",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Task"}}},
}
_AUTH_ERRORS = {
    "401": _error("missing or unknown API key (when keys are configured)"),
    "429": _error("too many missing or unknown API keys from this address (Retry-After)"),
}
_UNAVAILABLE = {"503": _error("a backend is temporarily unavailable (Retry-After)")}

#: The OpenAPI 3.1 description of every endpoint, served at ``/openapi.json``.
OPENAPI: Final[dict[str, Any]] = {
    "openapi": "3.1.0",
    "info": {
        "title": "imageproc",
        "version": "1",
        "description": "Upload images, follow their processing, fetch the variants.",
    },
    "components": {
        "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "ErrorBody": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
            },
            "Error": {
                "type": "object",
                "required": ["error"],
                "properties": {"error": {"$ref": "#/components/schemas/ErrorBody"}},
            },
            "Task": _task_schema(),
            "Accepted": {
                "type": "object",
                "required": ["id", "status", "status_url", "created_at"],
                "properties": {
                    "id": {"type": "string"},
                    "status": {"type": "string"},
                    "status_url": {"type": "string", "format": "uri"},
                    "created_at": {"type": "string", "format": "date-time"},
                },
            },
        },
    },
    "security": [{"apiKey": []}],
    "paths": {
        "/upload": {
            "post": {
                "operationId": "upload",
                "summary": "Store an image and queue a task to make its variants",
                "parameters": [
                    {"name": n, "in": "query", "required": False, "schema": {"type": "string"}}
                    for n in ("pipeline", "preset", "priority")
                ],
                "requestBody": {
                    "required": True,
                    "description": "a form with the file in 'image', or the image as the body "
                    "(then pipeline, preset and priority go in the query)",
                    "content": {
                        "multipart/form-data": {
                            "schema": {
                                "type": "object",
                                "required": ["image"],
                                "properties": {
                                    "image": {"type": "string", "contentMediaType": "image/*"},
                                    "pipeline": {
                                        "type": "string",
                                        "description": "compact text or JSON form",
                                    },
                                    "preset": {"type": "string"},
                                    "priority": {
                                        "type": "integer",
                                        "minimum": -1000,
                                        "maximum": 1000,
                                    },
                                },
                            }
                        },
                        "image/*": {"schema": {"type": "string", "contentMediaType": "image/*"}},
                    },
                },
                "responses": {
                    "202": {
                        "description": "accepted; follow status_url (also in Location)",
                        "headers": {"Location": {"schema": {"type": "string"}}},
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/Accepted"}
                            }
                        },
                    },
                    "400": _error("malformed request"),
                    **_AUTH_ERRORS,
                    "403": _error("a priority above the most this API key may ask for"),
                    "413": _error("the upload is over the size limit"),
                    "415": _error("not an image, or a format that is not accepted"),
                    "422": _error("a bad pipeline, preset or priority"),
                    "429": _error(
                        "the queue is full, in all or for this owner (queue_full); more uploads"
                        " this minute than allowed (rate_limited); too many uploads in progress"
                        " for this API key (too_many_uploads); or too many missing or unknown"
                        " API keys from this address (Retry-After)"
                    ),
                    "408": _error("the body paused or came too slowly (imageproc serve)"),
                    **_UNAVAILABLE,
                },
            }
        },
        "/status/{task_id}": {
            "get": {
                "operationId": "status",
                "summary": "A task, with signed URLs of its outputs",
                "parameters": [_TASK_ID],
                "responses": {
                    "200": _TASK_RESPONSE,
                    **_AUTH_ERRORS,
                    "404": _error("no such task (or not yours)"),
                    **_UNAVAILABLE,
                },
            }
        },
        "/tasks/{task_id}": {
            "delete": {
                "operationId": "cancel",
                "summary": "Cancel a queued or processing task",
                "parameters": [_TASK_ID],
                "responses": {
                    "200": _TASK_RESPONSE,
                    **_AUTH_ERRORS,
                    "404": _error("no such task (or not yours)"),
                    "409": _error("the task has already ended"),
                    **_UNAVAILABLE,
                },
            }
        },
        "/tasks/{task_id}/retry": {
            "post": {
                "operationId": "retry",
                "summary": "Queue a failed or dead task again",
                "parameters": [_TASK_ID],
                "responses": {
                    "200": _TASK_RESPONSE,
                    **_AUTH_ERRORS,
                    "404": _error("no such task (or not yours)"),
                    "409": _error("the task is not failed or dead"),
                    "429": _error(
                        "the queue is full, in all or for this owner (queue_full), or too many"
                        " missing or unknown API keys from this address (Retry-After)"
                    ),
                    **_UNAVAILABLE,
                },
            }
        },
        "/image/{image_key}": {
            "parameters": [
                {
                    "name": "image_key",
                    "in": "path",
                    "required": True,
                    "description": "outputs/<task id>/<name>.<ext> or originals/…",
                    "schema": {"type": "string"},
                },
                {"name": "expires", "in": "query", "schema": {"type": "integer"}},
                {"name": "signature", "in": "query", "schema": {"type": "string"}},
            ],
            "get": {
                "operationId": "image",
                "summary": "A stored image (signed URL, or the owner's API key)",
                "security": [{}, {"apiKey": []}],
                "responses": {
                    "200": {
                        "description": "the image",
                        "content": {"image/*": {"schema": {"type": "string"}}},
                    },
                    "304": {"description": "not modified (If-None-Match)"},
                    "400": _error("an invalid key"),
                    **_AUTH_ERRORS,
                    "403": _error("an invalid or expired signature"),
                    "404": _error("no such image (or not yours)"),
                    **_UNAVAILABLE,
                },
            },
            "head": {
                "operationId": "imageHead",
                "summary": "The headers of a stored image",
                "security": [{}, {"apiKey": []}],
                "responses": {
                    "200": {"description": "the image's headers"},
                    "304": {"description": "not modified"},
                    "400": {"description": "an invalid key"},
                    "401": {"description": "missing or unknown API key"},
                    "403": {"description": "an invalid or expired signature"},
                    "404": {"description": "no such image"},
                    "429": {"description": "too many missing or unknown API keys from here"},
                },
            },
        },
        "/healthz": {
            "get": {
                "operationId": "healthz",
                "summary": "The process is up",
                "security": [{}],
                "responses": {"200": {"description": "alive"}},
            }
        },
        "/readyz": {
            "get": {
                "operationId": "readyz",
                "summary": "The task database and storage are reachable",
                "responses": {
                    "200": {"description": "ready"},
                    **_AUTH_ERRORS,
                    "503": _error("not ready"),
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics",
                "responses": {
                    "200": {
                        "description": "the text exposition format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    **_AUTH_ERRORS,
                    "404": _error("metrics are not enabled"),
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                "responses": {"200": {"description": "OpenAPI 3.1"}, **_AUTH_ERRORS},
            }
        },
    },
}
