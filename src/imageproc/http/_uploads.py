"""``POST /upload``: the endpoint, and the reading of its request: the body's size limit (kept
while it streams in), the multipart form or the raw image spooled to a temporary file, the text
fields, the pipeline or preset, the priority, the time asked for, the metadata and dedupe.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import AsyncGenerator
from datetime import datetime, timedelta
from typing import Any, BinaryIO, Final

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import FormParser, MultiPartException, MultiPartParser
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from imageproc._idempotency import checked_key
from imageproc._parsing import parse_bool, parse_whole_number
from imageproc._processor import Processor, Upload
from imageproc._signing import PRIORITY_RANGE
from imageproc._task import MAX_METADATA_BYTES
from imageproc._taskjson import rfc3339
from imageproc._upload import MAX_SCHEDULE
from imageproc.errors import InvalidInput, InvalidPipeline
from imageproc.http._errors import ApiError
from imageproc.http._service import Service, service_of
from imageproc.pipeline._pipeline import Pipeline

#: Room for the multipart envelope (boundaries, part headers, the small fields) on top of the
#: image itself, so an image of exactly ``max_upload_bytes`` still fits in a form.
FORM_OVERHEAD: Final = 64 * 1024
#: Bytes kept in memory before an upload spools to a temporary file.
SPOOL_BYTES: Final = 1024 * 1024

_DIGITS: Final = re.compile(r"[0-9]{1,19}")


#: The form bodies POST /upload reads (the other way in is an image/* body).
_FORMS: Final = ("multipart/form-data", "application/x-www-form-urlencoded")


async def upload(request: Request) -> Response:
    """POST /upload: store the image (a form's ``image`` field, or the raw body) and queue its
    task; 202."""
    service = service_of(request)
    owner = service.authenticate(request)
    key = _idempotency_key(request)  # before the body: a bad key is refused without reading it
    service.check_upload_rate(request, owner)
    if key is None:
        # Not for a request under a key: it may be a replay, answered without queueing anything
        # (a new task under a key is still refused at recording, if the queue is full).
        await service.check_queue_depth()
    limit = service.max_upload_bytes
    content_type = request.headers.get("content-type", "").lower()
    image: UploadFile | None = None
    fetched: bytes | None = None
    form: FormData | None = None
    try:
        try:
            if content_type.startswith(_FORMS):
                # A urlencoded form carries no file: only a URL to fetch the image from.
                multipart = content_type.startswith("multipart/form-data")
                _check_length(request, (limit if multipart else 0) + FORM_OVERHEAD)
                form = await _read_form(request, service, multipart=multipart)
                field = form.get("image")
                url = _text_field(form, "url")
                if isinstance(field, UploadFile) and url is None:
                    image = field
                    if image.size is not None and image.size > limit:
                        raise _TooLarge
                elif url is not None and field is None:
                    # Fetched here, in a thread: checked, bounded, before anything is stored.
                    fetched = await run_in_threadpool(service.processor.fetch, url)
                else:
                    raise ApiError(
                        422,
                        "missing_image",
                        "the form needs the image as a file in field 'image', or its URL in"
                        " field 'url' (not both)",
                    )
                pipeline = _text_field(form, "pipeline")
                preset = _text_field(form, "preset")
                priority_text = _text_field(form, "priority")
                not_before_text = _text_field(form, "not_before")
                metadata_text = _text_field(form, "metadata")
                dedupe_text = _text_field(form, "dedupe")
                callback_url = _text_field(form, "callback_url")
            elif content_type.startswith("image/"):
                _check_length(request, limit)
                image = await _spool_body(request, limit)
                pipeline = request.query_params.get("pipeline")
                preset = request.query_params.get("preset")
                priority_text = request.query_params.get("priority")
                not_before_text = request.query_params.get("not_before")
                metadata_text = request.query_params.get("metadata")
                dedupe_text = request.query_params.get("dedupe")
                callback_url = request.query_params.get("callback_url")
            else:
                raise ApiError(
                    415,
                    "unsupported_media_type",
                    "send multipart/form-data with the image in field 'image' (or its URL in"
                    " field 'url'), or an image/* body",
                )
        except _TooLarge:
            raise _too_large(limit) from None
        spec = pipeline_spec(service.processor, pipeline, preset)
        priority = priority_within(priority_text, service.priority_cap(owner))
        if fetched is not None:
            source: bytes | BinaryIO = fetched
            size = len(fetched)
        else:
            assert image is not None
            source, size = image.file, image.size or 0
        upload = Upload(
            source,
            spec,
            priority=priority,
            owner=owner,
            not_before=_not_before(not_before_text),
            metadata=_metadata(metadata_text),
            dedupe=_dedupe(dedupe_text),
            idempotency_key=key,
            callback_url=callback_url or None,
        )
        accepted = await service.batcher.submit(upload, size=size)
    finally:
        # Closing deletes the spooled temporary files (the form's, or the raw body's).
        if form is not None:
            await form.close()
        elif image is not None:
            await image.close()
    # Under a key, the answer is the key's record, so a replay says what the first answer
    # said (the task's status then, not now) even after the task itself has been purged.
    record, task = accepted.record, accepted.task
    if record is not None:
        task_id, status, created_at = record.task_id, record.status, record.created_at
    else:
        assert task is not None
        task_id, status, created_at = task.id, task.status, task.created_at
    status_url = service.url_for(request, "status", task_id=task_id)
    headers = {"Location": status_url}
    if accepted.replayed:
        headers["Idempotent-Replayed"] = "true"
    return JSONResponse(
        {
            "id": task_id,
            "status": str(status),
            "status_url": status_url,
            "created_at": rfc3339(created_at),
        },
        status_code=202,
        headers=headers,
    )


def _idempotency_key(request: Request) -> str | None:
    """The ``Idempotency-Key`` header's key: a Structured Fields string as the IETF draft
    writes it (``"…"``), or the bare text most clients send; checked as every key is."""
    values = request.headers.getlist("idempotency-key")
    if not values:
        return None
    if len(values) > 1:
        raise ApiError(
            422, "invalid_idempotency_key", "send one Idempotency-Key header, not several"
        )
    text = values[0].strip()
    if len(text) >= 2 and text[0] == text[-1] == '"':
        text = _SF_ESCAPE.sub(r"\1", text[1:-1])
    try:
        return checked_key(text)
    except InvalidInput as error:
        raise ApiError(422, "invalid_idempotency_key", error.message) from None


#: An escaped character inside a Structured Fields string (RFC 8941: only ``\"`` and ``\\``).
_SF_ESCAPE: Final = re.compile(r"\\([\\\"])")


class _TooLarge(Exception):
    """The request body passed its limit while streaming in."""


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


async def _read_form(request: Request, service: Service, *, multipart: bool) -> FormData:
    if not multipart:
        return await FormParser(request.headers, _limited(request, FORM_OVERHEAD)).parse()
    parser = MultiPartParser(
        request.headers,
        _limited(request, service.max_upload_bytes + FORM_OVERHEAD),
        max_files=1,
        max_fields=10,
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


def pipeline_spec(
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


def priority_within(value: str | None, cap: int) -> int:
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


#: RFC 3339's date-time: a full date, a time to the second (a fraction at most to the
#: microsecond, what a datetime holds), and a zone, ``Z`` or an offset.
_RFC3339: Final = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,6})?"
    r"(?:[Zz]|[+-][0-9]{2}:[0-9]{2})"
)
_NOT_BEFORE_FORMS: Final = (
    "not_before must be a whole number of seconds from now, or an RFC 3339 time with its zone"
    " such as 2026-12-07T20:00:00Z"
)


def _not_before(value: str | None) -> datetime | timedelta | None:
    """The time asked for, as :class:`~imageproc.Upload` takes it: seconds from now become a
    delay, an RFC 3339 time a datetime; the range is checked where every submit is."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    if _DIGITS.fullmatch(text):
        seconds = int(text)  # ASCII digits, at most 19 of them
        if seconds > MAX_SCHEDULE.total_seconds():  # beyond what a timedelta holds, too
            raise ApiError(
                422, "invalid_input", f"not_before may be at most {MAX_SCHEDULE.days} days ahead"
            )
        return timedelta(seconds=seconds)
    if _RFC3339.fullmatch(text):
        try:
            return datetime.fromisoformat(text.upper())
        except ValueError:  # a month 13, a 25th hour
            pass
    raise ApiError(422, "invalid_not_before", _NOT_BEFORE_FORMS)


def _dedupe(value: str | None) -> bool:
    try:
        return parse_bool((value or "").strip().lower())
    except ValueError:
        raise ApiError(422, "invalid_dedupe", "dedupe must be true or false") from None


def _metadata(value: str | None) -> Any:
    """The metadata field's JSON, read; what it must be is checked where every submit is."""
    if value is None or not value.strip():
        return None
    if len(value) > 2 * MAX_METADATA_BYTES:  # beyond any value the check lets through
        raise ApiError(422, "invalid_input", f"metadata is over {MAX_METADATA_BYTES} bytes")
    try:
        return json.loads(value)
    except (ValueError, RecursionError):
        raise ApiError(
            422, "invalid_metadata", 'metadata must be a JSON object, such as {"user": "42"}'
        ) from None


def _text_field(form: FormData, name: str) -> str | None:
    value = form.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ApiError(422, "invalid_field", f"the {name!r} field must be text, not a file")
    return value
