"""The endpoints on one task: ``GET /status/{task_id}`` (with ``?wait=N``, a long-poll),
``GET /status/{task_id}/events`` (server-sent events), ``DELETE /tasks/{task_id}`` (cancel) and
``POST /tasks/{task_id}/retry``; each answers the task as ``/status`` shows it.

The long-poll and the stream wait on the event loop, through the service's
:class:`~imageproc.delivery._asyncwait.AsyncWaiters`: a waiting request holds no thread, and
the ends that only reading finds are read by one sweep for all the waiting requests at once
(the stream also reads its task every :data:`STREAM_POLL` seconds, for the changes before its
end).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Final, Literal

import anyio
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from imageproc.delivery._asyncwait import follow
from imageproc.errors import ImageprocError, WaitTimeout
from imageproc.http._errors import ApiError, map_error
from imageproc.http._service import Service, service_of

if TYPE_CHECKING:
    from sse_starlette import ServerSentEvent

    from imageproc._processor import Processor
    from imageproc._task import Task

logger = logging.getLogger("imageproc.http")

#: The longest ``GET /status/{id}?wait=N`` may wait, in seconds.
MAX_WAIT: Final = 60
#: How long one ``GET /status/{id}/events`` stream stays open at most, in seconds; then it
#: ends with a comment, and the client reconnects if it still wants to follow the task.
STREAM_LIMIT: Final = 600.0
#: Seconds between the reads that find a streamed task's changes before its end (queued →
#: processing); its end itself is pushed.
STREAM_POLL: Final = 1.0
#: Seconds between the keep-alive comments of a stream, for proxies that drop quiet connections.
STREAM_PING: Final = 15

_WAIT: Final = re.compile(r"[0-9]{1,3}")
_NO_STORE: Final = {"Cache-Control": "no-store"}


async def status(request: Request) -> Response:
    """GET /status/{task_id}: the task, with signed URLs of its outputs; with ``?wait=N``, as
    soon as it is final, or as it is after ``N`` seconds."""
    service = service_of(request)
    owner = service.authenticate(request)
    wait = _wait_of(request)
    task_id = request.path_params["task_id"]
    task = await service.task_for(task_id, owner)  # a missing (or not yours) task: 404 now
    if wait and not task.status.is_final and not service.stopping:
        waited = await _long_poll(request, service, task_id, wait)
        if waited == "gone":  # the client has gone: nobody to answer
            return Response(status_code=204)
        task = await service.task_for(task_id, owner) if isinstance(waited, str) else waited
    return JSONResponse(service.task_json(request, task), headers=_NO_STORE)


async def _long_poll(
    request: Request, service: Service, task_id: str, wait: int
) -> Task | Literal["unended", "gone"]:
    """The task once it has ended; ``"unended"`` after ``wait`` seconds, or at once when the
    server stops (:meth:`Service.stop_waiting`): the answer is then the task as it is;
    ``"gone"`` as soon as the client disconnects (an abandoned long-poll must not keep its
    subscription, or its place among the server's connections, for the rest of its wait). The
    wait's errors propagate."""
    outcome: list[Task | Literal["unended"] | Exception] = []

    async def run() -> None:
        try:
            outcome.append(await service.waiters.wait(task_id, wait))
        except WaitTimeout:
            outcome.append("unended")
        except Exception as error:  # raised after the group: not wrapped in an ExceptionGroup
            outcome.append(error)
        group.cancel_scope.cancel()

    async def until_stopped() -> None:
        with service.until_stopped() as stopped:
            await stopped.wait()
        outcome.append("unended")
        group.cancel_scope.cancel()

    async def until_disconnected() -> None:
        # A GET's (empty) body first, then nothing until the client goes (or the response ends).
        while (await request.receive())["type"] != "http.disconnect":
            pass
        group.cancel_scope.cancel()

    async with anyio.create_task_group() as group:
        group.start_soon(run)
        group.start_soon(until_stopped)
        group.start_soon(until_disconnected)
    if not outcome:
        return "gone"
    if isinstance(outcome[0], Exception):
        raise outcome[0]
    return outcome[0]


def _wait_of(request: Request) -> int:
    """The ``wait`` query parameter: whole seconds from 0 to :data:`MAX_WAIT` (0 if absent)."""
    given = request.query_params.getlist("wait")
    if not given:
        return 0
    if len(given) == 1 and _WAIT.fullmatch(given[0]) and int(given[0]) <= MAX_WAIT:
        return int(given[0])
    raise ApiError(
        422, "invalid_wait", f"wait must be a whole number of seconds from 0 to {MAX_WAIT}, once"
    )


async def events(request: Request) -> Response:
    """GET /status/{task_id}/events: the task's status as server-sent events, until it ends."""
    service = service_of(request)
    owner = service.authenticate(request)
    task_id = request.path_params["task_id"]
    # Read once before the stream starts, so a task that is missing (or not yours) is a 404.
    await service.task_for(task_id, owner)
    # Imported here: sse-starlette imports uvicorn (to end its streams when uvicorn stops), and
    # the adapter mounted under another server must not load it until a stream is asked for.
    from sse_starlette import EventSourceResponse

    return EventSourceResponse(
        _status_events(request, service, owner, task_id), headers=_NO_STORE, ping=STREAM_PING
    )


async def _status_events(
    request: Request, service: Service, owner: str | None, task_id: str
) -> AsyncIterator[ServerSentEvent]:
    from sse_starlette import ServerSentEvent

    number = 0
    final = False
    try:
        async for task in follow(
            service.waiters,
            lambda task_id: service.task_for(task_id, owner),
            task_id,
            poll=STREAM_POLL,
            limit=STREAM_LIMIT,
        ):
            number += 1
            final = task.status.is_final
            data = json.dumps(service.task_json(request, task), separators=(",", ":"))
            yield ServerSentEvent(data, event="status", id=str(number))
    except ImageprocError as error:
        # The stream has started: the error can only be told in it, as the JSON an error
        # answer would carry. The client may reconnect (a 503 is transient).
        api = map_error(error)
        data = json.dumps({"error": {"code": api.code, "message": api.message}})
        yield ServerSentEvent(data, event="error", id=str(number + 1))
        return
    if not final:
        yield ServerSentEvent(
            comment=f"open for {STREAM_LIMIT:g} s, the most a stream stays open: reconnect to"
            " follow the task further"
        )


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
