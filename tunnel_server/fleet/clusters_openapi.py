"""The OpenAPI 3.0 paths of ``/api/v1/clusters``, merged into the server's ``/api/openapi.json``.

Schemas are inline (a part's paths cannot add components); errors and warnings refer to the
document's own ``Error`` and ``Warning``.
"""

from __future__ import annotations

from typing import Any

from tunnel_server.api.views import STATUSES
from tunnel_server.fleet.clusters_api import PHASES, SORT_FIELDS

__all__ = ["OPENAPI_PATHS"]

_NAME_PATTERN = r"^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(kind: str, **extra: Any) -> dict[str, Any]:  # noqa: ANN401 - schema values
    return {"type": kind, "nullable": True, **extra}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref("Error")}}}


_TIME = _nullable("string", format="date-time")
_COUNT = _nullable("integer", minimum=0)
_CLUSTER_PROPERTIES: dict[str, Any] = {
    "name": {"type": "string"},
    "state": {"type": "string", "enum": ["pending", "approved", "revoked"]},
    "status": {
        "type": "string",
        "enum": list(STATUSES),
        "description": "online while the cluster agent's lease is fresh, as for nodes",
    },
    "connected": {"type": "boolean", "description": "a tunnel session is live now"},
    "last_seen": _TIME,
    "last_report": _TIME,
    "status_since": _TIME,
    "offline_reason": _nullable("string"),
    "agent_version": _nullable("string"),
    "cert_expires": _TIME,
    "version": _nullable("string", description="the member's Kubernetes gitVersion"),
    "nodes_total": _COUNT,
    "nodes_ready": _COUNT,
    "pods_total": _COUNT,
    **{f"pods_{phase}": _COUNT for phase in PHASES},
    "cpu_allocatable_cores": _nullable("number"),
    "cpu_requested_cores": _nullable("number", description="non-terminated pods' requests"),
    "memory_allocatable_bytes": _COUNT,
    "memory_requested_bytes": _COUNT,
    "apiserver_healthy": _nullable(
        "boolean", description="the member API server's /readyz; null unless online"
    ),
    "apiserver_latency_ms": _nullable("number"),
    "sampled_at": {**_TIME, "description": "when the agent took the sample shown"},
    "warnings": {"type": "array", "items": _ref("Warning")},
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
            "required": ["created_at", "metrics", "lease_seconds", "report_interval_seconds"],
            "properties": {
                "created_at": _TIME,
                "cert_serial": _nullable("string"),
                "report_interval_seconds": _nullable("number"),
                "lease_seconds": _nullable("number"),
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
_UNAUTHENTICATED = _error(
    "No, a wrong, an expired or a signed-out credential (codes: unauthenticated, "
    "invalid_token, invalid_session, session_expired, session_revoked)"
)
_FORBIDDEN = _error(
    "The caller's role or cluster scope does not allow it (codes: forbidden, cluster_out_of_scope)"
)
_QUERY = [
    {
        "name": "q",
        "in": "query",
        "description": "substring of the cluster name",
        "schema": {"type": "string", "maxLength": 100},
    },
    {"name": "status", "in": "query", "schema": {"type": "string", "enum": list(STATUSES)}},
    {
        "name": "sort",
        "in": "query",
        "description": "field to sort by; '-' in front for descending (empty values last)",
        "schema": {"type": "string", "enum": [*SORT_FIELDS, *("-" + f for f in SORT_FIELDS)]},
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

OPENAPI_PATHS: dict[str, Any] = {
    "/api/v1/clusters": {
        "get": {
            "operationId": "listClusters",
            "summary": "Registered clusters in the caller's scope, with their latest status",
            "parameters": _QUERY,
            "responses": {
                "200": {
                    "description": "One page of clusters",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["total", "offset", "clusters"],
                                "properties": {
                                    "total": {"type": "integer", "minimum": 0},
                                    "offset": {"type": "integer", "minimum": 0},
                                    "clusters": {"type": "array", "items": _CLUSTER},
                                },
                            }
                        }
                    },
                },
                "400": _error("A query parameter out of range (code: bad_parameter)"),
                "401": _UNAUTHENTICATED,
                "403": _FORBIDDEN,
            },
        }
    },
    "/api/v1/clusters/{name}": {
        "get": {
            "operationId": "getCluster",
            "summary": "One registered cluster with every metric its agent reported",
            "parameters": [
                {
                    "name": "name",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string", "pattern": _NAME_PATTERN, "maxLength": 63},
                }
            ],
            "responses": {
                "200": {
                    "description": "The cluster",
                    "content": {"application/json": {"schema": _CLUSTER_DETAIL}},
                },
                "400": _error("Not a valid cluster name (code: bad_name)"),
                "401": _UNAUTHENTICATED,
                "403": _FORBIDDEN,
                "404": _error("No such cluster, or the name is a node's (cluster_not_found)"),
            },
        }
    },
}
