"""The OpenAPI 3.1 description of the service, :data:`OPENAPI` (declarative data, hence the
length; the parts it shares are :mod:`imageproc.http._openapi_parts`), and ``GET
/openapi.json``, which serves it.
"""

from __future__ import annotations

from typing import Any, Final

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from imageproc.http._openapi_parts import (
    AUTH_ERRORS,
    TASK_ID,
    TASK_RESPONSE,
    UNAVAILABLE,
    error,
    reprocess_path,
    task_schema,
    webhook_paths,
)
from imageproc.http._service import service_of


async def openapi(request: Request) -> Response:
    """GET /openapi.json: :data:`OPENAPI`."""
    service = service_of(request)
    service.authenticate(request)
    return JSONResponse(OPENAPI)


#: The OpenAPI 3.1 description of every endpoint, served at ``/openapi.json``.
OPENAPI: Final[dict[str, Any]] = {
    "openapi": "3.1.0",
    "info": {
        "title": "imageproc",
        "version": "1",
        "description": "Upload images, follow their processing, fetch the variants.",
    },
    "components": {
        "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "ErrorBody": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
            },
            "Error": {
                "type": "object",
                "required": ["error"],
                "properties": {"error": {"$ref": "#/components/schemas/ErrorBody"}},
            },
            "Task": task_schema(),
            "Accepted": {
                "type": "object",
                "required": ["id", "status", "status_url", "created_at"],
                "properties": {
                    "id": {"type": "string"},
                    "status": {"type": "string"},
                    "status_url": {"type": "string", "format": "uri"},
                    "created_at": {"type": "string", "format": "date-time"},
                },
            },
        },
    },
    "security": [{"apiKey": []}],
    "paths": {
        "/upload": {
            "post": {
                "operationId": "upload",
                "summary": "Store an image and queue a task to make its variants",
                "parameters": [
                    *(
                        {"name": n, "in": "query", "required": False, "schema": {"type": "string"}}
                        for n in (
                            "pipeline",
                            "preset",
                            "priority",
                            "not_before",
                            "metadata",
                            "dedupe",
                            "callback_url",
                        )
                    ),
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string", "minLength": 1, "maxLength": 255},
                        "description": "makes the upload safe to send again: the same key with"
                        " the same request (bytes, pipeline, options) within the retention"
                        " period (24 h by default) is answered as the first was, with the same"
                        " task and no new work; the same key with a different request is a 422"
                        " (idempotency_conflict). Per owner; printable ASCII, quoted or not.",
                    },
                ],
                "requestBody": {
                    "required": True,
                    "description": "a form with the file in 'image' (or the image's URL in"
                    " 'url', fetched now; a urlencoded form then does), or the image as the body"
                    " (then the other fields go in the query)",
                    "content": {
                        "multipart/form-data": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "image": {"type": "string", "contentMediaType": "image/*"},
                                    "url": {
                                        "type": "string",
                                        "format": "uri",
                                        "description": "instead of 'image': where to fetch it"
                                        " from (http or https, public addresses only, at most 3"
                                        " redirects, each checked)",
                                    },
                                    "pipeline": {
                                        "type": "string",
                                        "description": "compact text or JSON form",
                                    },
                                    "preset": {"type": "string"},
                                    "priority": {
                                        "type": "integer",
                                        "minimum": -1000,
                                        "maximum": 1000,
                                    },
                                    "metadata": {
                                        "type": "string",
                                        "description": "a JSON object the task keeps and"
                                        " shows: at most 4 KiB, keys of ASCII letters, digits,"
                                        " _ and -",
                                    },
                                    "callback_url": {
                                        "type": "string",
                                        "format": "uri",
                                        "description": "where the task's status is POSTed,"
                                        " signed (Standard Webhooks), once it ends; http or"
                                        " https to a public address (422 unsafe_url otherwise)",
                                    },
                                    "dedupe": {
                                        "type": "boolean",
                                        "description": "answer with this owner's task for the"
                                        " same bytes and pipeline, if one succeeded or is under"
                                        " way, instead of queueing the work again",
                                    },
                                    "not_before": {
                                        "type": "string",
                                        "description": "no worker takes the task before this"
                                        " time: whole seconds from now, or an RFC 3339 time"
                                        " with its zone; at most 366 days ahead",
                                    },
                                },
                            }
                        },
                        "application/x-www-form-urlencoded": {
                            "schema": {
                                "type": "object",
                                "required": ["url"],
                                "properties": {
                                    "url": {"type": "string", "format": "uri"},
                                    "pipeline": {"type": "string"},
                                    "preset": {"type": "string"},
                                    "callback_url": {"type": "string", "format": "uri"},
                                },
                            }
                        },
                        "image/*": {"schema": {"type": "string", "contentMediaType": "image/*"}},
                    },
                },
                "responses": {
                    "202": {
                        "description": "accepted; follow status_url (also in Location)",
                        "headers": {
                            "Location": {"schema": {"type": "string"}},
                            "Idempotent-Replayed": {
                                "schema": {"type": "string", "enum": ["true"]},
                                "description": "this answer repeats the one given to an earlier"
                                " request under the same Idempotency-Key",
                            },
                        },
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/Accepted"}
                            }
                        },
                    },
                    "400": error("malformed request"),
                    **AUTH_ERRORS,
                    "403": error("a priority above the most this API key may ask for"),
                    "413": error("the upload is over the size limit"),
                    "415": error("not an image, or a format that is not accepted"),
                    "422": error(
                        "a bad pipeline, preset, priority, not_before, metadata, dedupe or"
                        " Idempotency-Key; or an Idempotency-Key already used for a different"
                        " request (idempotency_conflict); a url or callback_url that may not be"
                        " reached (unsafe_url), or a url that could not be fetched"
                        " (fetch_failed)"
                    ),
                    "502": error(
                        "the server at 'url' failed or did not answer in time (fetch_failed;"
                        " Retry-After)"
                    ),
                    "429": error(
                        "the queue is full, in all or for this owner (queue_full); more uploads"
                        " this minute than allowed (rate_limited); too many uploads in progress"
                        " for this API key (too_many_uploads); or too many missing or unknown"
                        " API keys from this address (Retry-After)"
                    ),
                    "408": error("the body paused or came too slowly (imageproc serve)"),
                    **UNAVAILABLE,
                },
            }
        },
        "/status/{task_id}": {
            "get": {
                "operationId": "status",
                "summary": "A task, with signed URLs of its outputs",
                "description": "With `wait=N`, a long-poll: answered as soon as the task is in a"
                " final status (succeeded, failed, dead, cancelled), or with its status as it is"
                " after N seconds, whichever comes first. The end is pushed to the server, not"
                " polled for: the answer comes within milliseconds of it.",
                "parameters": [
                    TASK_ID,
                    {
                        "name": "wait",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "integer", "minimum": 0, "maximum": 60, "default": 0},
                        "description": "seconds to wait for the task to end, 0 to 60 (0: answer"
                        " at once)",
                    },
                ],
                "responses": {
                    "200": TASK_RESPONSE,
                    **AUTH_ERRORS,
                    "404": error("no such task (or not yours)"),
                    "422": error(
                        "wait is not a whole number of seconds from 0 to 60 (invalid_wait)"
                    ),
                    **UNAVAILABLE,
                },
            }
        },
        "/status/{task_id}/events": {
            "get": {
                "operationId": "statusEvents",
                "summary": "A task's status as server-sent events, until it ends",
                "description": "A `text/event-stream`: first an `event: status` with the task as"
                " `GET /status` shows it, then another each time its status changes, the last"
                " one in a final status, after which the server closes the stream. Each event"
                " has an `id:` counting up from 1 in the stream. The end is pushed to the"
                " server; the changes before it (queued to processing) are found by reading the"
                " task about once a second. A stream stays open at most 10 minutes, then ends"
                " with a comment: reconnect to follow the task further. Comments (`: ping`)"
                " keep quiet connections open every 15 seconds. Should the task become"
                " unreadable mid-stream, an `event: error` carries the JSON of an error answer"
                " and ends the stream.",
                "parameters": [TASK_ID],
                "responses": {
                    "200": {
                        "description": "the stream of events",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    },
                    **AUTH_ERRORS,
                    "404": error("no such task (or not yours)"),
                    **UNAVAILABLE,
                },
            }
        },
        "/tasks/{task_id}": {
            "delete": {
                "operationId": "cancel",
                "summary": "Cancel a queued or processing task",
                "parameters": [TASK_ID],
                "responses": {
                    "200": TASK_RESPONSE,
                    **AUTH_ERRORS,
                    "404": error("no such task (or not yours)"),
                    "409": error("the task has already ended"),
                    **UNAVAILABLE,
                },
            }
        },
        "/tasks/{task_id}/retry": {
            "post": {
                "operationId": "retry",
                "summary": "Queue a failed or dead task again",
                "parameters": [TASK_ID],
                "responses": {
                    "200": TASK_RESPONSE,
                    **AUTH_ERRORS,
                    "404": error("no such task (or not yours)"),
                    "409": error("the task is not failed or dead"),
                    "429": error(
                        "the queue is full, in all or for this owner (queue_full), or too many"
                        " missing or unknown API keys from this address (Retry-After)"
                    ),
                    **UNAVAILABLE,
                },
            }
        },
        **reprocess_path(),
        "/image/{image_key}": {
            "parameters": [
                {
                    "name": "image_key",
                    "in": "path",
                    "required": True,
                    "description": "outputs/<task id>/<name>.<ext> or originals/…",
                    "schema": {"type": "string"},
                },
                {"name": "expires", "in": "query", "schema": {"type": "integer"}},
                {"name": "signature", "in": "query", "schema": {"type": "string"}},
            ],
            "get": {
                "operationId": "image",
                "summary": "A stored image (signed URL, or the owner's API key)",
                "security": [{}, {"apiKey": []}],
                "responses": {
                    "200": {
                        "description": "the image",
                        "content": {"image/*": {"schema": {"type": "string"}}},
                    },
                    "304": {"description": "not modified (If-None-Match)"},
                    "400": error("an invalid key"),
                    **AUTH_ERRORS,
                    "403": error("an invalid or expired signature"),
                    "404": error("no such image (or not yours)"),
                    **UNAVAILABLE,
                },
            },
            "head": {
                "operationId": "imageHead",
                "summary": "The headers of a stored image",
                "security": [{}, {"apiKey": []}],
                "responses": {
                    "200": {"description": "the image's headers"},
                    "304": {"description": "not modified"},
                    "400": {"description": "an invalid key"},
                    "401": {"description": "missing or unknown API key"},
                    "403": {"description": "an invalid or expired signature"},
                    "404": {"description": "no such image"},
                    "429": {"description": "too many missing or unknown API keys from here"},
                },
            },
        },
        "/healthz": {
            "get": {
                "operationId": "healthz",
                "summary": "The process is up",
                "security": [{}],
                "responses": {"200": {"description": "alive"}},
            }
        },
        "/readyz": {
            "get": {
                "operationId": "readyz",
                "summary": "The task database and storage are reachable",
                "responses": {
                    "200": {"description": "ready"},
                    **AUTH_ERRORS,
                    "503": error("not ready"),
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics",
                "responses": {
                    "200": {
                        "description": "the text exposition format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    **AUTH_ERRORS,
                    "404": error("metrics are not enabled"),
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                "responses": {"200": {"description": "OpenAPI 3.1"}, **AUTH_ERRORS},
            }
        },
        **webhook_paths(),
    },
}
