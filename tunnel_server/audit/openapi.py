"""OpenAPI paths of ``GET /api/v1/audit`` and ``GET /api/v1/nodes/{name}/events``.

Merged into ``/api/openapi.json`` by ``app.openapi_paths()``; schemas are inline (a part's
paths add no components) and errors refer to the document's ``Problem``.
"""

from __future__ import annotations

from typing import Any

from tunnel_server.api.openapi import (
    FORBIDDEN,
    PAGING_PARAMETERS,
    UNAUTHENTICATED,
    error,
    list_of,
    nullable,
)
from tunnel_server.audit.api import MAX_FILTER
from tunnel_server.status.node_events import EVENT_TYPES

__all__ = ["OPENAPI_PATHS"]

_AT = {"type": "string", "format": "date-time", "description": "when (RFC 3339, UTC)"}
_RECORD_PROPERTIES: dict[str, Any] = {
    "id": {"type": "integer", "description": "increases with time; the list's order"},
    "at": _AT,
    "user": {
        "type": "string",
        "description": "the caller's user name; 'admin' for the bootstrap admin token; "
        "'anonymous' without a valid credential",
    },
    "role": nullable("string", enum=["admin", "operator", "viewer", None]),
    "method": {"type": "string", "enum": ["POST", "PUT", "PATCH", "DELETE"]},
    "route": {
        "type": "string",
        "description": "the route pattern, such as /api/v1/nodes/{name}/approve (the path when "
        "no route matched)",
    },
    "action": {
        "type": "string",
        "description": "what was asked: nodes.approve, tokens.create, tokens.delete, "
        "devices.twin.update, ... (docs/audit.md); 'unknown' when no route matched",
    },
    "target": nullable("string", description="the object the route names (or a create made)"),
    "status": {"type": "integer", "description": "the HTTP status answered"},
    "reason": nullable("string", description="the problem document's reason of a refusal"),
    "requestId": {"type": "string", "description": "the X-Request-Id of the exchange"},
    "peer": nullable("string", description="the client's address as the server saw it"),
}
_RECORD: dict[str, Any] = {
    "type": "object",
    "required": list(_RECORD_PROPERTIES),
    "properties": _RECORD_PROPERTIES,
}
_EVENT: dict[str, Any] = {
    "type": "object",
    "required": ["id", "at", "type", "detail"],
    "properties": {
        "id": {"type": "integer", "description": "increases with time; the list's order"},
        "at": _AT,
        "type": {"type": "string", "enum": list(EVENT_TYPES)},
        "detail": {"type": "string", "description": "a sentence for people; not to be parsed"},
    },
}
_REQUEST_ID_HEADER: dict[str, Any] = {
    "X-Request-Id": {
        "description": "the client's own id when it sent a safe one ([A-Za-z0-9._:-]{1,64}), "
        "else one the server made; every /api/ answer carries it",
        "schema": {"type": "string"},
    }
}


def _filter(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "description": description,
        "schema": {"type": "string", "minLength": 1, "maxLength": MAX_FILTER},
    }


OPENAPI_PATHS: dict[str, Any] = {
    "/api/v1/audit": {
        "get": {
            "operationId": "listAuditRecords",
            "summary": "Every write through the API, newest first (admins only)",
            "parameters": [
                _filter("user", "only this caller ('admin', 'anonymous' or a user's name)"),
                _filter("action", "only this action, such as nodes.approve"),
                _filter("target", "only writes to this object"),
                _filter(
                    "result",
                    "only this outcome: a status (403), a class (4xx) or a problem reason "
                    "(forbidden)",
                ),
                *PAGING_PARAMETERS,
            ],
            "responses": {
                "200": {
                    "description": "one page of records (no remainingItemCount: the log may "
                    "hold a million)",
                    "headers": _REQUEST_ID_HEADER,
                    "content": {"application/json": {"schema": list_of(_RECORD)}},
                },
                "400": error("A bad filter or continue token (codes: bad_parameter, bad_continue)"),
                "401": UNAUTHENTICATED,
                "403": FORBIDDEN,
            },
        }
    },
    "/api/v1/nodes/{name}/events": {
        "get": {
            "operationId": "listNodeEvents",
            "summary": "What happened to a node or cluster: joined, approved, online... newest "
            "first",
            "parameters": [
                {
                    "name": "name",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string", "maxLength": 253},
                },
                *PAGING_PARAMETERS,
            ],
            "responses": {
                "200": {
                    "description": "one page of events",
                    "headers": _REQUEST_ID_HEADER,
                    "content": {"application/json": {"schema": list_of(_EVENT)}},
                },
                "400": error("A bad name or continue token (codes: bad_name, bad_continue)"),
                "401": UNAUTHENTICATED,
                "403": FORBIDDEN,
                "404": error("No such node or cluster (code: node_not_found)"),
            },
        }
    },
}
