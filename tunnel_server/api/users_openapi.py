"""The OpenAPI 3.0 paths of ``/api/v1/users`` (``users_api``), merged into ``/api/openapi.json``."""

from __future__ import annotations

from typing import Any

from tunnel_server.api.openapi import (
    NAME_PATTERN,
    PAGING_PARAMETERS,
    TIME,
    UNAUTHENTICATED,
    error,
    list_of,
)
from tunnel_server.api.users_api import SERVER_PATTERN
from tunnel_server.identity import users

__all__ = ["OPENAPI_PATHS"]

_FORBIDDEN = error("Only an admin manages users (code: forbidden)")
_TTL = {"type": "number", "minimum": users.MIN_TTL, "maximum": users.MAX_USER_TTL}
_CLUSTERS = {
    "type": "array",
    "nullable": True,
    "minItems": 1,
    "maxItems": users.MAX_CLUSTERS,
    "items": {"type": "string", "pattern": NAME_PATTERN, "maxLength": 63},
}
_USER_PROPERTIES: dict[str, Any] = {
    "name": {"type": "string"},
    "role": {"type": "string", "enum": list(users.ROLES)},
    "clusters": {**_CLUSTERS, "description": "the clusters it may reach; null: every cluster"},
    "state": {"type": "string", "enum": ["active", "expired", "revoked"]},
    "createdAt": TIME,
    "expiresAt": TIME,
    "revokedAt": TIME,
    "tokenCount": {"type": "integer", "minimum": 0, "description": "unexpired tokens it holds"},
}
_USER: dict[str, Any] = {
    "type": "object",
    "required": list(_USER_PROPERTIES),
    "properties": _USER_PROPERTIES,
}
_NAME = {
    "name": "name",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": NAME_PATTERN, "maxLength": 63},
}
_TOKEN = {"type": "string", "description": "the bearer token, shown this once"}
_BAD_BODY = error(
    "Malformed body (codes: bad_json, bad_request, bad_name, unknown_field; `problems` says "
    "which field)"
)
_TOO_LARGE = error("Body larger than 16 KiB (code: body_too_large)")
_NOT_FOUND = error("No such user (code: user_not_found)")
_INACTIVE = error(
    "The user is revoked or expired (user_inactive) or holds 100 tokens already (too_many_tokens)"
)


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _body(
    properties: dict[str, Any],
    *,
    required: list[str] | None = None,
    any_of: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "type": "object",
        "additionalProperties": False,
        "properties": properties,
    }
    if required:
        schema["required"] = required
    if any_of:
        schema["anyOf"] = any_of
    return {"required": bool(required), "content": {"application/json": {"schema": schema}}}


def _answers(ok: dict[str, Any], **more: dict[str, Any]) -> dict[str, Any]:
    return {**ok, "401": UNAUTHENTICATED, "403": _FORBIDDEN, **more}


OPENAPI_PATHS: dict[str, Any] = {
    "/api/v1/users": {
        "get": {
            "operationId": "listUsers",
            "summary": "Every cloud user, by name (revoked and expired ones too); admin only",
            "parameters": PAGING_PARAMETERS,
            "responses": _answers(
                {"200": _json(list_of(_USER), "One page of users")},
                **{"400": error("A bad limit (bad_parameter) or continue token (bad_continue)")},
            ),
        },
        "post": {
            "operationId": "createUser",
            "summary": "Create a user and its first token (shown once); admin only",
            "requestBody": _body(
                {
                    "name": {
                        "type": "string",
                        "pattern": NAME_PATTERN,
                        "maxLength": 63,
                        "not": {"enum": [users.BOOTSTRAP_ADMIN]},
                        "description": "not 'admin': the bootstrap admin token's name",
                    },
                    "role": {"type": "string", "enum": list(users.ROLES)},
                    "clusters": _CLUSTERS,
                    "ttlSeconds": {**_TTL, "description": "the user's lifetime; default 90 days"},
                },
                required=["name", "role"],
                # An admin has no scope: its clusters are null (absent).
                any_of=[
                    {"properties": {"role": {"enum": ["operator", "viewer"]}}},
                    {"properties": {"role": {"enum": ["admin"]}, "clusters": {"maxItems": 0}}},
                ],
            ),
            "responses": _answers(
                {
                    "201": {
                        **_json(
                            {
                                "allOf": [
                                    _USER,
                                    {
                                        "type": "object",
                                        "required": ["token"],
                                        "properties": {"token": _TOKEN},
                                    },
                                ]
                            },
                            "The user, with its first token",
                        ),
                        "headers": {"Location": {"schema": {"type": "string"}}},
                    }
                },
                **{
                    "400": _BAD_BODY,
                    "409": error("A live user of that name exists (code: user_exists)"),
                    "413": _TOO_LARGE,
                },
            ),
        },
    },
    "/api/v1/users/{name}": {
        "get": {
            "operationId": "getUser",
            "summary": "One user (never its tokens); admin only",
            "parameters": [_NAME],
            "responses": _answers(
                {"200": _json(_USER, "The user")},
                **{"400": error("Not a valid user name (bad_name)"), "404": _NOT_FOUND},
            ),
        },
        "delete": {
            "operationId": "revokeUser",
            "summary": "Revoke a user: its tokens and console sessions stop working at once",
            "parameters": [_NAME],
            "responses": _answers(
                {"200": _json(_USER, "The user, now revoked")},
                **{"400": error("Not a valid user name (bad_name)"), "404": _NOT_FOUND},
            ),
        },
    },
    "/api/v1/users/{name}/tokens": {
        "post": {
            "operationId": "createUserToken",
            "summary": "Another bearer token of an active user (shown once); admin only",
            "parameters": [_NAME],
            "requestBody": _body(
                {"ttlSeconds": {**_TTL, "description": "default 30 days, never past the user"}}
            ),
            "responses": _answers(
                {
                    "201": _json(
                        {
                            "type": "object",
                            "required": ["token", "expiresAt"],
                            "properties": {"token": _TOKEN, "expiresAt": TIME},
                        },
                        "The new token",
                    )
                },
                **{
                    "400": _BAD_BODY,
                    "404": _NOT_FOUND,
                    "409": _INACTIVE,
                    "413": _TOO_LARGE,
                },
            ),
        }
    },
    "/api/v1/users/{name}/kubeconfig": {
        "post": {
            "operationId": "createUserKubeconfig",
            "summary": "A kubeconfig with a new token of the user: one context per registered "
            "cluster in its scope, the server's CA embedded; admin only",
            "parameters": [_NAME],
            "requestBody": _body(
                {
                    "clusters": {
                        **_CLUSTERS,
                        "description": "only these (in the user's scope); default: all of it",
                    },
                    "server": {
                        "type": "string",
                        "pattern": SERVER_PATTERN,
                        "description": "https://HOST[:PORT] kubectl reaches this server at; "
                        "default: the server's public URL",
                    },
                    "ttlSeconds": {**_TTL, "description": "default 30 days, never past the user"},
                }
            ),
            "responses": _answers(
                {
                    "201": _json(
                        {
                            "type": "object",
                            "required": ["kubeconfig", "expiresAt", "clusters"],
                            "properties": {
                                "kubeconfig": {
                                    "type": "string",
                                    "description": "the kubeconfig, YAML text; holds the token",
                                },
                                "expiresAt": TIME,
                                "clusters": {
                                    "type": "array",
                                    "items": {"type": "string"},
                                    "description": "its contexts; the first is current",
                                },
                            },
                        },
                        "The kubeconfig",
                    )
                },
                **{
                    "400": error(
                        "Malformed body (bad_json, bad_request, unknown_field) or a cluster "
                        "outside the user's scope (outside_scope)"
                    ),
                    "404": error("No such user (user_not_found) or cluster (cluster_not_found)"),
                    "409": error(
                        "The user is revoked or expired (user_inactive), holds 100 tokens "
                        "(too_many_tokens), or no registered cluster is in its scope "
                        "(no_clusters)"
                    ),
                    "413": _TOO_LARGE,
                },
            ),
        }
    },
}
