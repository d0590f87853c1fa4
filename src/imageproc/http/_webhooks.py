"""The webhook endpoints: ``GET /webhooks`` lists deliveries (the dead ones by default), and
``POST /webhooks/resend`` and ``POST /webhooks/{delivery_id}/resend`` send dead ones again.
A client with an API key sees and resends only its own owner's deliveries."""

from __future__ import annotations

import re
from typing import Final

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from imageproc._processor import Processor
from imageproc.delivery._outbox import DeliveryStatus
from imageproc.http._errors import ApiError
from imageproc.http._service import service_of

__all__ = ["list_webhooks", "resend_webhook", "resend_webhooks"]

#: Most deliveries one ``GET /webhooks`` lists.
MAX_LIST: Final = 500
_LIMIT: Final = re.compile(r"[0-9]{1,4}")
_NO_STORE: Final = {"Cache-Control": "no-store"}


async def list_webhooks(request: Request) -> Response:
    """GET /webhooks?status=dead&task_id=…&limit=100: deliveries, the most recent first."""
    service = service_of(request)
    owner = service.authenticate(request)
    status = _status_of(request)
    limit = _limit_of(request)
    task_id = request.query_params.get("task_id") or None
    processor = _webhook_processor(request)
    found = await run_in_threadpool(
        processor.deliveries, status, owner=owner, task_id=task_id, limit=limit
    )
    return JSONResponse({"deliveries": [d.to_json() for d in found]}, headers=_NO_STORE)


async def resend_webhooks(request: Request) -> Response:
    """POST /webhooks/resend: every dead delivery (of the caller's owner) due again now."""
    service = service_of(request)
    owner = service.authenticate(request)
    processor = _webhook_processor(request)
    count = await run_in_threadpool(processor.redeliver, None, owner=owner)
    return JSONResponse({"resent": count}, status_code=202)


async def resend_webhook(request: Request) -> Response:
    """POST /webhooks/{delivery_id}/resend: one dead delivery due again now; 404 if there is
    no such dead delivery (of the caller's owner)."""
    service = service_of(request)
    owner = service.authenticate(request)
    processor = _webhook_processor(request)
    delivery_id = request.path_params["delivery_id"]
    count = await run_in_threadpool(processor.redeliver, [delivery_id], owner=owner)
    if count == 0:
        raise ApiError(404, "delivery_not_found", f"no dead delivery with id {delivery_id!r}")
    return JSONResponse({"resent": count}, status_code=202)


def _webhook_processor(request: Request) -> Processor:
    processor = service_of(request).processor
    if processor.webhooks is None:
        raise ApiError(404, "webhooks_off", "this server sends no webhooks")
    return processor


def _status_of(request: Request) -> DeliveryStatus:
    text = request.query_params.get("status", DeliveryStatus.DEAD.value)
    try:
        return DeliveryStatus(text)
    except ValueError:
        names = ", ".join(s.value for s in DeliveryStatus)
        raise ApiError(422, "invalid_status", f"status must be one of {names}") from None


def _limit_of(request: Request) -> int:
    text = request.query_params.get("limit", "100")
    if not _LIMIT.fullmatch(text) or not 1 <= int(text) <= MAX_LIST:
        raise ApiError(422, "invalid_limit", f"limit must be a whole number from 1 to {MAX_LIST}")
    return int(text)
