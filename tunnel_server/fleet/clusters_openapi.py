"""The OpenAPI 3.0 paths of ``/api/v1/clusters``, merged into the server's ``/api/openapi.json``.

Schemas are inline (a part's paths cannot add components); errors and warnings refer to the
document's own ``Problem`` and ``Warning``.
"""

from __future__ import annotations

from typing import Any

from tunnel_server.api.openapi import (
    FORBIDDEN,
    NAME_PATTERN,
    PAGING_PARAMETERS,
    TIME,
    UNAUTHENTICATED,
    error,
    list_of,
    nullable,
    ref,
)
from tunnel_server.api.params import MAX_QUERY
from tunnel_server.api.views import STATUSES
from tunnel_server.fleet.clusters_api import PHASES, SORT_FIELDS

__all__ = ["OPENAPI_PATHS"]

_COUNT = nullable("integer", minimum=0)
_CLUSTER_PROPERTIES: dict[str, Any] = {
    "name": {"type": "string"},
    "state": {"type": "string", "enum": ["pending", "approved", "revoked"]},
    "status": {
        "type": "string",
        "enum": list(STATUSES),
        "description": "online while the cluster agent's lease is fresh, as for nodes",
    },
    "connected": {"type": "boolean", "description": "a tunnel session is live now"},
    "lastSeenAt": TIME,
    "lastReportAt": TIME,
    "statusChangedAt": TIME,
    "offlineReason": nullable("string"),
    "agentVersion": nullable("string"),
    "certExpiresAt": TIME,
    "version": nullable("string", description="the member's Kubernetes gitVersion"),
    "nodesTotal": _COUNT,
    "nodesReady": _COUNT,
    "podsTotal": _COUNT,
    **{f"pods{phase.title()}": _COUNT for phase in PHASES},
    "cpuAllocatableCores": nullable("number"),
    "cpuRequestedCores": nullable("number", description="non-terminated pods' requests"),
    "memoryAllocatableBytes": _COUNT,
    "memoryRequestedBytes": _COUNT,
    "apiserverHealthy": nullable(
        "boolean", description="the member API server's /readyz; null unless online"
    ),
    "apiserverLatencyMs": nullable("number"),
    "sampledAt": {**TIME, "description": "when the agent took the sample shown"},
    "warnings": {"type": "array", "items": ref("Warning")},
}
_CLUSTER: dict[str, Any] = {
    "type": "object",
    "required": list(_CLUSTER_PROPERTIES),
    "properties": _CLUSTER_PROPERTIES,
}
_CLUSTER_DETAIL: dict[str, Any] = {
    "allOf": [
        _CLUSTER,
        {
            "type": "object",
            "required": ["createdAt", "metrics", "leaseSeconds", "reportIntervalSeconds"],
            "properties": {
                "createdAt": TIME,
                "certSerial": nullable("string"),
                "reportIntervalSeconds": nullable("number"),
                "leaseSeconds": nullable("number"),
                "metrics": {
                    "type": "object",
                    "description": "every key the cluster agent reported, 'group.key' -> scalar",
                    "additionalProperties": {
                        "nullable": True,
                        "oneOf": [{"type": "string"}, {"type": "number"}, {"type": "boolean"}],
                    },
                },
            },
        },
    ]
}
_QUERY: list[dict[str, Any]] = [
    {
        "name": "q",
        "in": "query",
        "description": "substring of the cluster name",
        "schema": {"type": "string", "maxLength": MAX_QUERY},
    },
    {"name": "status", "in": "query", "schema": {"type": "string", "enum": list(STATUSES)}},
    {
        "name": "sort",
        "in": "query",
        "description": "field to sort by; '-' in front for descending (empty values last)",
        "schema": {"type": "string", "enum": [*SORT_FIELDS, *("-" + f for f in SORT_FIELDS)]},
    },
    *PAGING_PARAMETERS,
]
_NAME: dict[str, Any] = {
    "name": "name",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": NAME_PATTERN, "maxLength": 63},
}
_DETAIL_ANSWER = {
    "description": "The cluster",
    "content": {"application/json": {"schema": _CLUSTER_DETAIL}},
}
_NOT_FOUND = error("No such cluster, or the name is a node's (cluster_not_found)")


def _action(verb: str, summary: str) -> dict[str, Any]:
    return {
        "post": {
            "operationId": f"{verb}Cluster",
            "summary": summary,
            "parameters": [_NAME],
            "requestBody": {
                "required": False,
                "description": "no fields: send no body or {}",
                "content": {
                    "application/json": {
                        "schema": {"type": "object", "additionalProperties": False}
                    }
                },
            },
            "responses": {
                "200": {**_DETAIL_ANSWER, "description": "The cluster after the change"},
                "400": error(
                    "Not a valid cluster name (bad_name), a body that is not a JSON object "
                    "(bad_json) or has fields (unknown_field)"
                ),
                "401": UNAUTHENTICATED,
                "403": FORBIDDEN,
                "404": _NOT_FOUND,
                "409": error(
                    "The cluster is not in a state this action starts from (wrong_state; "
                    "`state` says which it is in)"
                ),
                "413": error("Body larger than 16 KiB (code: body_too_large)"),
            },
        }
    }


OPENAPI_PATHS: dict[str, Any] = {
    "/api/v1/clusters": {
        "get": {
            "operationId": "listClusters",
            "summary": "Registered clusters in the caller's scope, with their latest status",
            "parameters": _QUERY,
            "responses": {
                "200": {
                    "description": "One page of clusters",
                    "content": {"application/json": {"schema": list_of(_CLUSTER)}},
                },
                "400": error(
                    "A query parameter out of range (bad_parameter) or a continue token of "
                    "another query (bad_continue)"
                ),
                "401": UNAUTHENTICATED,
                "403": FORBIDDEN,
            },
        }
    },
    "/api/v1/clusters/{name}": {
        "get": {
            "operationId": "getCluster",
            "summary": "One registered cluster with every metric its agent reported",
            "parameters": [_NAME],
            "responses": {
                "200": _DETAIL_ANSWER,
                "400": error("Not a valid cluster name (code: bad_name)"),
                "401": UNAUTHENTICATED,
                "403": FORBIDDEN,
                "404": _NOT_FOUND,
            },
        }
    },
    "/api/v1/clusters/{name}/approve": _action(
        "approve", "Let a pending cluster's agent fetch its certificate (operator, in scope)"
    ),
    "/api/v1/clusters/{name}/deny": _action(
        "deny", "Reject a pending cluster's join (operator, in scope)"
    ),
    "/api/v1/clusters/{name}/revoke": _action(
        "revoke",
        "Revoke a cluster: its agent's session is cut off at once and its certificates stop "
        "working (operator, in scope; idempotent)",
    ),
}
