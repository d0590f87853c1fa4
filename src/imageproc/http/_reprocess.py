"""``POST /tasks/{task_id}/reprocess``: more variants of a task's stored original, as a new task
(``Processor.reprocess``). The body, JSON and optional: ``{"preset": "…"}`` or ``{"pipeline":
"…"}`` (text or JSON), ``"missing_only"`` (true unless false) and ``"priority"``. 202 with the
new task, or 200 with the task itself when it has every variant already."""

from __future__ import annotations

import json
from typing import Any, Final

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from imageproc.http._errors import ApiError
from imageproc.http._service import service_of
from imageproc.http._uploads import pipeline_spec, priority_within

__all__ = ["reprocess"]

#: Most bytes of a reprocess request's body (a pipeline's JSON at most).
MAX_BODY: Final = 64 * 1024
_FIELDS: Final = frozenset({"preset", "pipeline", "missing_only", "priority"})


async def reprocess(request: Request) -> Response:
    """POST /tasks/{task_id}/reprocess."""
    service = service_of(request)
    owner = service.authenticate(request)
    task = await service.task_for(request.path_params["task_id"], owner)  # yours, or a 404
    asked = await _body(request)
    pipeline, preset = asked.get("pipeline"), asked.get("preset")
    if isinstance(pipeline, dict):
        pipeline = json.dumps(pipeline)
    if not isinstance(pipeline, str | None) or not isinstance(preset, str | None):
        raise ApiError(422, "invalid_pipeline", "pipeline and preset are text (or a JSON pipeline)")
    missing_only = asked.get("missing_only", True)
    if not isinstance(missing_only, bool):
        raise ApiError(422, "invalid_input", "missing_only is true or false")
    priority = asked.get("priority")
    if priority is not None and (not isinstance(priority, int) or isinstance(priority, bool)):
        raise ApiError(422, "invalid_priority", "priority is a whole number")
    spec = pipeline_spec(service.processor, pipeline, preset)
    chosen = priority_within(
        None if priority is None else str(priority), service.priority_cap(owner)
    )
    made = await run_in_threadpool(
        service.processor.reprocess, task.id, spec, missing_only=missing_only, priority=chosen
    )
    status = 200 if made.id == task.id else 202
    return JSONResponse(service.task_json(request, made), status_code=status)


async def _body(request: Request) -> dict[str, Any]:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise ApiError(413, "too_large", f"a reprocess request is at most {MAX_BODY} bytes")
    if not body.strip():
        return {}
    try:
        asked = json.loads(body)
    except (ValueError, RecursionError):
        raise ApiError(400, "bad_request", "the body must be a JSON object") from None
    if not isinstance(asked, dict):
        raise ApiError(400, "bad_request", "the body must be a JSON object")
    unknown = sorted(set(asked) - _FIELDS)
    if unknown:
        raise ApiError(422, "invalid_input", f"unknown field {unknown[0]!r}")
    return asked
