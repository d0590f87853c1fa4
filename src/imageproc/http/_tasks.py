"""The endpoints on one task: ``GET /status/{task_id}``, ``DELETE /tasks/{task_id}`` (cancel)
and ``POST /tasks/{task_id}/retry``; each answers the task as ``/status`` shows it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from imageproc.http._service import service_of

if TYPE_CHECKING:
    from imageproc._processor import Processor
    from imageproc._task import Task


async def status(request: Request) -> Response:
    """GET /status/{task_id}: the task, with signed URLs of its outputs."""
    service = service_of(request)
    owner = service.authenticate(request)
    task = await service.task_for(request.path_params["task_id"], owner)
    return JSONResponse(service.task_json(request, task), headers={"Cache-Control": "no-store"})


async def cancel(request: Request) -> Response:
    """DELETE /tasks/{task_id}: cancel a queued or processing task."""
    return await _change(request, lambda processor, task_id: processor.cancel(task_id))


async def retry(request: Request) -> Response:
    """POST /tasks/{task_id}/retry: queue a failed or dead task again."""
    return await _change(request, lambda processor, task_id: processor.retry(task_id))


async def _change(request: Request, change: Callable[[Processor, str], Task]) -> Response:
    # The task is looked up first, so another owner's task is a 404 before anything changes.
    service = service_of(request)
    owner = service.authenticate(request)
    task = await service.task_for(request.path_params["task_id"], owner)
    changed = await run_in_threadpool(change, service.processor, task.id)
    return JSONResponse(service.task_json(request, changed))
