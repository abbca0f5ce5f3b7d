"""The admin API described as an OpenAPI 3 document, served at ``/console/openapi.json``.

Each call says how it is authorised (the Bearer token, or the console's session cookie
with its CSRF token on a change), what it takes and what it answers. A test checks that
every admin route is described here and that the document is valid.
"""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]

_ERROR = {"$ref": "#/components/schemas/Error"}
_OBJECT: Schema = {"type": "object", "additionalProperties": True}


def _answer(description: str, schema: Schema | None = None) -> Schema:
    return {
        "description": description,
        "content": {"application/json": {"schema": schema or _OBJECT}},
    }


def _errors(*codes: int) -> dict[str, Schema]:
    why = {
        400: "bad input, named in error",
        401: "no admin token, and no console session",
        403: "a console change without its CSRF token or from another origin",
        404: "not found, or the admin API is off (no admin token configured)",
        409: "found, but it cannot be done (e.g. a failed job of another connection)",
        413: "a body over 64 KiB",
        503: "a store does not answer (Redis or the database)",
    }
    return {str(c): _answer(why[c], _ERROR) for c in (401, 404, *codes)}


def _param(name: str, where: str, description: str, schema: Schema | None = None) -> Schema:
    return {
        "name": name,
        "in": where,
        "required": where == "path",
        "description": description,
        "schema": schema or {"type": "string"},
    }


_INDEX = _param("index", "path", "the instance's 0-based index", {"type": "integer", "minimum": 0})
_SESSION = _param("id", "path", "a session id: 1-128 of A-Z a-z 0-9 _ . : @ -")
_ITEM = _param("id", "path", "a failed job's uuid, or a dead letter's id")


def _call(
    summary: str,
    answer: str,
    *codes: int,
    params: list[Schema] | None = None,
    body: Schema | None = None,
) -> Schema:
    op: Schema = {
        "summary": summary,
        "responses": {"200": _answer(answer), **_errors(*codes)},
    }
    if params:
        op["parameters"] = params
    if body is not None:
        op["requestBody"] = {
            "required": False,
            "content": {"application/json": {"schema": body}},
        }
    return op


def document() -> Schema:
    """The OpenAPI 3.0 document of the admin API."""
    limit = _param("limit", "query", "at most this many", {"type": "integer", "minimum": 1})
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "whatsapp-gateway admin API",
            "version": "1",
            "description": (
                "The fleet, pins, queues, failed jobs and webhook dead letters. Off (404)"
                " while no admin token is configured."
            ),
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}, {"console": []}],
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "admin_token"},
                "console": {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": "wa_console",
                    "description": (
                        "A console session (POST /console/login); a change also needs the"
                        " session's X-CSRF-Token header and this origin in Origin."
                    ),
                },
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["success", "error"],
                    "properties": {
                        "success": {"type": "boolean", "enum": [False]},
                        "error": {"type": "string"},
                    },
                },
            },
        },
        "paths": {
            "/gateway/instances": {
                "get": _call(
                    "Every instance: up, draining, sessions, memory, last error and when",
                    "instances",
                )
            },
            "/gateway/distribution": {
                "get": _call(
                    "Sessions per instance, the spread against the mean (balanced: under"
                    " 20 %), and where the next session would go",
                    "the distribution",
                )
            },
            "/gateway/sessions": {
                "get": _call(
                    "Sessions on the instances and in the pins, searched",
                    "sessions",
                    400,
                    params=[
                        _param("q", "query", "a part of the session id"),
                        _param("workspace", "query", "a workspace id"),
                        _param("instance", "query", "an instance URL or index"),
                        _param("status", "query", "a status, e.g. connected"),
                        limit,
                    ],
                )
            },
            "/gateway/sessions/{id}": {
                "get": _call("The session's pin", "the pin", 400, params=[_SESSION]),
                "put": _call(
                    "Move a pin by hand",
                    "the new pin, and the previous instance",
                    400,
                    403,
                    413,
                    params=[_SESSION],
                    body={
                        "type": "object",
                        "required": ["instance"],
                        "properties": {"instance": {"type": "string"}},
                    },
                ),
            },
            "/gateway/instances/{index}/drain": {
                "post": _call(
                    "The instance keeps its sessions and gets no new ones",
                    "the instance",
                    400,
                    403,
                    params=[_INDEX],
                )
            },
            "/gateway/instances/{index}/undrain": {
                "post": _call(
                    "It takes new sessions again", "the instance", 400, 403, params=[_INDEX]
                )
            },
            "/gateway/reconcile": {"post": _call("Reconcile now", "the corrections made", 403)},
            "/gateway/queues": {
                "get": _call(
                    "Per queue: waiting, delayed, reserved, the oldest job's age, jobs done,"
                    " failed and retried in the last minutes; the failed count; the webhook"
                    " backlog",
                    "the queues",
                    503,
                )
            },
            "/gateway/failed": {
                "get": _call(
                    "Failed jobs, newest first, one page",
                    "the page, and the total of the filter",
                    400,
                    503,
                    params=[
                        _param("queue", "query", "only this queue"),
                        limit,
                        _param("offset", "query", "skip this many", {"type": "integer"}),
                    ],
                )
            },
            "/gateway/failed/{id}": {
                "get": _call("One failed job whole", "the job", 400, 503, params=[_ITEM]),
                "delete": _call("Forget it", "forgotten", 400, 403, 503, params=[_ITEM]),
            },
            "/gateway/failed/{id}/retry": {
                "post": _call(
                    "Push it back onto its queue, attempts reset",
                    "retried",
                    400,
                    403,
                    409,
                    413,
                    503,
                    params=[_ITEM],
                    body={
                        "type": "object",
                        "properties": {
                            "resend": {
                                "type": "boolean",
                                "description": "a fresh uuid: sent again for real",
                            }
                        },
                    },
                )
            },
            "/gateway/dead-letters": {
                "get": _call("Dead-lettered webhook events, oldest first", "them", 503)
            },
            "/gateway/dead-letters/{id}": {
                "get": _call("One dead letter whole", "it", 400, 503, params=[_ITEM]),
                "delete": _call("Drop it", "dropped", 400, 403, 503, params=[_ITEM]),
            },
            "/gateway/dead-letters/{id}/retry": {
                "post": _call(
                    "Deliver it again, at the end of its session's lane",
                    "retried",
                    400,
                    403,
                    503,
                    params=[_ITEM],
                )
            },
        },
    }
