"""The OpenAPI 3.0 paths of ``/api/v1/clusters``, merged into the server's ``/api/openapi.json``.

Schemas are inline (a part's paths cannot add components); errors and warnings refer to the
document's own ``Error`` and ``Warning``.
"""

from __future__ import annotations

from typing import Any

from tunnel_server.api.openapi import (
    FORBIDDEN,
    NAME_PATTERN,
    TIME,
    UNAUTHENTICATED,
    error,
    list_parameters,
    nullable,
    ref,
)
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
    "last_seen": TIME,
    "last_report": TIME,
    "status_since": TIME,
    "offline_reason": nullable("string"),
    "agent_version": nullable("string"),
    "cert_expires": TIME,
    "version": nullable("string", description="the member's Kubernetes gitVersion"),
    "nodes_total": _COUNT,
    "nodes_ready": _COUNT,
    "pods_total": _COUNT,
    **{f"pods_{phase}": _COUNT for phase in PHASES},
    "cpu_allocatable_cores": nullable("number"),
    "cpu_requested_cores": nullable("number", description="non-terminated pods' requests"),
    "memory_allocatable_bytes": _COUNT,
    "memory_requested_bytes": _COUNT,
    "apiserver_healthy": nullable(
        "boolean", description="the member API server's /readyz; null unless online"
    ),
    "apiserver_latency_ms": nullable("number"),
    "sampled_at": {**TIME, "description": "when the agent took the sample shown"},
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
            "required": ["created_at", "metrics", "lease_seconds", "report_interval_seconds"],
            "properties": {
                "created_at": TIME,
                "cert_serial": nullable("string"),
                "report_interval_seconds": nullable("number"),
                "lease_seconds": nullable("number"),
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
_QUERY = list_parameters("cluster", statuses=STATUSES, sort_fields=SORT_FIELDS)

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
                "400": error("A query parameter out of range (code: bad_parameter)"),
                "401": UNAUTHENTICATED,
                "403": FORBIDDEN,
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
                    "schema": {"type": "string", "pattern": NAME_PATTERN, "maxLength": 63},
                }
            ],
            "responses": {
                "200": {
                    "description": "The cluster",
                    "content": {"application/json": {"schema": _CLUSTER_DETAIL}},
                },
                "400": error("Not a valid cluster name (code: bad_name)"),
                "401": UNAUTHENTICATED,
                "403": FORBIDDEN,
                "404": error("No such cluster, or the name is a node's (cluster_not_found)"),
            },
        }
    },
}
