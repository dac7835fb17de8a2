"""The OpenAPI 3.0 paths of the device routes, merged into the server's ``/api/openapi.json``."""

from __future__ import annotations

from typing import Any

from tunnel_server.api.openapi import (
    ETAG_HEADER,
    FORBIDDEN,
    IF_MATCH_PARAMETER,
    PAGING_PARAMETERS,
    TIME,
    UNAUTHENTICATED,
    error,
    list_of,
    nullable,
)

__all__ = ["OPENAPI_PATHS"]

_SECTION: dict[str, Any] = {
    "type": "object",
    "description": "property values plus $version (grows by one per change) and $metadata "
    "($lastUpdated per key, epoch seconds: the twin document's own keys)",
    "required": ["$version", "$metadata"],
    "properties": {"$version": {"type": "integer"}, "$metadata": {"type": "object"}},
    "additionalProperties": True,
}
_STATE = {"type": "string", "enum": ["active", "removed", "revoked"]}
_SUMMARY_PROPERTIES: dict[str, Any] = {
    "id": {"type": "string", "description": "<node>:<device>"},
    "node": {"type": "string"},
    "device": {"type": "string"},
    "model": {"type": "string"},
    "modelVersion": {"type": "string"},
    "state": _STATE,
    "createdAt": TIME,
    "updatedAt": TIME,
    "availability": {"type": "string", "nullable": True, "enum": ["online", "offline", None]},
    "availabilityAt": TIME,
    "desiredVersion": {"type": "integer"},
    "reportedVersion": {"type": "integer"},
}
_SUMMARY: dict[str, Any] = {
    "type": "object",
    "required": list(_SUMMARY_PROPERTIES),
    "properties": _SUMMARY_PROPERTIES,
}
_DEVICE: dict[str, Any] = {
    "type": "object",
    "required": [*_SUMMARY_PROPERTIES, "pendingDesired", "syncError", "moveTo"],
    "properties": {
        **_SUMMARY_PROPERTIES,
        "pendingDesired": {
            "type": "integer",
            "description": "desired changes not yet acknowledged by the node",
        },
        "edgeOrigin": nullable("string"),
        "lastRejected": {
            "type": "object",
            "nullable": True,
            "description": "the last cloud change the edge refused",
            "properties": {
                "origin": {"type": "string"},
                "seq": nullable("integer"),
                "section": {"type": "string"},
                "error": {"type": "object", "nullable": True},
                "rejectedAt": TIME,
            },
        },
        "syncError": nullable("string"),
        "moveTo": nullable(
            "string",
            description="the node a requested move takes the device to, until it is there",
        ),
    },
}
_TWIN: dict[str, Any] = {
    "type": "object",
    "required": ["id", "desired", "reported", "delta"],
    "properties": {
        "id": {"type": "string"},
        "desired": _SECTION,
        "reported": _SECTION,
        "delta": {"type": "object", "description": "desired values reported does not match"},
    },
}
_REGISTERED: dict[str, Any] = {
    "type": "object",
    "required": ["id", "node", "device", "model", "claimSecret", "registeredAt"],
    "properties": {
        "id": {"type": "string"},
        "node": {"type": "string"},
        "device": {"type": "string"},
        "model": {"type": "string"},
        "claimSecret": {
            "type": "string",
            "description": "the device's claimSecret for its claim request (docs/mqtt.md); "
            "shown this once",
        },
        "registeredAt": {"type": "string", "format": "date-time"},
    },
}
_REVOKED: dict[str, Any] = {
    "type": "object",
    "required": ["id", "node", "device", "state", "twin"],
    "properties": {
        "id": {"type": "string"},
        "node": {"type": "string"},
        "device": {"type": "string"},
        "state": {"type": "string", "enum": ["revoked"]},
        "twin": {"type": "string", "enum": ["kept", "deleted"]},
    },
}

_TEXTS = {
    400: "invalid request or value (problems name the path and reason; unknown_field names "
    "fields not taken)",
    404: "no such device",
    409: "version conflict, removed device, an id that names several devices, or (register, "
    "remove, revoke) node_offline / duplicate_id",
    412: "If-Match names another version than desired's $version (precondition_failed)",
    413: "body or twin section too large",
    415: "not JSON",
    422: "the model is not known (model_unknown)",
    503: "too many changes queued for an offline node, or the agent's broker is unavailable; "
    "retry later",
    504: "the node's agent did not answer in time (node_timeout)",
}


def _errors(*statuses: int, write: bool = False) -> dict[str, Any]:
    answers = {str(status): error(_TEXTS[status]) for status in statuses}
    answers["401"] = UNAUTHENTICATED
    if write:
        answers["403"] = FORBIDDEN
    return answers


def _json(schema: dict[str, Any], description: str, **extra: Any) -> dict[str, Any]:  # noqa: ANN401 - schema values
    return {
        "description": description,
        "content": {"application/json": {"schema": schema}},
        **extra,
    }


def _body(schema: dict[str, Any], example: dict[str, Any]) -> dict[str, Any]:
    return {
        "required": True,
        "content": {"application/json": {"schema": schema, "example": example}},
    }


_ID_PATTERN = r"^([a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?:)?[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
"""``<node>:<device>`` or a bare device id (``DEVICE_ID`` in service.py)."""
_NODE_PATTERN = r"^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$"
_MODEL_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
_DEVICE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"

_ID = {
    "name": "id",
    "in": "path",
    "required": True,
    "description": "<node>:<device>, or a device id that exists on one node only",
    "schema": {"type": "string", "maxLength": 200, "pattern": _ID_PATTERN},
}
_SECURITY: list[dict[str, list[str]]] = [{"bearer": []}]
_VERSION = {"type": "integer", "minimum": 0, "maximum": 2**62}
"""A section's ``$version`` to wait for (the server takes 0..2**62)."""
_TAGS = ["devices"]

OPENAPI_PATHS: dict[str, Any] = {
    "/api/v1/devices": {
        "get": {
            "summary": "List devices (all nodes, or filtered), ordered by id",
            "operationId": "listDevices",
            "tags": _TAGS,
            "security": _SECURITY,
            "parameters": [
                {
                    "name": "node",
                    "in": "query",
                    "schema": {"type": "string", "pattern": _NODE_PATTERN, "maxLength": 63},
                },
                {
                    "name": "model",
                    "in": "query",
                    "schema": {"type": "string", "pattern": _MODEL_PATTERN, "maxLength": 63},
                },
                {"name": "state", "in": "query", "schema": _STATE},
                *PAGING_PARAMETERS,
            ],
            "responses": {
                "200": _json(list_of(_SUMMARY), "a page of devices"),
                **_errors(400),
            },
        },
        "post": {
            "summary": "Register a device on a node: its agent expects it and it gets a claim "
            "secret",
            "description": "The node's agent records the device and the digest of a fresh "
            "claim secret; the device then claims with the site's claim credential and this "
            "secret (docs/mqtt.md). The secret is shown this once. The node must be connected "
            "(409 node_offline).",
            "operationId": "registerDevice",
            "tags": _TAGS,
            "security": _SECURITY,
            "requestBody": _body(
                {
                    "type": "object",
                    "required": ["node", "device", "model"],
                    "additionalProperties": False,
                    "properties": {
                        "node": {"type": "string", "pattern": _NODE_PATTERN},
                        "device": {"type": "string", "pattern": _DEVICE_PATTERN},
                        "model": {"type": "string", "pattern": _MODEL_PATTERN},
                    },
                },
                {"node": "edge-7", "device": "thermostat-9", "model": "thermostat"},
            ),
            "responses": {
                "201": _json(
                    _REGISTERED,
                    "registered; the claim secret is in the answer",
                    headers={"Location": {"schema": {"type": "string"}}},
                ),
                **_errors(400, 409, 413, 415, 422, 503, 504, write=True),
            },
        },
    },
    "/api/v1/devices/{id}": {
        "get": {
            "summary": "One device: model, state, availability, versions, sync state",
            "operationId": "getDevice",
            "tags": _TAGS,
            "security": _SECURITY,
            "parameters": [_ID],
            "responses": {
                "200": _json(_DEVICE, "the device"),
                **_errors(400, 404, 409),
            },
        },
        "delete": {
            "summary": "Remove a device from its node",
            "description": "The agent deletes the device's broker credential and role (the "
            "broker disconnects it) and its registration, and forgets its twin; the cloud "
            "keeps the twin (state removed; its desired values return if it is registered and "
            "onboarded again) or deletes it (twin=delete). The node must be connected.",
            "operationId": "removeDevice",
            "tags": _TAGS,
            "security": _SECURITY,
            "parameters": [
                _ID,
                {
                    "name": "twin",
                    "in": "query",
                    "schema": {"type": "string", "enum": ["keep", "delete"], "default": "keep"},
                },
            ],
            "responses": {
                "204": {"description": "removed"},
                **_errors(400, 404, 409, 503, 504, write=True),
            },
        },
    },
    "/api/v1/devices/{id}/revoke": {
        "post": {
            "summary": "Revoke a device: its broker credential goes at once",
            "description": "As remove, and the agent refuses claims of this id until it is "
            "registered again: the device is disconnected and its next connection or "
            "publish is refused.",
            "operationId": "revokeDevice",
            "tags": _TAGS,
            "security": _SECURITY,
            "parameters": [_ID],
            "requestBody": {
                **_body(
                    {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {"twin": {"type": "string", "enum": ["keep", "delete"]}},
                    },
                    {"twin": "keep"},
                ),
                "required": False,
            },
            "responses": {
                "200": _json(_REVOKED, "revoked"),
                **_errors(400, 404, 409, 413, 415, 503, 504, write=True),
            },
        }
    },
    "/api/v1/devices/{id}/twin": {
        "get": {
            "summary": "The device's twin (desired, reported, delta)",
            "description": "ETag is desired's $version. With wait=<seconds> and desiredVersion "
            "and/or reportedVersion, the answer waits until a section named reaches its "
            "version (the first of the two that does), or the time is up.",
            "operationId": "getTwin",
            "tags": _TAGS,
            "security": _SECURITY,
            "parameters": [
                _ID,
                {
                    "name": "wait",
                    "in": "query",
                    "schema": {"type": "number", "minimum": 0, "maximum": 30},
                },
                {"name": "desiredVersion", "in": "query", "schema": _VERSION},
                {"name": "reportedVersion", "in": "query", "schema": _VERSION},
            ],
            "responses": {
                "200": _json(_TWIN, "the twin", headers=ETAG_HEADER),
                **_errors(400, 404, 409, 503),
            },
        },
        "patch": {
            "summary": "Change desired properties (a JSON merge patch; null deletes)",
            "description": "Validated against the device's model. If-Match (desired's "
            "$version as an ETag) makes the write conditional: 412 when desired is at another "
            "version; a $version inside desired does too (409). The change reaches the "
            "device in order, also after the node was offline.",
            "operationId": "patchTwin",
            "tags": _TAGS,
            "security": _SECURITY,
            "parameters": [_ID, IF_MATCH_PARAMETER],
            "requestBody": {
                "required": True,
                "content": {
                    media: {
                        "schema": {
                            "type": "object",
                            "required": ["desired"],
                            "additionalProperties": False,
                            "properties": {
                                "desired": {
                                    "type": "object",
                                    "properties": {"$version": {"type": "integer", "minimum": 0}},
                                }
                            },
                        },
                        "example": {"desired": {"setpoint": 21.5}},
                    }
                    for media in ("application/json", "application/merge-patch+json")
                },
            },
            "responses": {
                "200": _json(_TWIN, "the twin after the change", headers=ETAG_HEADER),
                **_errors(400, 404, 409, 412, 413, 415, 422, 503, write=True),
            },
        },
    },
    "/api/v1/devices/{id}/move": {
        "post": {
            "summary": "Move the device to another node on the same broker",
            "description": "A device belongs to one node. Its node hands it over to the "
            "target on their shared broker (the device keeps its credential) and the target "
            "onboards it with a fresh twin that keeps the desired values. Accepted (202) when "
            "queued; it happens once the device's node is connected. A node on another broker "
            "refuses it: syncError then says why.",
            "operationId": "moveDevice",
            "tags": _TAGS,
            "security": _SECURITY,
            "parameters": [_ID],
            "requestBody": _body(
                {
                    "type": "object",
                    "required": ["node"],
                    "additionalProperties": False,
                    "properties": {"node": {"type": "string", "pattern": _NODE_PATTERN}},
                },
                {"node": "edge-2"},
            ),
            "responses": {
                "202": _json(_DEVICE, "the move is queued for the device's node"),
                **_errors(400, 404, 409, 413, 415, 503, write=True),
            },
        }
    },
}
