"""The OpenAPI 3.0 paths of ``/api/v1/device-models`` and ``/api/v1/devices/{id}/telemetry``.

Merged into the server's ``/api/openapi.json`` by ``app.openapi_paths()``. Schemas are inline
(a part's paths add no components); errors are the document's ``Problem``.
"""

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
from tunnel_server.twins.models_api import MAX_BODY
from tunnel_server.twins.telemetry import TelemetrySettings
from tunnel_server.twins.telemetry_api import DEFAULT_WINDOW, MIN_WINDOW, PROPERTY_PATTERN

__all__ = ["OPENAPI_PATHS"]

_SUMMARY_PROPERTIES: dict[str, Any] = {
    "name": {"type": "string"},
    "version": {"type": "string"},
    "source": {
        "type": "string",
        "enum": ["builtin", "file", "uploaded"],
        "description": "compiled in, the server's models folder, or uploaded through the API",
    },
    "description": {"type": "string"},
    "propertyCount": {"type": "integer", "minimum": 0},
    "createdAt": {**TIME, "description": "when it was uploaded; null unless uploaded"},
    "createdBy": nullable("string", description="who uploaded it; null unless uploaded"),
}
_SUMMARY: dict[str, Any] = {
    "type": "object",
    "required": list(_SUMMARY_PROPERTIES),
    "properties": _SUMMARY_PROPERTIES,
}
_MODEL_DOCUMENT: dict[str, Any] = {
    "type": "object",
    "description": "the model in docs/device-models.md's format, defaults written out",
    "required": ["apiVersion", "kind", "name", "version", "properties"],
    "properties": {
        "apiVersion": {"type": "string", "enum": ["edgefleet.io/v1"]},
        "kind": {"type": "string", "enum": ["DeviceModel"]},
        "name": {"type": "string"},
        "version": {"type": "string"},
        "description": {"type": "string"},
        "protocol": {"type": "object", "additionalProperties": True},
        "localControl": {
            "type": "boolean",
            "description": "the edge may change desired while the cloud is unreachable "
            "(written only when true; docs/twins.md §4)",
        },
        "properties": {"type": "array", "items": {"type": "object", "additionalProperties": True}},
    },
}
_DETAIL: dict[str, Any] = {
    "type": "object",
    "required": [*_SUMMARY_PROPERTIES, "model"],
    "properties": {**_SUMMARY_PROPERTIES, "model": _MODEL_DOCUMENT},
}
_NAME_PARAMETER = {
    "name": "name",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "maxLength": 63},
}
_NOT_FOUND = error("No such model (model_not_found)")
_UPLOAD_BODY = {
    "required": True,
    "description": f"the model, at most {MAX_BODY} bytes (docs/device-models.md)",
    "content": {
        "application/yaml": {"schema": {"type": "string"}},
        "application/json": {"schema": _MODEL_DOCUMENT},
    },
}


def _ok(schema: dict[str, Any], description: str, **extra: Any) -> dict[str, Any]:  # noqa: ANN401
    return {
        "description": description,
        "content": {"application/json": {"schema": schema}},
        **extra,
    }


_POINT_PROPERTIES: dict[str, Any] = {
    "at": {"type": "string", "format": "date-time", "description": "the minute's start"},
    "mean": {"type": "number"},
    "min": {"type": "number"},
    "max": {"type": "number"},
    "last": {"type": "number", "description": "the minute's latest sample"},
    "samples": {"type": "integer", "minimum": 1},
}
_TELEMETRY_PROPERTIES: dict[str, Any] = {
    "device": {"type": "string", "description": "<node>:<device>"},
    "property": {"type": "string"},
    "unit": nullable("string", description="from the device's model"),
    "windowSeconds": {"type": "integer"},
    "stepSeconds": {"type": "integer", "description": "one point per minute with samples"},
    "startAt": {"type": "string", "format": "date-time"},
    "endAt": {"type": "string", "format": "date-time"},
    "properties": {
        "type": "array",
        "items": {"type": "string"},
        "description": "the device's properties that have telemetry",
    },
    "points": {
        "type": "array",
        "items": {
            "type": "object",
            "required": list(_POINT_PROPERTIES),
            "properties": _POINT_PROPERTIES,
        },
    },
}
_TELEMETRY: dict[str, Any] = {
    "type": "object",
    "required": list(_TELEMETRY_PROPERTIES),
    "properties": _TELEMETRY_PROPERTIES,
}
_RETENTION = int(TelemetrySettings().retention)
_ID_PATTERN = r"^([a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?:)?[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
"""``<node>:<device>`` or a bare device id, as the twins routes take it."""
_PROPERTY_PATTERN = f"^{PROPERTY_PATTERN}$"

OPENAPI_PATHS: dict[str, Any] = {
    "/api/v1/device-models": {
        "get": {
            "operationId": "listDeviceModels",
            "summary": "Every device model the cloud knows, at its latest version, by name",
            "parameters": PAGING_PARAMETERS,
            "responses": {
                "200": _ok(list_of(_SUMMARY), "The models"),
                "400": error("Bad limit or continue (bad_parameter, bad_continue)"),
                "401": UNAUTHENTICATED,
            },
        },
        "post": {
            "operationId": "uploadDeviceModel",
            "summary": "Upload a model or a new (higher) version of one; agents receive it",
            "parameters": [IF_MATCH_PARAMETER],
            "requestBody": _UPLOAD_BODY,
            "responses": {
                "201": _ok(
                    _DETAIL,
                    "Stored; pushed to the agents",
                    headers={
                        **ETAG_HEADER,
                        "Location": {"schema": {"type": "string"}},
                    },
                ),
                "400": error(
                    "The model is invalid (invalid_model, with problems), or a bad If-Match "
                    "(bad_if_match)"
                ),
                "401": UNAUTHENTICATED,
                "403": FORBIDDEN,
                "409": error(
                    "Not a higher version than the latest (version_not_higher, currentVersion), "
                    "or a bound reached (too_many_models)"
                ),
                "412": error("If-Match is not the latest version (precondition_failed)"),
                "413": error("Over 64 KiB (body_too_large)"),
                "415": error("Not YAML nor JSON (unsupported_media_type)"),
            },
        },
    },
    "/api/v1/device-models/{name}": {
        "get": {
            "operationId": "getDeviceModel",
            "summary": "A device model: its latest version, or ?version=",
            "parameters": [
                _NAME_PARAMETER,
                {
                    "name": "version",
                    "in": "query",
                    "description": "an older version (GET .../versions lists them)",
                    "schema": {"type": "string", "maxLength": 32},
                },
            ],
            "responses": {
                "200": _ok(_DETAIL, "The model", headers=ETAG_HEADER),
                "401": UNAUTHENTICATED,
                "404": _NOT_FOUND,
            },
        },
    },
    "/api/v1/device-models/{name}/versions": {
        "get": {
            "operationId": "listDeviceModelVersions",
            "summary": "Every version kept of a device model, newest first",
            "parameters": [_NAME_PARAMETER, *PAGING_PARAMETERS],
            "responses": {
                "200": _ok(list_of(_SUMMARY), "The versions"),
                "400": error("Bad limit or continue (bad_parameter, bad_continue)"),
                "401": UNAUTHENTICATED,
                "404": _NOT_FOUND,
            },
        },
    },
    "/api/v1/devices/{id}/telemetry": {
        "get": {
            "operationId": "getDeviceTelemetry",
            "summary": "A numeric property's per-minute history (mean, min, max, last)",
            "parameters": [
                {
                    "name": "id",
                    "in": "path",
                    "required": True,
                    "description": "<node>:<device>, or a device id that exists on one node only",
                    "schema": {"type": "string", "maxLength": 200, "pattern": _ID_PATTERN},
                },
                {
                    "name": "property",
                    "in": "query",
                    "required": True,
                    "description": "a numeric property; nested members dotted (schedule.comfort)",
                    "schema": {"type": "string", "maxLength": 400, "pattern": _PROPERTY_PATTERN},
                },
                {
                    "name": "windowSeconds",
                    "in": "query",
                    "description": f"how far back (default {DEFAULT_WINDOW})",
                    "schema": {"type": "integer", "minimum": MIN_WINDOW, "maximum": _RETENTION},
                },
            ],
            "responses": {
                "200": _ok(_TELEMETRY, "The series"),
                "400": error("Bad device id, property or window (bad_device_id, bad_parameter)"),
                "401": UNAUTHENTICATED,
                "404": error(
                    "No such device or numeric property (device_not_found, property_not_found)"
                ),
                "409": error("A bare device id names several devices (ambiguous_device)"),
            },
        },
    },
}
