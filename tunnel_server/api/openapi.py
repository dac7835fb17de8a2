"""The OpenAPI 3.0 document of the REST API, served at ``/api/openapi.json``.

Written by hand next to the handlers (``routes.py``) and checked against the running server by
schemathesis in the integration tests, so the two cannot drift apart silently.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from tunnel_server import __version__
from tunnel_server.api.params import MAX_QUERY
from tunnel_server.api.views import SORT_FIELDS, STATUSES
from tunnel_server.app_keys import OPENAPI_EXTRA_KEY
from tunnel_server.status.history import SERIES

_SERIES = [{"rx_bps": "rxBps", "tx_bps": "txBps", "rtt_ms": "rttMs"}.get(c, c) for c in SERIES]
"""History columns as the API names them (``routes.SERIES_NAMES``)."""

NAME_PATTERN = r"^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$"


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(kind: str, **extra: Any) -> dict[str, Any]:  # noqa: ANN401 - schema values
    return {"type": kind, "nullable": True, **extra}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def error(description: str) -> dict[str, Any]:
    """An error answer: an RFC 9457 problem document (``web.errors.problem``)."""
    return {
        "description": description,
        "content": {"application/problem+json": {"schema": ref("Problem")}},
    }


def list_of(item: dict[str, Any]) -> dict[str, Any]:
    """The one list shape (``api.paging``): ``{items: [item], metadata: {continue, ...}}``."""
    return {
        "type": "object",
        "required": ["items", "metadata"],
        "properties": {
            "items": {"type": "array", "items": item},
            "metadata": ref("ListMeta"),
        },
    }


PAGING_PARAMETERS: list[dict[str, Any]] = [
    {
        "name": "limit",
        "in": "query",
        "description": "most items in one page (default 500)",
        "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
    },
    {
        "name": "continue",
        "in": "query",
        "description": "metadata.continue of the previous page, sent with the same other "
        "parameters",
        # Ours are base64url: the pattern keeps a request line under aiohttp's 8 KiB limit
        # (2,048 multi-byte characters would be 24 KB percent-encoded).
        "schema": {"type": "string", "maxLength": 2048, "pattern": "^[A-Za-z0-9_-]*$"},
    },
]
"""What every list route takes (``api.paging.page_params`` reads them)."""
LABEL_SELECTOR_PARAMETER: dict[str, Any] = {
    "name": "labelSelector",
    "in": "query",
    "description": "Kubernetes label selector syntax (a=b,c!=d,e in (f,g),!h)",
    # Printable ASCII, as Kubernetes' syntax is; 2,048 keeps a request line under 8 KiB even
    # percent-encoded.
    "schema": {"type": "string", "maxLength": 2048, "pattern": "^[ -~]*$"},
}
IF_MATCH_PARAMETER: dict[str, Any] = {
    "name": "If-Match",
    "in": "header",
    "description": "apply only while the object is at this ETag (412 precondition_failed else)",
    "schema": {"type": "string", "maxLength": 1024},
}
ETAG_HEADER: dict[str, Any] = {
    "ETag": {"description": "the object's version as a strong tag", "schema": {"type": "string"}}
}


UNAUTHENTICATED = error(
    "No, a wrong, an expired or a signed-out credential (codes: unauthenticated, "
    "invalid_token, token_expired, user_revoked, user_expired, user_unknown, invalid_session, "
    "session_expired, session_revoked)"
)
FORBIDDEN = error(
    "The caller's role may not do this, or the cluster is outside its scope (codes: "
    "forbidden, cluster_out_of_scope); docs/security.md has the table"
)

TIME = nullable("string", format="date-time")
_WARNING = {
    "type": "object",
    "required": ["code", "severity", "message"],
    "properties": {
        "code": {"type": "string"},
        "severity": {"type": "string", "enum": ["critical", "warning", "info"]},
        "message": {"type": "string"},
    },
}
_NODE_PROPERTIES: dict[str, Any] = {
    "name": {"type": "string"},
    "kind": {"type": "string", "enum": ["node", "cluster"]},
    "state": {"type": "string", "enum": ["pending", "approved", "revoked"]},
    "status": {"type": "string", "enum": list(STATUSES)},
    "connected": {"type": "boolean", "description": "a tunnel session is live now"},
    "lastSeenAt": TIME,
    "lastReportAt": TIME,
    "statusChangedAt": TIME,
    "offlineReason": nullable("string"),
    "agentVersion": nullable("string"),
    "certExpiresAt": TIME,
    "os": nullable("string"),
    "kernel": nullable("string"),
    "cpuPercent": nullable("number"),
    "memoryPercent": nullable("number"),
    "diskPercent": nullable("number"),
    "load1": nullable("number"),
    "rttMs": nullable("number"),
    "uptimeSeconds": nullable("number"),
    "warnings": {"type": "array", "items": ref("Warning")},
}
_SCALAR = {
    "nullable": True,
    "oneOf": [{"type": "string"}, {"type": "number"}, {"type": "boolean"}],
}

SCHEMAS: dict[str, Any] = {
    "Problem": {
        "type": "object",
        "description": "RFC 9457 problem details (docs/api.md, 'Errors')",
        "required": ["type", "title", "status", "detail", "reason"],
        "properties": {
            "type": {"type": "string", "description": "tag:edgefleet.io,2026:problem/<reason>"},
            "title": {"type": "string", "description": "the HTTP status phrase"},
            "status": {"type": "integer"},
            "detail": {"type": "string", "description": "what a person should do"},
            "reason": {"type": "string", "description": "stable word for programs"},
            "problems": {
                "type": "array",
                "description": "which parts of the document sent are wrong",
                "items": {
                    "type": "object",
                    "required": ["path", "reason"],
                    "properties": {"path": {"type": "string"}, "reason": {"type": "string"}},
                },
            },
        },
    },
    "ListMeta": {
        "type": "object",
        "required": ["continue"],
        "properties": {
            "continue": {
                "type": "string",
                "nullable": True,
                "description": "send back as ?continue= for the next page; null on the last",
            },
            "remainingItemCount": {"type": "integer", "minimum": 0},
        },
    },
    "Warning": _WARNING,
    "Node": {
        "type": "object",
        "required": list(_NODE_PROPERTIES),
        "properties": _NODE_PROPERTIES,
    },
    "NodeDetail": {
        "allOf": [
            ref("Node"),
            {
                "type": "object",
                "required": [
                    "createdAt",
                    "certSerial",
                    "metrics",
                    "devices",
                    "leaseSeconds",
                    "reportIntervalSeconds",
                ],
                "properties": {
                    "createdAt": TIME,
                    "certSerial": nullable("string"),
                    "reportIntervalSeconds": nullable("number"),
                    "leaseSeconds": nullable("number"),
                    "metrics": {
                        "type": "object",
                        "description": "latest reported metrics, 'group.key' -> scalar",
                        "additionalProperties": _SCALAR,
                    },
                    "devices": {
                        "type": "array",
                        "nullable": True,
                        "description": "null when this server runs no device twins",
                        "items": {"type": "object"},
                    },
                },
            },
        ]
    },
    "NodeList": list_of(ref("Node")),
    "Overview": {
        "type": "object",
        "required": ["generatedAt", "nodes", "warnings"],
        "properties": {
            "generatedAt": {"type": "string", "format": "date-time"},
            "nodes": {
                "type": "object",
                "required": ["total", *STATUSES],
                "properties": {
                    name: {"type": "integer", "minimum": 0} for name in ("total", *STATUSES)
                },
            },
            "warnings": {
                "type": "array",
                "items": {
                    "allOf": [
                        ref("Warning"),
                        {
                            "type": "object",
                            "required": ["node"],
                            "properties": {"node": {"type": "string"}},
                        },
                    ]
                },
            },
        },
    },
    "History": {
        "type": "object",
        "required": ["node", "windowSeconds", "resolutionSeconds", "series", "points"],
        "properties": {
            "node": {"type": "string"},
            "windowSeconds": {"type": "integer"},
            "resolutionSeconds": {"type": "integer", "enum": [60]},
            "series": {"type": "array", "items": {"type": "string", "enum": _SERIES}},
            "points": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["at", "samples", *_SERIES],
                    "properties": {
                        "at": {
                            "type": "string",
                            "format": "date-time",
                            "description": "start of the minute",
                        },
                        "samples": {"type": "integer", "description": "reports averaged"},
                        **{name: nullable("number") for name in _SERIES},
                    },
                },
            },
        },
    },
    "Session": {
        "type": "object",
        "required": ["token", "expiresAt", "ttlSeconds", "user", "role", "clusters"],
        "properties": {
            "token": {"type": "string"},
            "expiresAt": {"type": "string", "format": "date-time"},
            "ttlSeconds": {"type": "number"},
            "user": {"type": "string"},
            "role": {"type": "string", "enum": ["admin", "operator", "viewer"]},
            "clusters": {
                "type": "array",
                "nullable": True,
                "items": {"type": "string"},
                "description": "the clusters the user may reach; null: every cluster",
            },
        },
    },
    "Me": {
        "type": "object",
        "required": ["user", "role", "clusters", "expiresAt"],
        "properties": {
            "user": {"type": "string", "description": "'admin' for the bootstrap admin token"},
            "role": {"type": "string", "enum": ["admin", "operator", "viewer"]},
            "clusters": {"type": "array", "nullable": True, "items": {"type": "string"}},
            "expiresAt": TIME,
        },
    },
    "Token": {
        "type": "object",
        "required": [
            "id",
            "kind",
            "name",
            "status",
            "createdAt",
            "expiresAt",
            "usedAt",
            "revokedAt",
            "requireApproval",
        ],
        "properties": {
            "id": {"type": "string"},
            "kind": {"type": "string", "enum": ["node", "cluster"]},
            "name": {"type": "string"},
            "status": {"type": "string", "enum": ["valid", "used", "expired", "revoked"]},
            "createdAt": {"type": "string", "format": "date-time"},
            "expiresAt": {"type": "string", "format": "date-time"},
            "usedAt": TIME,
            "revokedAt": TIME,
            "requireApproval": {"type": "boolean"},
        },
    },
    "TokenRequest": {
        "type": "object",
        "required": ["name"],
        "additionalProperties": False,
        "description": "manifest: true needs kind: cluster; image goes with manifest: true only",
        "anyOf": [
            {
                "properties": {"manifest": {"type": "boolean", "enum": [False]}},
                "not": {"required": ["image"]},
            },
            {
                "required": ["kind", "manifest"],
                "properties": {
                    "kind": {"type": "string", "enum": ["cluster"]},
                    "manifest": {"type": "boolean", "enum": [True]},
                },
            },
        ],
        "properties": {
            "name": {"type": "string", "pattern": NAME_PATTERN, "maxLength": 63},
            "kind": {"type": "string", "enum": ["node", "cluster"], "default": "node"},
            "ttlSeconds": {
                "type": "number",
                "minimum": 60,
                "maximum": 30 * 86400,
                "default": 3600,
            },
            "requireApproval": {"type": "boolean", "default": False},
            "replace": {
                "type": "boolean",
                "default": False,
                "description": "revoke a joined or pending node of this name at once",
            },
            "manifest": {
                "type": "boolean",
                "default": False,
                "description": "kind cluster only: answer the cluster agent's install manifest",
            },
            "image": {
                "type": "string",
                "minLength": 1,
                "maxLength": 512,
                "pattern": r"^[!-~]+$",
                "description": "with manifest: the EdgeFleet image the member cluster pulls",
            },
        },
    },
    "CreatedToken": {
        "type": "object",
        "required": [
            "id",
            "token",
            "kind",
            "name",
            "expiresAt",
            "requireApproval",
            "joinCommand",
        ],
        "properties": {
            "id": {"type": "string"},
            "token": {"type": "string", "description": "shown once; only its hash is kept"},
            "kind": {"type": "string", "enum": ["node", "cluster"]},
            "name": {"type": "string"},
            "expiresAt": {"type": "string", "format": "date-time"},
            "requireApproval": {"type": "boolean"},
            "joinCommand": {"type": "string"},
            "manifest": {
                "type": "string",
                "description": "the cluster agent's install manifest (YAML), when asked for",
            },
        },
    },
    "AdminToken": {
        "type": "object",
        "required": ["token"],
        "properties": {
            "token": {
                "type": "string",
                "description": "the new admin token, also written to <data-dir>/admin-token",
            }
        },
    },
}

_ROTATE = "/api/v1/admin-token/rotate"
_NODE_ACTIONS = (
    (
        "approve",
        "Approve a pending join: the node fetches its certificate",
        "The node is not pending (code: wrong_state)",
    ),
    (
        "deny",
        "Refuse a pending join: the node becomes revoked, its agent's poll is rejected",
        "The node is not pending (code: wrong_state)",
    ),
    (
        "revoke",
        (
            "Revoke a node or a pending join: its certificates stop working and its tunnel "
            "session ends at once (idempotent)"
        ),
        "Never (revoke is idempotent)",
    ),
)
_TOKEN_ID_PARAM = {
    "name": "id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[a-z0-9]{6}$"},
}
_NAME_PARAM = {
    "name": "name",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": NAME_PATTERN, "maxLength": 63},
}


def _op(
    summary: str,
    responses: dict[str, Any],
    *,
    op_id: str,
    parameters: list[dict[str, Any]] | None = None,
    body: dict[str, Any] | None = None,
    auth: bool = True,
) -> dict[str, Any]:
    operation: dict[str, Any] = {"operationId": op_id, "summary": summary, "responses": responses}
    if auth:
        responses["401"] = UNAUTHENTICATED
        responses.setdefault("403", FORBIDDEN)
    else:
        operation["security"] = []
    if parameters:
        operation["parameters"] = parameters
    if body:
        operation["requestBody"] = {"required": True, "content": {"application/json": body}}
        responses["400"] = error(
            "Malformed body (codes: bad_json, bad_request, bad_name, unknown_field)"
        )
        responses["413"] = error("Body larger than 16 KiB (code: body_too_large)")
    return operation


def list_parameters(
    noun: str, *, statuses: tuple[str, ...], sort_fields: tuple[str, ...]
) -> list[dict[str, Any]]:
    """The query parameters every list route takes (``api.params.list_params`` reads them)."""
    return [
        {
            "name": "q",
            "in": "query",
            "description": f"substring of the {noun} name",
            "schema": {"type": "string", "maxLength": MAX_QUERY},
        },
        {"name": "status", "in": "query", "schema": {"type": "string", "enum": list(statuses)}},
        {
            "name": "sort",
            "in": "query",
            "description": "field to sort by; '-' in front for descending (empty values last)",
            "schema": {"type": "string", "enum": [*sort_fields, *("-" + f for f in sort_fields)]},
        },
        {
            "name": "limit",
            "in": "query",
            "schema": {"type": "integer", "minimum": 1, "maximum": 5000, "default": 1000},
        },
        {
            "name": "offset",
            "in": "query",
            "schema": {"type": "integer", "minimum": 0, "maximum": 10**9, "default": 0},
        },
    ]


def filter_parameters(
    noun: str, *, statuses: tuple[str, ...], sort_fields: tuple[str, ...]
) -> list[dict[str, Any]]:
    """``q``, ``status``, ``sort`` and the paging parameters of a list of named things."""
    return [
        {
            "name": "q",
            "in": "query",
            "description": f"substring of the {noun} name",
            "schema": {"type": "string", "maxLength": MAX_QUERY},
        },
        {"name": "status", "in": "query", "schema": {"type": "string", "enum": list(statuses)}},
        {
            "name": "sort",
            "in": "query",
            "description": "field to sort by (default name); '-' in front for descending "
            "(empty values last either way)",
            "schema": {"type": "string", "enum": [*sort_fields, *("-" + f for f in sort_fields)]},
        },
        *PAGING_PARAMETERS,
    ]


_BODYLESS_ACTION = error(
    "A body that is not empty or {} (codes: bad_json, unknown_field)",
)
_TOO_LARGE = error("Body larger than 16 KiB (code: body_too_large)")


def document(extra_paths: dict[str, Any] | None = None) -> dict[str, Any]:
    """The whole OpenAPI document, with ``extra_paths`` merged into its paths."""
    query = filter_parameters("node", statuses=STATUSES, sort_fields=SORT_FIELDS)
    bad_name = error("Not a valid node name (code: bad_name) or parameter (bad_parameter)")
    not_found = error("No such node (code: node_not_found)")
    paths = _paths(query, bad_name, not_found)
    for path, operations in (extra_paths or {}).items():
        if path in paths:
            raise ValueError(f"OpenAPI path {path} is described twice")
        paths[path] = operations
    # Last: a client that walks the document in order with the admin token (the permissions
    # test, a script) rotates it only after every other call it makes with that token.
    paths[_ROTATE] = paths.pop(_ROTATE)
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "EdgeFleet tunnel server API",
            "version": __version__,
            "description": "Nodes, their status and history, bootstrap tokens, and live "
            "changes. Authenticate with 'Authorization: Bearer <token>': the admin token, a "
            "user token (tunnel-server users create) or a console session token from POST "
            "/api/v1/sessions. Roles admin, operator and viewer; docs/security.md has who may "
            "call what. Errors are RFC 9457 problem documents (application/problem+json) with a "
            "stable 'reason'. See docs/api.md.",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": SCHEMAS,
        },
        "paths": paths,
    }


def _paths(
    query: list[dict[str, Any]],
    bad_name: dict[str, Any],
    not_found: dict[str, Any],
) -> dict[str, Any]:
    return {
        "/api/v1/sessions": {
            "post": _op(
                "Exchange the admin token or a user token for a console session token that "
                "acts as that caller (same role and scope; it never outlives that token)",
                {
                    "201": _json(ref("Session"), "The session token, its expiry and its user"),
                    "403": error(
                        "A session token cannot make a session (code: admin_token_required)"
                    ),
                },
                op_id="createSession",
            )
        },
        "/api/v1/me": {
            "get": _op(
                "Who the credential sent is: user, role, cluster scope, expiry",
                {"200": _json(ref("Me"), "The caller")},
                op_id="getMe",
            )
        },
        "/api/v1/sessions/current": {
            "delete": _op(
                "Sign out: revoke the console session that sends this, at once and for good",
                {
                    "204": {
                        "description": "Signed out (also when it was already signed out or "
                        "expired); its token and live streams stop working now"
                    },
                    "403": error("The admin token is not a session (code: session_token_required)"),
                },
                op_id="deleteSession",
            )
        },
        "/api/v1/overview": {
            "get": _op(
                "Fleet overview: nodes by status and every warning",
                {"200": _json(ref("Overview"), "The overview")},
                op_id="getOverview",
            )
        },
        "/api/v1/nodes": {
            "get": _op(
                "List nodes with their latest status",
                {
                    "200": _json(ref("NodeList"), "One page of nodes"),
                    "400": error(
                        "A query parameter out of range (codes: bad_parameter, bad_continue)"
                    ),
                },
                op_id="listNodes",
                parameters=query,
            )
        },
        "/api/v1/nodes/{name}": {
            "get": _op(
                "One node with all its latest metrics",
                {
                    "200": _json(ref("NodeDetail"), "The node"),
                    "400": bad_name,
                    "404": not_found,
                },
                op_id="getNode",
                parameters=[_NAME_PARAM],
            )
        },
        "/api/v1/nodes/{name}/history": {
            "get": _op(
                "Per-minute CPU, memory, disk, load, network and RTT of one node",
                {
                    "200": _json(ref("History"), "Points, oldest first"),
                    "400": bad_name,
                    "404": not_found,
                },
                op_id="getNodeHistory",
                parameters=[
                    _NAME_PARAM,
                    {
                        "name": "windowSeconds",
                        "in": "query",
                        "description": "seconds back from now (at most the retention, 25 h)",
                        "schema": {
                            "type": "integer",
                            "minimum": 60,
                            "maximum": 90000,
                            "default": 3600,
                        },
                    },
                ],
            )
        },
        **{
            f"/api/v1/nodes/{{name}}/{verb}": {
                "post": _op(
                    summary,
                    {
                        "200": _json(ref("Node"), "The node as it is now"),
                        "400": error(
                            "Not a valid node name (code: bad_name), or a body that is not "
                            "empty or {} (bad_json, unknown_field)"
                        ),
                        "404": not_found,
                        "409": error(conflict),
                        "413": _TOO_LARGE,
                    },
                    op_id=f"{verb}Node",
                    parameters=[_NAME_PARAM],
                )
            }
            for verb, summary, conflict in _NODE_ACTIONS
        },
        "/api/v1/tokens": {
            "get": _op(
                "List bootstrap tokens (never their secrets), newest first",
                {
                    "200": _json(list_of(ref("Token")), "One page of tokens"),
                    "400": error(
                        "A paging parameter is wrong (codes: bad_parameter, bad_continue)"
                    ),
                },
                op_id="listTokens",
                parameters=PAGING_PARAMETERS,
            ),
            "post": _op(
                "Create a single-use bootstrap token for one node or cluster name",
                {
                    "201": {
                        **_json(ref("CreatedToken"), "The token, shown this once"),
                        "headers": {
                            "Location": {
                                "description": "/api/v1/tokens/{id}",
                                "schema": {"type": "string"},
                            }
                        },
                    },
                    "409": error("The name is joined or pending (code: name_taken)"),
                },
                op_id="createToken",
                body={"schema": ref("TokenRequest")},
            ),
        },
        "/api/v1/tokens/{id}": {
            "get": _op(
                "One bootstrap token (never its secret)",
                {
                    "200": _json(ref("Token"), "The token"),
                    "400": error("Not a token id (code: bad_name)"),
                    "404": error("No such token (code: token_not_found)"),
                },
                op_id="getToken",
                parameters=[_TOKEN_ID_PARAM],
            ),
            "delete": _op(
                "Revoke an unused bootstrap token: a join with it is refused (401) from now on",
                {
                    "204": {"description": "Revoked (also when it was revoked already)"},
                    "400": error("Not a token id (code: bad_name)"),
                    "404": error("No such token (code: token_not_found)"),
                    "409": error("The token was used: revoke its node instead (token_used)"),
                },
                op_id="deleteToken",
                parameters=[_TOKEN_ID_PARAM],
            ),
        },
        _ROTATE: {
            "post": _op(
                "Replace the admin token: the old one and the console sessions made from it "
                "are refused (401) from this moment on; the new one is also written to "
                "<data-dir>/admin-token",
                {
                    "200": _json(ref("AdminToken"), "The new admin token, shown this once"),
                    "400": _BODYLESS_ACTION,
                    "413": _TOO_LARGE,
                },
                op_id="rotateAdminToken",
            )
        },
        "/api/v1/events": {
            "get": _op(
                "Live changes as server-sent events (snapshot, nodes, expired, revoked)",
                {
                    "200": {
                        "description": "An endless text/event-stream",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    },
                    "503": error("Too many live streams (code: too_many_streams)"),
                },
                op_id="streamEvents",
            )
        },
    }


async def serve(request: web.Request) -> web.Response:
    extra = request.app.get(OPENAPI_EXTRA_KEY)
    return web.json_response(document(extra), headers={"Cache-Control": "no-cache"})
