"""JSON errors for the REST API: ``{"error": <stable code>, "message": <what to do>}``.

Handlers raise ``ApiError`` (or ``request_body.BodyError`` from the bounded body reader); the
middleware turns it, and aiohttp's own 404/405/413 under
``/api/``, into that shape, so an API client never has to parse an HTML error page.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from tunnel_server.web.bodies import BodyError, close_if_unread

log = logging.getLogger("tunnel_server.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
}


class ApiError(Exception):
    """An answer for the caller: HTTP status, a stable code, and a message a person can act on."""

    def __init__(
        self, status: int, code: str, message: str, *, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}

    def response(self) -> web.Response:
        return error_response(self.status, self.code, self.message, headers=self.headers)


def error_response(
    status: int, code: str, message: str, *, headers: dict[str, str] | None = None
) -> web.Response:
    return web.json_response(
        {"error": code, "message": message},
        status=status,
        headers={**SECURITY_HEADERS, **(headers or {})},
    )


_HTTP_CODES = {
    404: ("not_found", "no such endpoint: see /api/openapi.json for the API"),
    405: ("method_not_allowed", "method not allowed here: see /api/openapi.json"),
    413: ("body_too_large", "request body too large"),
}


@web.middleware
async def api_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Under ``/api/``: ``ApiError`` and aiohttp's HTTP errors become JSON errors."""
    if not request.path.startswith("/api/") or "/proxy/" in request.path:
        # The node proxy streams other services' answers: leave them exactly as they are.
        return await handler(request)
    try:
        response = await handler(request)
    except (ApiError, BodyError) as error:
        log.debug("api error %s %s: %s", request.method, request.path, error.code)
        answer = error_response(error.status, error.code, error.message, headers=_headers(error))
        return close_if_unread(error, answer) if isinstance(error, BodyError) else answer
    except web.HTTPException as error:
        if error.status < 400:
            raise
        code, message = _HTTP_CODES.get(error.status, ("http_error", error.reason))
        headers = {"Allow": error.headers["Allow"]} if "Allow" in error.headers else None
        return error_response(error.status, code, message, headers=headers)
    if not response.prepared:
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
    return response


def _headers(error: ApiError | BodyError) -> dict[str, str] | None:
    return error.headers if isinstance(error, ApiError) else None
