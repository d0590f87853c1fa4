"""The endpoints on one task: ``GET /status/{task_id}``, ``DELETE /tasks/{task_id}`` (cancel)
and ``POST /tasks/{task_id}/retry``; each answers the task as ``/status`` shows it.
"""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from imageproc.http._service import service_of


async def status(request: Request) -> Response:
    """GET /status/{task_id}: the task, with signed URLs of its outputs."""
    service = service_of(request)
    owner = service.authenticate(request)
    task = await service.task_for(request.path_params["task_id"], owner)
    return JSONResponse(service.task_json(request, task), headers={"Cache-Control": "no-store"})


async def cancel(request: Request) -> Response:
    """DELETE /tasks/{task_id}: cancel a queued or processing task."""
    service = service_of(request)
    owner = service.authenticate(request)
    task = await service.task_for(request.path_params["task_id"], owner)
    changed = await run_in_threadpool(service.processor.cancel, task.id)
    return JSONResponse(service.task_json(request, changed))


async def retry(request: Request) -> Response:
    """POST /tasks/{task_id}/retry: queue a failed or dead task again."""
    service = service_of(request)
    owner = service.authenticate(request)
    task = await service.task_for(request.path_params["task_id"], owner)
    changed = await run_in_threadpool(service.processor.retry, task.id)
    return JSONResponse(service.task_json(request, changed))
