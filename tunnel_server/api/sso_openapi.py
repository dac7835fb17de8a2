"""OpenAPI paths of SSO sign-in (``api/sso_api.py``); merged by ``app.openapi_paths``.

Every SSO route is public (``security: []``): it is how a person without a token gets one.
"""

from __future__ import annotations

from typing import Any

from tunnel_server.api.openapi import error

_URL_SAFE = {"type": "string", "maxLength": 1024, "pattern": "^[A-Za-z0-9._~-]*$"}
"""What a provider sends back in the query (RFC 6749 state, code, error): bounded so three of
them stay far below the server's 8 KiB request line."""
_SESSION = {
    "type": "object",
    "required": ["token", "expiresAt", "ttlSeconds", "user", "role", "clusters"],
    "properties": {
        "token": {"type": "string", "description": "console session token (Bearer)"},
        "expiresAt": {"type": "string", "format": "date-time"},
        "ttlSeconds": {"type": "integer"},
        "user": {"type": "string", "description": "sso.<name>-<hash> of the signed-in person"},
        "role": {"type": "string", "enum": ["admin", "operator", "viewer"]},
        "clusters": {"type": "array", "items": {"type": "string"}, "nullable": True},
    },
}
_NOT_CONFIGURED = error("SSO is not configured on this server (code: sso_not_configured)")
_PROVIDER = error(
    "The identity provider is unreachable or answered wrongly (codes: sso_provider_unreachable,"
    " sso_provider_invalid)"
)
_REDIRECT = {
    "description": "Redirect (Location header)",
    "headers": {"Location": {"schema": {"type": "string"}}},
}

OPENAPI_PATHS: dict[str, Any] = {
    "/api/v1/sso": {
        "get": {
            "operationId": "getSso",
            "summary": "Whether SSO sign-in is offered, and the provider's name",
            "security": [],
            "responses": {
                "200": {
                    "description": "SSO status",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["enabled", "providerName"],
                                "properties": {
                                    "enabled": {"type": "boolean"},
                                    "providerName": {"type": "string", "nullable": True},
                                },
                            }
                        }
                    },
                },
                "413": error("A body was sent (code: body_too_large)"),
            },
        }
    },
    "/api/v1/sso/login": {
        "get": {
            "operationId": "startSsoLogin",
            "summary": "Redirect the browser to the identity provider (code flow, PKCE S256)",
            "security": [],
            "parameters": [
                {
                    "name": "cliPort",
                    "in": "query",
                    "description": "the CLI's loopback port (tunnel-server login --sso)",
                    "schema": {"type": "integer", "minimum": 1024, "maximum": 65535},
                },
                {
                    "name": "cliChallenge",
                    "in": "query",
                    "description": "base64url SHA-256 of the CLI's secret; with cliPort",
                    "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{43}$"},
                },
            ],
            "responses": {
                "302": _REDIRECT,
                "400": error("cliPort without cliChallenge or malformed (code: bad_request)"),
                "404": _NOT_CONFIGURED,
                "413": error("A body was sent (code: body_too_large)"),
                "502": _PROVIDER,
            },
        }
    },
    "/api/v1/sso/callback": {
        "get": {
            "operationId": "finishSsoLogin",
            "summary": "Where the identity provider sends the browser back; redirects to"
            " /#session=<token> (or to the CLI's loopback with a one-time code)",
            "security": [],
            "parameters": [
                {"name": "state", "in": "query", "schema": _URL_SAFE},
                {"name": "code", "in": "query", "schema": _URL_SAFE},
                {"name": "error", "in": "query", "schema": _URL_SAFE},
            ],
            "responses": {
                "302": _REDIRECT,
                "400": error(
                    "Unknown, expired, used or foreign state; no code; the provider refused the"
                    " code (codes: sso_state_invalid, bad_request, sso_code_refused)"
                ),
                "401": error(
                    "The provider said no, or its ID token is not acceptable (codes:"
                    " sso_denied, sso_token_invalid)"
                ),
                "403": error("None of the person's groups is mapped (code: sso_group_unmapped)"),
                "404": _NOT_CONFIGURED,
                "409": error(
                    "A sign-in of the same person at the same moment changed the user;"
                    " sign in again (code: sso_conflict)"
                ),
                "413": error("A body was sent (code: body_too_large)"),
                "502": _PROVIDER,
            },
        }
    },
    "/api/v1/sso/exchange": {
        "post": {
            "operationId": "exchangeSsoCode",
            "summary": "The CLI trades its one-time code and secret for its console session",
            "security": [],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["code", "verifier"],
                            "additionalProperties": False,
                            "properties": {
                                "code": {"type": "string", "maxLength": 64},
                                "verifier": {"type": "string", "maxLength": 128},
                            },
                        }
                    }
                },
            },
            "responses": {
                "201": {
                    "description": "The session",
                    "content": {"application/json": {"schema": _SESSION}},
                },
                "400": error(
                    "Malformed body, unknown field, or an unknown/expired/used code or a wrong"
                    " verifier (codes: bad_json, bad_request, unknown_field, sso_code_invalid)"
                ),
                "404": _NOT_CONFIGURED,
                "413": error("Body larger than 4 KiB (code: body_too_large)"),
            },
        }
    },
}
