"""The OpenAPI 3.0 paths of the twins routes, merged into the server's ``/api/openapi.json``."""

from __future__ import annotations

from typing import Any

__all__ = ["OPENAPI_PATHS"]

_ERROR: dict[str, Any] = {
    "type": "object",
    "required": ["error", "message"],
    "properties": {
        "error": {"type": "string", "description": "stable code, e.g. invalid_value"},
        "message": {"type": "string", "description": "what happened and what to do"},
        "problems": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["path", "reason"],
                "properties": {"path": {"type": "string"}, "reason": {"type": "string"}},
            },
        },
        "currentVersion": {"type": "integer"},
        "candidates": {"type": "array", "items": {"type": "string"}},
    },
}
_SECTION: dict[str, Any] = {
    "type": "object",
    "description": "property values plus $version (grows by one per change) and $metadata "
    "($lastUpdated per key, epoch seconds)",
    "required": ["$version", "$metadata"],
    "properties": {"$version": {"type": "integer"}, "$metadata": {"type": "object"}},
    "additionalProperties": True,
}
_DEVICE: dict[str, Any] = {
    "type": "object",
    "required": ["id", "node", "device", "model", "state"],
    "properties": {
        "id": {"type": "string", "description": "<node>:<device>"},
        "node": {"type": "string"},
        "device": {"type": "string"},
        "model": {"type": "string"},
        "modelVersion": {"type": "string"},
        "state": {"type": "string", "enum": ["active", "removed"]},
        "createdAt": {"type": "number"},
        "updatedAt": {"type": "number"},
        "availability": {"type": "string", "nullable": True, "enum": ["online", "offline", None]},
        "availabilityAt": {"type": "number", "nullable": True},
        "desiredVersion": {"type": "integer"},
        "reportedVersion": {"type": "integer"},
        "pendingDesired": {
            "type": "integer",
            "description": "desired changes not yet acknowledged by the node",
        },
        "edgeOrigin": {"type": "string", "nullable": True},
        "lastRejected": {"type": "object", "nullable": True},
        "syncError": {"type": "string", "nullable": True},
        "moveTo": {
            "type": "string",
            "nullable": True,
            "description": "the node a requested move takes the device to, until it is there",
        },
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


def _errors(*statuses: int) -> dict[str, Any]:
    texts = {
        400: "invalid request or value (problems name the path and reason)",
        401: "missing or wrong bearer token",
        404: "no such device",
        409: "version conflict, removed device, or an id that names several devices",
        413: "body or twin section too large",
        415: "not JSON",
        422: "the device's model is not loaded in the cloud",
        503: "too many changes queued for an offline node; retry later",
    }
    return {
        str(status): {
            "description": texts[status],
            "content": {"application/json": {"schema": _ERROR}},
        }
        for status in statuses
    }


_ID_PATTERN = r"^([a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?:)?[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
"""``<node>:<device>`` or a bare device id (``DEVICE_ID`` in service.py)."""
_AFTER_PATTERN = r"^[^:]*:.*$"
_NODE_QUERY = r"^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$"

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

OPENAPI_PATHS: dict[str, Any] = {
    "/api/v1/devices": {
        "get": {
            "summary": "List devices (all nodes, or one)",
            "operationId": "listDevices",
            "tags": ["twins"],
            "security": _SECURITY,
            "parameters": [
                {
                    "name": "node",
                    "in": "query",
                    "schema": {"type": "string", "pattern": _NODE_QUERY, "maxLength": 63},
                },
                {
                    "name": "limit",
                    "in": "query",
                    "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
                },
                {
                    "name": "after",
                    "in": "query",
                    "description": "the 'next' id of the previous page",
                    "schema": {"type": "string", "pattern": _AFTER_PATTERN, "maxLength": 200},
                },
            ],
            "responses": {
                "200": {
                    "description": "a page of devices",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["items", "next"],
                                "properties": {
                                    "items": {"type": "array", "items": _DEVICE},
                                    "next": {"type": "string", "nullable": True},
                                },
                            }
                        }
                    },
                },
                **_errors(400, 401),
            },
        }
    },
    "/api/v1/devices/{id}": {
        "get": {
            "summary": "One device: model, state, availability, versions, sync state",
            "operationId": "getDevice",
            "tags": ["twins"],
            "security": _SECURITY,
            "parameters": [_ID],
            "responses": {
                "200": {
                    "description": "the device",
                    "content": {"application/json": {"schema": _DEVICE}},
                },
                **_errors(400, 401, 404, 409),
            },
        }
    },
    "/api/v1/devices/{id}/twin": {
        "get": {
            "summary": "The device's twin (desired, reported, delta)",
            "description": "With wait=<seconds> and desiredVersion and/or reportedVersion, "
            "the answer waits until a section named reaches its version (the first of the two "
            "that does), or the time is up.",
            "operationId": "getTwin",
            "tags": ["twins"],
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
                "200": {
                    "description": "the twin",
                    "content": {"application/json": {"schema": _TWIN}},
                },
                **_errors(400, 401, 404, 409, 503),
            },
        },
        "patch": {
            "summary": "Change desired properties (a JSON merge patch; null deletes)",
            "description": "Validated against the device's model. A $version inside desired "
            "makes the write conditional: 409 when desired is not at that version. The "
            "change reaches the device in order, also after the node was offline.",
            "operationId": "patchTwin",
            "tags": ["twins"],
            "security": _SECURITY,
            "parameters": [_ID],
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
                        "example": {"desired": {"setpoint": 21.5, "$version": 3}},
                    }
                    for media in ("application/json", "application/merge-patch+json")
                },
            },
            "responses": {
                "200": {
                    "description": "the twin after the change",
                    "content": {"application/json": {"schema": _TWIN}},
                },
                **_errors(400, 401, 404, 409, 413, 415, 422, 503),
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
            "tags": ["twins"],
            "security": _SECURITY,
            "parameters": [_ID],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["node"],
                            "additionalProperties": False,
                            "properties": {
                                "node": {
                                    "type": "string",
                                    "pattern": "^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$",
                                }
                            },
                        },
                        "example": {"node": "edge-2"},
                    }
                },
            },
            "responses": {
                "202": {
                    "description": "the move is queued for the device's node",
                    "content": {"application/json": {"schema": _DEVICE}},
                },
                **_errors(400, 401, 404, 409, 413, 415, 503),
            },
        }
    },
}
