"""What ``imageproc serve`` puts around the HTTP adapter against slow and greedy clients.

uvicorn bounds neither how long a client may take to send its request headers nor how slowly it
may send a body; a few hundred connections dribbling a byte a second would otherwise hold the
server (and every stalled upload past 1 MiB a temporary file) for as long as they like. This
module has the pieces ``imageproc serve`` adds, usable on their own around any ASGI app served by
uvicorn:

* :func:`header_deadline_protocol`: uvicorn's h11 protocol, closing a connection whose request
  line and headers are not complete within a deadline (``http=`` of :class:`uvicorn.Config`);
* :class:`BodyDeadline`: ASGI middleware answering ``408`` and dropping a request whose body
  stalls, or arrives slower than a minimum rate once a grace period is spent;
* :class:`UploadLimit`: ASGI middleware bounding the uploads one API key has in progress
  (``429`` with ``Retry-After`` beyond it);
* :class:`RedactQuerySecrets`: a logging filter that blanks signatures (and anything named like
  a credential) in the query strings of uvicorn's access log.

The connection limit and the keep-alive timeout are uvicorn's own (``limit_concurrency``,
``timeout_keep_alive``). Needs the ``http`` extra.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections import Counter
from typing import Any, ClassVar, Final
from urllib.parse import unquote_plus

import anyio
import h11
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from imageproc._signing import ApiKeys

__all__ = [
    "SECRET_QUERY_PARAMETERS",
    "BodyDeadline",
    "RedactQuerySecrets",
    "UploadLimit",
    "header_deadline_protocol",
    "redact_query_secrets",
]

logger = logging.getLogger("imageproc.serving")

#: Query parameters whose values never reach a log: the signature of a signed URL, and names a
#: client might (wrongly) use to pass an API key, which the service itself never reads there.
SECRET_QUERY_PARAMETERS: Final = frozenset(
    {"signature", "key", "api_key", "apikey", "token", "access_token"}
)
#: Seconds a client refused with 429 is told to wait, as the adapter's own 429s say.
RETRY_AFTER: Final = 5

# Written straight to the socket: h11 cannot answer a request it has not seen whole.
_HEADER_TIMEOUT_RESPONSE: Final = (
    b"HTTP/1.1 408 Request Timeout\r\n"
    b"content-type: text/plain; charset=utf-8\r\n"
    b"content-length: 15\r\n"
    b"connection: close\r\n"
    b"\r\n"
    b"Request Timeout"
)


# -- request headers --------------------------------------------------------------------------


class _HeaderDeadlineH11(H11Protocol):
    """uvicorn's h11 protocol with a deadline on each request's line and headers."""

    header_timeout: ClassVar[float] = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(  # type: ignore[override]
        self, transport: asyncio.Transport
    ) -> None:
        super().connection_made(transport)
        # From the connection on: a client that connects and sends nothing is as slow as it gets
        # (uvicorn's keep-alive timer only starts after a first response).
        self._arm()

    def data_received(self, data: bytes) -> None:
        # The first bytes of a further request on a kept-alive connection start its deadline.
        if self._header_timer is None and self.conn.their_state is h11.IDLE:
            self._arm()
        super().data_received(data)
        # h11 leaves IDLE once a whole request line and headers have been parsed (or on an error,
        # which uvicorn answers and closes itself).
        if self.conn.their_state is not h11.IDLE:
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        client = _address(self.client)
        logger.info(
            "closed the connection of %s: no complete request headers within %g s",
            client,
            self.header_timeout,
        )
        self.transport.write(_HEADER_TIMEOUT_RESPONSE)
        self.transport.close()


def header_deadline_protocol(timeout: float) -> type[asyncio.Protocol]:
    """uvicorn's h11 HTTP protocol, closing (after a bare ``408``) any connection whose request
    line and headers are not all in within ``timeout`` seconds.

    The deadline runs from the connection's opening, and on a kept-alive connection from the
    first byte of each further request; the wait between requests is uvicorn's keep-alive
    timeout. Pass the class as ``uvicorn.Config(http=...)``: it replaces httptools too, which has
    no such deadline either.
    """
    if not timeout > 0:
        raise ValueError(f"timeout must be positive, got {timeout}")

    class HeaderDeadlineProtocol(_HeaderDeadlineH11):
        header_timeout = timeout

    return HeaderDeadlineProtocol


# -- request bodies ---------------------------------------------------------------------------


def _json_answer(status: int, code: str, message: str, headers: dict[str, str]) -> list[Message]:
    # As the adapter's own error answers (Starlette's JSONResponse) are written.
    body = json.dumps({"error": {"code": code, "message": message}}, separators=(",", ":")).encode()
    raw_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        # The body is left unread: closing beats draining it at the client's pace.
        (b"connection", b"close"),
        *((name.lower().encode(), value.encode()) for name, value in headers.items()),
    ]
    return [
        {"type": "http.response.start", "status": status, "headers": raw_headers},
        {"type": "http.response.body", "body": body, "more_body": False},
    ]


class _Body:
    """How one request's body has been arriving."""

    def __init__(self, scope: Scope) -> None:
        self.received = 0
        self.waited = 0.0  # seconds spent waiting for the client, not for the app to ask
        self.done = not _has_body(scope)
        self.timed_out = False
        self.response_started = False


class BodyDeadline:
    """ASGI middleware: a request body must keep coming, and fast enough.

    Each wait for the next piece of body may last at most ``timeout`` seconds; and beyond a
    grace period of ``timeout`` seconds, the time spent waiting for the body may not pass what
    ``min_rate`` bytes per second allow for what has come (``timeout + received / min_rate``).
    Only the time spent waiting for the client counts, not the time the app takes between reads.

    A request that fails either is answered ``408`` (``request_timeout``) with
    ``Connection: close`` if the app has not answered yet, and the app then receives
    ``http.disconnect``, so it stops reading and removes what it had spooled. A response sent
    while the body is still unread also gets ``Connection: close``: otherwise the server would
    go on reading (and discarding) the rest at whatever pace the client likes.
    """

    def __init__(self, app: ASGIApp, *, timeout: float, min_rate: int | None) -> None:
        if not timeout > 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        if min_rate is not None and min_rate < 1:
            raise ValueError(f"min_rate must be at least 1 byte per second, got {min_rate}")
        self.app = app
        self.timeout = timeout
        self.min_rate = min_rate

    def _allowance(self, body: _Body) -> float:
        """Seconds the next wait for the body may last."""
        if self.min_rate is None:
            return self.timeout
        earned = self.timeout + body.received / self.min_rate - body.waited
        return max(0.0, min(self.timeout, earned))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body = _Body(scope)

        async def guarded_receive() -> Message:
            if body.timed_out:
                return {"type": "http.disconnect"}
            if body.done:
                return await receive()  # only a disconnect is left to come: not ours to bound
            started = time.monotonic()
            message: Message | None = None
            with anyio.move_on_after(self._allowance(body)):
                message = await receive()
            body.waited += time.monotonic() - started
            if message is None:
                await self._give_up(scope, body, send)
                return {"type": "http.disconnect"}
            if message["type"] == "http.request":
                body.received += len(message.get("body", b""))
                body.done = not message.get("more_body", False)
            else:
                body.done = True
            return message

        async def guarded_send(message: Message) -> None:
            if body.timed_out:
                return  # answered 408 already; whatever the app says now has nowhere to go
            if message["type"] == "http.response.start":
                body.response_started = True
                if not body.done:
                    message = _with_connection_close(message)
            await send(message)

        await self.app(scope, guarded_receive, guarded_send)

    async def _give_up(self, scope: Scope, body: _Body, send: Send) -> None:
        body.timed_out = True
        logger.warning(
            "dropped %s %s from %s: its body came too slowly (%d bytes in %.1f s of waiting)",
            scope.get("method"),
            scope.get("path"),
            _address(scope.get("client")),
            body.received,
            body.waited,
        )
        if body.response_started:
            return  # too late for a 408: the disconnect ends the app's response
        for message in _json_answer(
            408, "request_timeout", "the request body arrived too slowly", {}
        ):
            await send(message)


def _address(client: Any) -> str:
    return f"{client[0]}:{client[1]}" if client else "a client"


def _has_body(scope: Scope) -> bool:
    # HTTP/1.1 (RFC 9112, 6.3): a request has a body only if it says so in one of these headers;
    # endpoints that expect none never read, and must not have their connection closed for it.
    for name, value in scope.get("headers", []):
        header = bytes(name).lower()
        if header == b"transfer-encoding":
            return True
        if header == b"content-length" and bytes(value).strip() != b"0":
            return True
    return False


def _with_connection_close(message: Message) -> Message:
    headers = list(message.get("headers", []))
    if not any(bytes(name).lower() == b"connection" for name, _ in headers):
        headers.append((b"connection", b"close"))
    return {**message, "headers": headers}


# -- uploads per API key ----------------------------------------------------------------------


class UploadLimit:
    """ASGI middleware: at most ``max_uploads`` uploads (``POST /upload``) in progress per API
    key; one more is answered ``429`` (``too_many_uploads``) with ``Retry-After``, before its
    body is read.

    Requests without a known key pass through (the app answers them ``401``). Counts are per
    process.
    """

    def __init__(
        self, app: ASGIApp, *, api_keys: ApiKeys, max_uploads: int, path: str = "/upload"
    ) -> None:
        if max_uploads < 1:
            raise ValueError(f"max_uploads must be at least 1, got {max_uploads}")
        self.app = app
        self.api_keys = api_keys
        self.max_uploads = max_uploads
        self.path = path
        self._active: Counter[str] = Counter()

    def _owner(self, scope: Scope) -> str | None:
        for name, value in scope.get("headers", []):
            if bytes(name).lower() == b"authorization":  # the first, as Starlette reads it
                return self.api_keys.owner_of_authorization(bytes(value).decode("latin-1"))
        return None

    def _is_upload(self, scope: Scope) -> bool:
        if scope["type"] != "http" or scope.get("method") != "POST":
            return False
        path: str = scope.get("path", "")
        root: str = scope.get("root_path", "")
        # uvicorn puts root_path in front of path (ASGI 2.3 / Starlette's reading).
        if root and path.startswith(root):
            path = path[len(root) :]
        return path == self.path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        owner = self._owner(scope) if self._is_upload(scope) else None
        if owner is None:
            await self.app(scope, receive, send)
            return
        if self._active[owner] >= self.max_uploads:
            message = f"at most {self.max_uploads} uploads at a time per API key; try again shortly"
            for reply in _json_answer(
                429, "too_many_uploads", message, {"Retry-After": str(RETRY_AFTER)}
            ):
                await send(reply)
            return
        self._active[owner] += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self._active[owner] -= 1
            if not self._active[owner]:
                del self._active[owner]


# -- the access log ---------------------------------------------------------------------------

_QUERY_FIELD: Final = re.compile(r"(?P<lead>[?&;])(?P<name>[^?&;=\s\"]*)=(?P<value>[^?&;\s\"]*)")


def redact_query_secrets(text: str) -> str:
    """``text`` with the value of every query field named in :data:`SECRET_QUERY_PARAMETERS`
    (case-insensitive, percent-encoded names too) replaced by ``[redacted]``.

    Every ``?``, ``&`` or ``;`` starts a field, wherever it is, so a ``?`` smuggled into the path
    cannot shift a signature out of sight.
    """

    def redact(match: re.Match[str]) -> str:
        name = unquote_plus(match["name"]).strip().lower()
        if name not in SECRET_QUERY_PARAMETERS:
            return match[0]
        return f"{match['lead']}{match['name']}=[redacted]"

    return _QUERY_FIELD.sub(redact, text) if "=" in text else text


class RedactQuerySecrets(logging.Filter):
    """A logging filter that passes :func:`redact_query_secrets` over a record's text arguments.

    Install it on the ``uvicorn.access`` logger: its lines carry each request's path and query,
    and a signed URL in a log works, like a password, until it expires.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                redact_query_secrets(arg) if isinstance(arg, str) else arg for arg in record.args
            )
        elif isinstance(record.msg, str) and not record.args:
            record.msg = redact_query_secrets(record.msg)
        return True
