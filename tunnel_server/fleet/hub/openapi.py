"""The OpenAPI 3.0 paths of ``/api/v1/fleet/...``, merged into the server's ``/api/openapi.json``.

One set of paths for every kind (``{plural}`` is an enum of the kinds' plurals): the envelope is
the same for all, and each kind's spec is checked by ``fleet_model`` (docs/fleet.md describes
them), which a schema here could only repeat less precisely.
"""

from __future__ import annotations

from typing import Any

from fleet_model.documents import API_VERSION, KINDS, PLURALS
from fleet_model.problems import MAX_NAME
from tunnel_server.api.openapi import (
    ETAG_HEADER,
    FORBIDDEN,
    IF_MATCH_PARAMETER,
    LABEL_SELECTOR_PARAMETER,
    PAGING_PARAMETERS,
    UNAUTHENTICATED,
    error,
    list_of,
)

__all__ = ["OPENAPI_PATHS"]

_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
"""``fleet_model.problems.is_name``: a DNS-1123 subdomain."""
_VERSION = {"type": "string", "pattern": "^[0-9]{1,18}$"}
_STRINGS = {"type": "object", "additionalProperties": {"type": "string"}}

_PLURAL: dict[str, Any] = {
    "name": "plural",
    "in": "path",
    "required": True,
    "description": "the kind, as its plural",
    "schema": {"type": "string", "enum": sorted(PLURALS)},
}
_NAME: dict[str, Any] = {
    "name": "name",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": _NAME_PATTERN, "maxLength": MAX_NAME},
}
_RESOURCE_VERSION: dict[str, Any] = {
    "name": "resourceVersion",
    "in": "query",
    "description": "watch: the changes after this version (a list's metadata.resourceVersion; "
    "absent: every object first, as ADDED, then what follows); long poll: the version the "
    "caller has",
    "schema": _VERSION,
}
_TIMEOUT: dict[str, Any] = {
    "name": "timeoutSeconds",
    "in": "query",
    "description": "end a watch (default and most: 300) or long poll (default 30) after this long",
    "schema": {"type": "integer", "minimum": 1, "maximum": 300},
}

_METADATA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "labels": _STRINGS,
        "annotations": _STRINGS,
        "uid": {"type": "string", "readOnly": True},
        "resourceVersion": {
            "type": "string",
            "description": "the store's revision at the object's last write; sent back, a "
            "precondition (409 conflict if the object moved on)",
        },
        "generation": {"type": "integer", "readOnly": True},
        "creationTimestamp": {"type": "string", "format": "date-time", "readOnly": True},
    },
}
_DOCUMENT: dict[str, Any] = {
    "type": "object",
    "description": f"A fleet object ({', '.join(sorted(KINDS))}); docs/fleet.md has each spec",
    "required": ["apiVersion", "kind", "metadata", "spec", "status"],
    "properties": {
        "apiVersion": {"type": "string", "enum": [API_VERSION]},
        "kind": {"type": "string", "enum": sorted(KINDS)},
        "metadata": {**_METADATA, "required": ["name", "uid", "resourceVersion", "generation"]},
        "spec": {"type": "object"},
        "status": {"type": "object"},
    },
}
_INPUT: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata"],
    "properties": {
        "apiVersion": {"type": "string", "enum": [API_VERSION]},
        "kind": {"type": "string", "enum": sorted(KINDS)},
        "metadata": {**_METADATA, "required": ["name"]},
        "spec": {"type": "object"},
        "status": {"type": "object", "description": "ignored: written by the hub and agents"},
    },
}
_PATCH: dict[str, Any] = {
    "type": "object",
    "description": "JSON merge patch (RFC 7386) of metadata.labels, metadata.annotations and "
    "spec; null removes a key",
    "properties": {
        "apiVersion": {"type": "string"},
        "kind": {"type": "string"},
        "metadata": _METADATA,
        "spec": {"type": "object"},
        "status": {"type": "object", "description": "ignored"},
    },
    "additionalProperties": False,
}
_STATUS_BODY: dict[str, Any] = {
    "type": "object",
    "required": ["status"],
    "properties": {
        "metadata": {
            "type": "object",
            "properties": {"name": {"type": "string"}, "resourceVersion": _VERSION},
        },
        "status": {"type": "object"},
    },
}

_ONE = {
    "description": "The object",
    "headers": ETAG_HEADER,
    "content": {"application/json": {"schema": _DOCUMENT}},
}
_NOT_FOUND = error("No such kind (unknown_kind) or object (object_not_found)")
_BAD_NAME = error("Not a valid name (bad_name) or parameter (bad_parameter)")
_CONFLICT = error(
    "metadata.resourceVersion names another version than the object's (conflict; "
    "currentVersion says which)"
)
_PRECONDITION = error("If-Match names another version (precondition_failed, with currentVersion)")
_TOO_LARGE = error(
    "A body over the document limit (body_too_large, 1 MiB by default) or a Work over its limit "
    "(work_too_large, 512 KiB by default; sizeBytes and limitBytes say by how much)"
)
_BUSY = error("Too many live watches of this user or in all (too_many_streams), Retry-After")
_INVALID = error(
    "Not JSON (bad_json), not a valid document (invalid_document, with problems: [{path, "
    "reason}]), a name that is not the URL's (name_mismatch), a bad name (bad_name) or If-Match "
    "(bad_if_match)"
)


def _write_responses(*, created: bool) -> dict[str, Any]:
    responses: dict[str, Any] = {
        "200": {**_ONE, "description": "The object after the write"},
        "400": _INVALID,
        "401": UNAUTHENTICATED,
        "403": FORBIDDEN,
        "404": _NOT_FOUND,
        "409": _CONFLICT,
        "412": _PRECONDITION,
        "413": _TOO_LARGE,
    }
    if created:
        responses["201"] = {**_ONE, "description": "Created (Location names it)"}
    return responses


OPENAPI_PATHS: dict[str, Any] = {
    "/api/v1/fleet/{plural}": {
        "get": {
            "operationId": "listFleetObjects",
            "summary": "Fleet objects of one kind (metadata.resourceVersion: where a watch "
            "starts), or with watch=true their changes as server-sent events (event: "
            "ADDED|MODIFIED|DELETED, id: <resourceVersion>, data: <document>)",
            "parameters": [
                _PLURAL,
                LABEL_SELECTOR_PARAMETER,
                *PAGING_PARAMETERS,
                {
                    "name": "watch",
                    "in": "query",
                    "description": "stream changes instead of listing",
                    "schema": {"type": "boolean"},
                },
                _RESOURCE_VERSION,
                _TIMEOUT,
            ],
            "responses": {
                "200": {
                    "description": "One page of objects; a watch: a text/event-stream",
                    "content": {
                        "application/json": {"schema": list_of(_DOCUMENT)},
                        "text/event-stream": {"schema": {"type": "string"}},
                    },
                },
                "400": error(
                    "A bad labelSelector, resourceVersion, timeoutSeconds, limit "
                    "(bad_parameter) or continue token (bad_continue)"
                ),
                "401": UNAUTHENTICATED,
                "403": FORBIDDEN,
                "404": error("No such kind (unknown_kind)"),
                "410": error("The watch starts before the kept change log: list again (expired)"),
                "503": _BUSY,
            },
        }
    },
    "/api/v1/fleet/{plural}/{name}": {
        "get": {
            "operationId": "getFleetObject",
            "summary": "One fleet object; waitForChange=true&resourceVersion=N waits until it "
            "is no longer at N (a long poll)",
            "parameters": [
                _PLURAL,
                _NAME,
                {
                    "name": "waitForChange",
                    "in": "query",
                    "description": "long poll: answer once the object is not at resourceVersion",
                    "schema": {"type": "boolean"},
                },
                _RESOURCE_VERSION,
                _TIMEOUT,
            ],
            "responses": {
                "200": _ONE,
                "400": _BAD_NAME,
                "401": UNAUTHENTICATED,
                "403": FORBIDDEN,
                "404": _NOT_FOUND,
                "503": _BUSY,
            },
        },
        "put": {
            "operationId": "putFleetObject",
            "summary": "Create or replace a fleet object (its status is kept). Placement, Work, "
            "WorkSet: operator or admin; ManagedCluster, ManagedClusterSet, GitSource: admin",
            "parameters": [_PLURAL, _NAME, IF_MATCH_PARAMETER],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _INPUT}},
            },
            "responses": _write_responses(created=True),
        },
        "patch": {
            "operationId": "patchFleetObject",
            "summary": "Merge a JSON merge patch into a fleet object's labels, annotations and "
            "spec (roles as for PUT)",
            "parameters": [_PLURAL, _NAME, IF_MATCH_PARAMETER],
            "requestBody": {
                "required": True,
                "content": {
                    "application/merge-patch+json": {"schema": _PATCH},
                    "application/json": {"schema": _PATCH},
                },
            },
            "responses": {
                **_write_responses(created=False),
                "415": error("Not a merge patch (unsupported_media_type)"),
            },
        },
        "delete": {
            "operationId": "deleteFleetObject",
            "summary": "Delete a fleet object (roles as for PUT); the answer is its last state",
            "parameters": [_PLURAL, _NAME, IF_MATCH_PARAMETER],
            "responses": {
                "200": {**_ONE, "description": "The object as it was deleted"},
                "400": error("Not a valid name (bad_name) or If-Match (bad_if_match)"),
                "401": UNAUTHENTICATED,
                "403": FORBIDDEN,
                "404": _NOT_FOUND,
                "412": _PRECONDITION,
                "413": error("A body over 16 KiB (body_too_large)"),
            },
        },
    },
    "/api/v1/fleet/{plural}/{name}/status": {
        "put": {
            "operationId": "putFleetObjectStatus",
            "summary": "Replace a fleet object's status (admin; the hub and the agents write "
            "status themselves)",
            "parameters": [_PLURAL, _NAME, IF_MATCH_PARAMETER],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _STATUS_BODY}},
            },
            "responses": {
                "200": {**_ONE, "description": "The object with its new status"},
                "400": error(
                    "Not JSON (bad_json), no status object or a bad resourceVersion "
                    "(invalid_document), a name that is not the URL's (name_mismatch)"
                ),
                "401": UNAUTHENTICATED,
                "403": FORBIDDEN,
                "404": _NOT_FOUND,
                "409": _CONFLICT,
                "412": _PRECONDITION,
                "413": _TOO_LARGE,
            },
        }
    },
}
