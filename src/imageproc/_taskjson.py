"""A task as JSON: one document for ``GET /status``, the CLI's ``status`` and ``tasks``, and
whatever else shows a task to someone.

Field names and values are the same everywhere: formats in lower case (``"jpeg"``, as output
formats are written in pipelines), the original under ``source`` with its ``key``, timestamps in
RFC 3339 UTC with a ``Z``. What differs is only what a reader may see: an HTTP client gets
signed ``url`` fields and no server-side error details; an operator at the command line gets no
URLs (there is no server to sign them), the real error messages, and the task's ``owner`` and
``available_at``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final

from imageproc._task import Output, Task

__all__ = ["SERVER_SIDE_CODES", "output_json", "rfc3339", "task_json"]

#: Error codes whose messages come from the server side (storage, database, configuration, a
#: bug): a client is told only that such an error happened, since the text may name hosts,
#: paths or SQL.
SERVER_SIDE_CODES: Final = frozenset(
    {"storage_error", "backend_unavailable", "internal_error", "configuration_error"}
)
_SERVER_SIDE_MESSAGE: Final = "a server-side error interrupted processing"

#: Turns a storage key into a URL a reader can fetch it from.
UrlFor = Callable[[str], str]


def task_json(task: Task, *, url: UrlFor | None = None, operator: bool = False) -> dict[str, Any]:
    """``task`` as the JSON document every reader of a task gets.

    With ``url``, the original and every output carry a ``url`` made by it. With ``operator``,
    server-side error messages are shown as they are, and ``owner`` and ``available_at`` are
    added; otherwise such a message reads "a server-side error interrupted processing".
    """
    error = None
    if task.error is not None:
        message = task.error.message
        if task.error.code in SERVER_SIDE_CODES and not operator:
            message = _SERVER_SIDE_MESSAGE
        error = {"code": task.error.code, "message": message}
    display_width, display_height = task.source.display_size
    source: dict[str, Any] = {"key": task.source_key}
    if url is not None:
        source["url"] = url(task.source_key)
    source |= {
        "format": task.source.format.lower(),
        "width": task.source.width,
        "height": task.source.height,
        "orientation": task.source.orientation,
        "display_width": display_width,
        "display_height": display_height,
        "bytes": task.source.bytes,
    }
    document: dict[str, Any] = {
        "id": task.id,
        "status": str(task.status),
        "pipeline": str(task.pipeline),
        "priority": task.priority,
        "attempts": task.attempts,
        "max_attempts": task.max_attempts,
        "error": error,
        "created_at": rfc3339(task.created_at),
        "updated_at": rfc3339(task.updated_at),
        "started_at": rfc3339(task.started_at),
        "finished_at": rfc3339(task.finished_at),
        "source": source,
        "outputs": [output_json(output, url=url) for output in task.outputs],
        "progress": {"variants_done": task.variants_done, "variants": len(task.pipeline.variants)},
        "metadata": dict(task.metadata),
        "reprocess_of": task.reprocess_of,
    }
    if operator:
        document["owner"] = task.owner
        document["available_at"] = rfc3339(task.available_at)
    return document


def output_json(output: Output, *, url: UrlFor | None = None) -> dict[str, Any]:
    """One output as it appears in :func:`task_json`."""
    document: dict[str, Any] = {"name": output.name, "key": output.key}
    if url is not None:
        document["url"] = url(output.key)
    document |= {
        "format": output.format.lower(),
        "width": output.width,
        "height": output.height,
        "bytes": output.bytes,
    }
    if output.blurhash is not None:
        document["blurhash"] = output.blurhash
    if output.dominant_color is not None:
        document["dominant_color"] = output.dominant_color
    return document


def rfc3339(moment: datetime | None) -> str | None:
    """``moment`` (timezone-aware UTC) as RFC 3339 with a ``Z``; None stays None."""
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
