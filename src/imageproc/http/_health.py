"""What monitoring reads: ``GET /healthz`` (alive), ``GET /readyz`` (the task database and the
storage answer) and ``GET /metrics`` (Prometheus).
"""

from __future__ import annotations

import logging
from typing import Final

import anyio
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from imageproc.http._errors import RETRY_AFTER, ApiError
from imageproc.http._service import service_of

logger = logging.getLogger("imageproc.http")

#: How long /readyz waits for the backends before saying "not ready".
READY_TIMEOUT: Final = 5.0


async def healthz(request: Request) -> Response:
    """GET /healthz: the process is up (no API key needed)."""
    return JSONResponse({"status": "ok"}, headers={"Cache-Control": "no-store"})


async def readyz(request: Request) -> Response:
    """GET /readyz: the task database and the storage answer within :data:`READY_TIMEOUT`."""
    service = service_of(request)
    service.authenticate(request)

    def probe() -> None:
        service.processor.repository.queue_stats()
        service.processor.storage.exists("healthz-probe")

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
    """GET /metrics: the Prometheus registry given to the app; 404 without one."""
    service = service_of(request)
    service.authenticate(request)
    registry = service.metrics_registry
    if registry is None:
        raise ApiError(404, "not_found", "metrics are not enabled")
    import prometheus_client

    # Collectors may query the database (queue depth): off the event loop.
    body = await run_in_threadpool(prometheus_client.generate_latest, registry)
    return Response(body, media_type=prometheus_client.CONTENT_TYPE_LATEST)
