"""Error answers of the HTTP adapter: :class:`ApiError`, imageproc's errors mapped to a status
and a stable code, the guard that turns every exception of an endpoint into a JSON answer (never
a traceback), and the security headers on every response.

Imports nothing of the adapter's own: every other module of it may import this one.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from typing import Final

from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from imageproc.errors import (
    FetchFailed,
    IllegalTransition,
    ImageprocError,
    ImageTooLarge,
    InvalidImage,
    InvalidInput,
    InvalidKey,
    InvalidPipeline,
    ObjectNotFound,
    OriginalGone,
    QueueFull,
    TaskNotFound,
)

logger = logging.getLogger("imageproc.http")

#: Seconds a client is told to wait after a 429 or a 503.
RETRY_AFTER: Final = 5
#: Headers on every response of the app. Error bodies echo what the client sent and originals
#: are whatever was uploaded: no browser may sniff either into HTML, or run what it finds.
SECURITY_HEADERS: Final[Mapping[str, str]] = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; sandbox",
}

_Endpoint = Callable[[Request], Awaitable[Response]]


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


class SecurityHeaders:
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


def map_error(error: ImageprocError) -> ApiError:
    """The HTTP answer for one of imageproc's errors; 5xx answers never carry its text."""
    if isinstance(error, TaskNotFound):
        return ApiError(404, error.code, "no task with this id")
    if isinstance(error, ObjectNotFound):
        return ApiError(404, "not_found", "no image under this key")
    if isinstance(error, InvalidKey):
        return ApiError(400, error.code, error.message)
    if isinstance(error, OriginalGone):
        return ApiError(410, error.code, error.message)
    if isinstance(error, FetchFailed):
        # The source's failure, not ours: a 502 when trying again may work.
        if error.transient:
            return ApiError(502, error.code, error.message, {"Retry-After": str(RETRY_AFTER)})
        return ApiError(422, error.code, error.message)
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


def guard(endpoint: _Endpoint) -> _Endpoint:
    """Turn every exception of ``endpoint`` into a JSON error answer, never a traceback."""

    async def guarded(request: Request) -> Response:
        try:
            return await endpoint(request)
        except ApiError as error:
            return _error_response(error.status, error.code, error.message, error.headers)
        except ImageprocError as error:
            api = map_error(error)
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


async def http_error(request: Request, exc: Exception) -> Response:
    # Unknown routes and wrong methods come from Starlette itself: answer them in JSON too.
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return _error_response(exc.status_code, code, str(exc.detail), dict(exc.headers or {}))


def retry_after(seconds: float) -> dict[str, str]:
    """The ``Retry-After`` header for a wait of ``seconds``: whole seconds, at least one."""
    return {"Retry-After": str(max(1, math.ceil(seconds)))}
