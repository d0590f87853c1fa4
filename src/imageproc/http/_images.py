"""``GET``/``HEAD /image/{key}``: a stored image, to a signed URL or to the owner's API key;
the checks on the raw path and on the signature's exact spelling, ownership of an output, the
ETag, and the streaming of the object out of storage.
"""

from __future__ import annotations

import hashlib
import math
import secrets
import time
from collections.abc import AsyncIterator
from typing import BinaryIO, Final

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from imageproc import _keys as keyrules
from imageproc._signing import UrlSigner, parse_expires
from imageproc.errors import InvalidKey, ObjectNotFound, TaskNotFound
from imageproc.http._errors import ApiError
from imageproc.http._service import Service, service_of

#: Bytes per read when streaming a stored object out.
CHUNK_BYTES: Final = 256 * 1024
IMMUTABLE: Final = "max-age=31536000, immutable"


async def image(request: Request) -> Response:
    """GET and HEAD /image/{key}: a stored original or output, to a signed URL or to its
    owner's API key."""
    service = service_of(request)
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

    info = await run_in_threadpool(service.processor.storage.stat, key)
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
    stream = await run_in_threadpool(service.processor.open, key)
    return StreamingResponse(_chunks(stream), headers=headers, media_type=info.content_type)


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

    Only the URL exactly as :meth:`Service.signed_url` writes it passes: each query parameter
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


async def _owned_output(service: Service, key: str, owner: str | None) -> None:
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
