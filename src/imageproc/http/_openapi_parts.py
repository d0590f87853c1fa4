"""The parts :data:`imageproc.http._openapi.OPENAPI` is built from: the task's schema, the
error answers every endpoint shares, and the paths of the webhook and reprocess endpoints."""

from __future__ import annotations

from typing import Any

__all__ = [
    "AUTH_ERRORS",
    "TASK_ID",
    "TASK_RESPONSE",
    "UNAVAILABLE",
    "error",
    "reprocess_path",
    "task_schema",
    "webhook_paths",
]


def task_schema() -> dict[str, Any]:
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


def error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


TASK_ID = {
    "name": "task_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "maxLength": 64},
}
TASK_RESPONSE = {
    "description": "the task",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Task"}}},
}
AUTH_ERRORS = {
    "401": error("missing or unknown API key (when keys are configured)"),
    "429": error("too many missing or unknown API keys from this address (Retry-After)"),
}
UNAVAILABLE = {"503": error("a backend is temporarily unavailable (Retry-After)")}


def webhook_paths() -> dict[str, Any]:
    off = error("this server sends no webhooks (webhooks_off)")
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
                    **AUTH_ERRORS,
                    "404": off,
                    "422": error("a bad status or limit"),
                },
            }
        },
        "/webhooks/resend": {
            "post": {
                "operationId": "resend_webhooks",
                "summary": "Send every dead delivery again, with a fresh schedule",
                "responses": {"202": resent, **AUTH_ERRORS, "404": off},
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
                    **AUTH_ERRORS,
                    "404": error("no such dead delivery (or not yours), or webhooks are off"),
                },
            }
        },
    }


def reprocess_path() -> dict[str, Any]:
    """``POST /tasks/{task_id}/reprocess``."""
    return {
        "/tasks/{task_id}/reprocess": {
            "post": {
                "operationId": "reprocess",
                "summary": "More variants of a task's stored original, as a new task",
                "parameters": [TASK_ID],
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
                    "202": {**TASK_RESPONSE, "description": "the new task, queued"},
                    "200": {
                        **TASK_RESPONSE,
                        "description": "the task itself: it has every variant asked for",
                    },
                    "400": error("a body that is not a JSON object"),
                    **AUTH_ERRORS,
                    "403": error("a priority above the most this API key may ask for"),
                    "404": error("no such task (or not yours)"),
                    "410": error("the task's original is no longer stored (original_gone)"),
                    "413": error("a body over 64 KiB"),
                    "422": error("a bad pipeline, preset, missing_only or priority"),
                    **UNAVAILABLE,
                },
            }
        },
    }
