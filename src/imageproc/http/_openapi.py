"""The OpenAPI 3.1 description of the service, :data:`OPENAPI` (declarative data, hence the
length), with the schema helpers that build it and ``GET /openapi.json``, which serves it.
"""

from __future__ import annotations

from typing import Any, Final

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from imageproc.http._service import service_of


async def openapi(request: Request) -> Response:
    """GET /openapi.json: :data:`OPENAPI`."""
    service = service_of(request)
    service.authenticate(request)
    return JSONResponse(OPENAPI)


def _task_schema() -> dict[str, Any]:
    timestamp = {"type": ["string", "null"], "format": "date-time"}
    image: dict[str, Any] = {
        "key": {"type": "string"},
        "url": {"type": "string", "format": "uri"},
        "format": {"type": "string"},
        "width": {"type": "integer"},
        "height": {"type": "integer"},
        "bytes": {"type": "integer"},
    }
    source = {
        "type": "object",
        "required": [*image, "orientation", "display_width", "display_height"],
        "properties": {
            **image,
            "orientation": {"type": "integer", "minimum": 1, "maximum": 8},
            "display_width": {"type": "integer"},
            "display_height": {"type": "integer"},
        },
    }
    output = {
        "type": "object",
        "required": ["name", *image],
        "properties": {
            **image,
            "name": {"type": "string"},
            "blurhash": {"type": "string"},
            "dominant_color": {"type": "string", "pattern": "^#[0-9a-f]{6}$"},
        },
    }
    return {
        "type": "object",
        "required": [
            "id",
            "status",
            "pipeline",
            "priority",
            "attempts",
            "max_attempts",
            "error",
            "created_at",
            "updated_at",
            "started_at",
            "finished_at",
            "source",
            "outputs",
            "progress",
            "metadata",
            "reprocess_of",
        ],
        "properties": {
            "id": {"type": "string"},
            "status": {
                "type": "string",
                "enum": ["queued", "processing", "succeeded", "failed", "dead", "cancelled"],
            },
            "pipeline": {"type": "string"},
            "attempts": {"type": "integer"},
            "max_attempts": {"type": "integer"},
            "priority": {"type": "integer"},
            "error": {"oneOf": [{"type": "null"}, {"$ref": "#/components/schemas/ErrorBody"}]},
            "created_at": {"type": "string", "format": "date-time"},
            "updated_at": {"type": "string", "format": "date-time"},
            "started_at": timestamp,
            "finished_at": timestamp,
            "source": source,
            "outputs": {"type": "array", "items": output},
            "progress": {
                "type": "object",
                "required": ["variants_done", "variants"],
                "description": "how many of the pipeline's variants are made: reported while"
                " processing (at most twice a second), all of them once succeeded",
                "properties": {
                    "variants_done": {"type": "integer", "minimum": 0},
                    "variants": {"type": "integer", "minimum": 1},
                },
            },
            "metadata": {
                "type": "object",
                "description": "what the application attached at upload ({} if nothing)",
            },
            "reprocess_of": {
                "type": ["string", "null"],
                "description": "the task whose original this one makes more variants of",
            },
        },
    }


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


_TASK_ID = {
    "name": "task_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "maxLength": 64},
}
_TASK_RESPONSE = {
    "description": "the task",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Task"}}},
}
_AUTH_ERRORS = {
    "401": _error("missing or unknown API key (when keys are configured)"),
    "429": _error("too many missing or unknown API keys from this address (Retry-After)"),
}
_UNAVAILABLE = {"503": _error("a backend is temporarily unavailable (Retry-After)")}


def _webhook_paths() -> dict[str, Any]:
    off = _error("this server sends no webhooks (webhooks_off)")
    resent = {
        "description": "how many deliveries are due again",
        "content": {
            "application/json": {
                "schema": {"type": "object", "properties": {"resent": {"type": "integer"}}}
            }
        },
    }
    return {
        "/webhooks": {
            "get": {
                "operationId": "webhooks",
                "summary": "Webhook deliveries (the dead ones by default), most recent first",
                "parameters": [
                    {
                        "name": "status",
                        "in": "query",
                        "schema": {"enum": ["pending", "delivered", "dead"], "default": "dead"},
                    },
                    {"name": "task_id", "in": "query", "schema": {"type": "string"}},
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 500},
                    },
                ],
                "responses": {
                    "200": {
                        "description": "the deliveries: where each went, its tries, why the"
                        " last one failed",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    },
                    **_AUTH_ERRORS,
                    "404": off,
                    "422": _error("a bad status or limit"),
                },
            }
        },
        "/webhooks/resend": {
            "post": {
                "operationId": "resend_webhooks",
                "summary": "Send every dead delivery again, with a fresh schedule",
                "responses": {"202": resent, **_AUTH_ERRORS, "404": off},
            }
        },
        "/webhooks/{delivery_id}/resend": {
            "post": {
                "operationId": "resend_webhook",
                "summary": "Send one dead delivery again (the same webhook-id)",
                "parameters": [
                    {
                        "name": "delivery_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                    }
                ],
                "responses": {
                    "202": resent,
                    **_AUTH_ERRORS,
                    "404": _error("no such dead delivery (or not yours), or webhooks are off"),
                },
            }
        },
    }


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
            "Task": _task_schema(),
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
                    "400": _error("malformed request"),
                    **_AUTH_ERRORS,
                    "403": _error("a priority above the most this API key may ask for"),
                    "413": _error("the upload is over the size limit"),
                    "415": _error("not an image, or a format that is not accepted"),
                    "422": _error(
                        "a bad pipeline, preset, priority, not_before, metadata, dedupe or"
                        " Idempotency-Key; or an Idempotency-Key already used for a different"
                        " request (idempotency_conflict); a url or callback_url that may not be"
                        " reached (unsafe_url), or a url that could not be fetched"
                        " (fetch_failed)"
                    ),
                    "502": _error(
                        "the server at 'url' failed or did not answer in time (fetch_failed;"
                        " Retry-After)"
                    ),
                    "429": _error(
                        "the queue is full, in all or for this owner (queue_full); more uploads"
                        " this minute than allowed (rate_limited); too many uploads in progress"
                        " for this API key (too_many_uploads); or too many missing or unknown"
                        " API keys from this address (Retry-After)"
                    ),
                    "408": _error("the body paused or came too slowly (imageproc serve)"),
                    **_UNAVAILABLE,
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
                    _TASK_ID,
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
                    "200": _TASK_RESPONSE,
                    **_AUTH_ERRORS,
                    "404": _error("no such task (or not yours)"),
                    "422": _error(
                        "wait is not a whole number of seconds from 0 to 60 (invalid_wait)"
                    ),
                    **_UNAVAILABLE,
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
                "parameters": [_TASK_ID],
                "responses": {
                    "200": {
                        "description": "the stream of events",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    },
                    **_AUTH_ERRORS,
                    "404": _error("no such task (or not yours)"),
                    **_UNAVAILABLE,
                },
            }
        },
        "/tasks/{task_id}": {
            "delete": {
                "operationId": "cancel",
                "summary": "Cancel a queued or processing task",
                "parameters": [_TASK_ID],
                "responses": {
                    "200": _TASK_RESPONSE,
                    **_AUTH_ERRORS,
                    "404": _error("no such task (or not yours)"),
                    "409": _error("the task has already ended"),
                    **_UNAVAILABLE,
                },
            }
        },
        "/tasks/{task_id}/retry": {
            "post": {
                "operationId": "retry",
                "summary": "Queue a failed or dead task again",
                "parameters": [_TASK_ID],
                "responses": {
                    "200": _TASK_RESPONSE,
                    **_AUTH_ERRORS,
                    "404": _error("no such task (or not yours)"),
                    "409": _error("the task is not failed or dead"),
                    "429": _error(
                        "the queue is full, in all or for this owner (queue_full), or too many"
                        " missing or unknown API keys from this address (Retry-After)"
                    ),
                    **_UNAVAILABLE,
                },
            }
        },
        "/tasks/{task_id}/reprocess": {
            "post": {
                "operationId": "reprocess",
                "summary": "More variants of a task's stored original, as a new task",
                "parameters": [_TASK_ID],
                "requestBody": {
                    "required": False,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "additionalProperties": False,
                                "properties": {
                                    "preset": {"type": "string"},
                                    "pipeline": {"type": ["string", "object"]},
                                    "missing_only": {
                                        "type": "boolean",
                                        "description": "only the variants the task does not"
                                        " have yet (the default)",
                                    },
                                    "priority": {"type": "integer"},
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "202": {**_TASK_RESPONSE, "description": "the new task, queued"},
                    "200": {
                        **_TASK_RESPONSE,
                        "description": "the task itself: it has every variant asked for",
                    },
                    "400": _error("a body that is not a JSON object"),
                    **_AUTH_ERRORS,
                    "403": _error("a priority above the most this API key may ask for"),
                    "404": _error("no such task (or not yours)"),
                    "410": _error("the task's original is no longer stored (original_gone)"),
                    "413": _error("a body over 64 KiB"),
                    "422": _error("a bad pipeline, preset, missing_only or priority"),
                    **_UNAVAILABLE,
                },
            }
        },
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
                    "400": _error("an invalid key"),
                    **_AUTH_ERRORS,
                    "403": _error("an invalid or expired signature"),
                    "404": _error("no such image (or not yours)"),
                    **_UNAVAILABLE,
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
                    **_AUTH_ERRORS,
                    "503": _error("not ready"),
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
                    **_AUTH_ERRORS,
                    "404": _error("metrics are not enabled"),
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                "responses": {"200": {"description": "OpenAPI 3.1"}, **_AUTH_ERRORS},
            }
        },
        **_webhook_paths(),
    },
}
