"""The OpenAPI 3.0 paths of a cluster's NodePools and ResourcePolicies (``elastic_view``).

Merged into ``/api/openapi.json`` by ``app.openapi_paths()``; schemas are inline (a part's
paths cannot add components); errors refer to the document's own ``Problem``.
"""

from __future__ import annotations

from typing import Any

from tunnel_server.api.openapi import (
    NAME_PATTERN,
    PAGING_PARAMETERS,
    TIME,
    UNAUTHENTICATED,
    error,
    list_of,
    nullable,
)
from tunnel_server.fleet.elastic_shape import MAX_CONDITIONS, MAX_UNITS, PROVIDERS
from tunnel_server.fleet.elastic_view import NAMESPACE_PATTERN

__all__ = ["OPENAPI_PATHS"]

_COUNT = nullable("integer", minimum=0)
_CONDITION: dict[str, Any] = {
    "type": "object",
    "required": ["type", "status", "reason", "message", "lastTransitionAt"],
    "properties": {
        "type": {"type": "string"},
        "status": {"type": "string", "description": "True, False or Unknown"},
        "reason": nullable("string"),
        "message": nullable("string"),
        "lastTransitionAt": TIME,
    },
}
_CONDITIONS: dict[str, Any] = {
    "type": "array",
    "maxItems": MAX_CONDITIONS,
    "items": _CONDITION,
    "description": "the object's status conditions as the cluster agent wrote them",
}
_REPORTED: dict[str, Any] = {
    "type": "boolean",
    "description": "the cluster agent has written a status (false: counts are null)",
}
_POOL_PROPERTIES: dict[str, Any] = {
    "name": {"type": "string"},
    "createdAt": TIME,
    "priority": nullable("integer", description="higher grows first and shrinks last"),
    "min": _COUNT,
    "max": _COUNT,
    "provider": nullable("string", enum=[*PROVIDERS, None]),
    "nodeCapacity": {
        "type": "object",
        "description": "the shape of each node the pool makes (Kubernetes quantities)",
        "required": ["cpu", "memory", "pods"],
        "properties": {
            "cpu": nullable("string"),
            "memory": nullable("string"),
            "pods": nullable("string"),
        },
    },
    "reported": _REPORTED,
    "nodes": nullable(
        "integer", minimum=0, description="registered nodes (being removed included)"
    ),
    "creating": nullable("integer", minimum=0, description="nodes on their way"),
    "removing": nullable("integer", minimum=0, description="nodes being drained and deleted"),
    "conditions": _CONDITIONS,
}
_POOL: dict[str, Any] = {
    "type": "object",
    "required": list(_POOL_PROPERTIES),
    "properties": _POOL_PROPERTIES,
}
_UNIT: dict[str, Any] = {
    "type": "object",
    "required": ["name", "max", "pods"],
    "properties": {
        "name": {"type": "string"},
        "max": nullable(
            "integer", minimum=0, description="pods of one group at most; null: no limit"
        ),
        "pods": nullable(
            "integer", minimum=0, description="pods in the unit now; null: not reported yet"
        ),
    },
}
_POLICY_PROPERTIES: dict[str, Any] = {
    "namespace": {"type": "string"},
    "name": {"type": "string"},
    "createdAt": TIME,
    "generation": _COUNT,
    "observedGeneration": nullable(
        "integer",
        minimum=0,
        description="the generation the status was computed for (below generation: stale)",
    ),
    "reported": _REPORTED,
    "units": {
        "type": "array",
        "maxItems": MAX_UNITS,
        "items": _UNIT,
        "description": "in the order pods prefer them",
    },
    "groups": nullable(
        "integer", minimum=0, description="pod groups counted apart (matchLabelKeys)"
    ),
    "waiting": nullable("integer", minimum=0, description="pods held back: every unit full"),
    "outside": nullable("integer", minimum=0, description="live pods in no unit"),
    "conditions": _CONDITIONS,
}
_POLICY: dict[str, Any] = {
    "type": "object",
    "required": list(_POLICY_PROPERTIES),
    "properties": _POLICY_PROPERTIES,
}
_NAME: dict[str, Any] = {
    "name": "name",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": NAME_PATTERN, "maxLength": 63},
}
_NAMESPACE: dict[str, Any] = {
    "name": "namespace",
    "in": "query",
    "description": "only this namespace's policies (default: every namespace the caller may read)",
    "schema": {"type": "string", "pattern": NAMESPACE_PATTERN, "maxLength": 63},
}


def _errors(plural: str) -> dict[str, Any]:
    return {
        "400": error(
            "Not a valid cluster name (bad_name), a query parameter out of range "
            "(bad_parameter) or a continue token of another query (bad_continue)"
        ),
        "401": UNAUTHENTICATED,
        "403": error(
            "The caller's role or scope (forbidden, cluster_out_of_scope), or the member "
            f"cluster's RBAC refused to list {plural} for the impersonated role "
            "(member_forbidden: the detail quotes the member)"
        ),
        "404": error(
            "No such cluster, or the name is a node's (cluster_not_found); the elastic CRDs "
            "are not installed in the cluster (elastic_not_installed); its agent does not "
            "serve its API server (apiserver_not_served)"
        ),
        "410": error("The member no longer knows the continue token (expired): list again"),
        "502": error(
            "The agent or the tunnel failed (cluster_unreachable), the member answered "
            "something else than a list (bad_upstream, member_error), or more than the "
            "answer limit (member_answer_too_large)"
        ),
        "503": error("The cluster's agent has no tunnel session now (cluster_offline)"),
        "504": error("The member did not answer in time (member_timeout)"),
    }


OPENAPI_PATHS: dict[str, Any] = {
    "/api/v1/clusters/{name}/nodepools": {
        "get": {
            "operationId": "listClusterNodePools",
            "summary": "The member cluster's NodePools with their nodes and conditions, read "
            "live through its tunnel as the caller",
            "parameters": [_NAME, *PAGING_PARAMETERS],
            "responses": {
                "200": {
                    "description": "One page of NodePools, by name",
                    "content": {"application/json": {"schema": list_of(_POOL)}},
                },
                **_errors("nodepools"),
            },
        }
    },
    "/api/v1/clusters/{name}/resourcepolicies": {
        "get": {
            "operationId": "listClusterResourcePolicies",
            "summary": "The member cluster's ResourcePolicies with pods per unit and "
            "conditions, read live through its tunnel as the caller",
            "parameters": [_NAME, _NAMESPACE, *PAGING_PARAMETERS],
            "responses": {
                "200": {
                    "description": "One page of ResourcePolicies, by namespace and name",
                    "content": {"application/json": {"schema": list_of(_POLICY)}},
                },
                **_errors("resourcepolicies"),
            },
        }
    },
}
