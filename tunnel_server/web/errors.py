"""Errors of every route of ours as RFC 9457 problem details (``application/problem+json``).

``{"type", "title", "status", "detail", "reason", "problems"?, ...}``: ``reason`` is the stable
machine word (the same words on MQTT answers and in docs/api.md), ``type`` the URI naming it
(``tag:edgefleet.io,2026:problem/<reason>``: a name, not a page to fetch), ``title`` the HTTP
status phrase and ``detail`` what a person should do.

``ApiError`` is the one error a handler raises for its caller (the REST API, the join API, the
twins API; ``bodies.BodyError`` from the bounded body reader is one too). It may add
``problems`` (``[{"path", "reason"}]``, which part of a document is wrong) and other fields.
The ``api_errors`` middleware turns it, and aiohttp's own 404/405/413 under ``/api/``, into
that shape, so an API client never has to parse an HTML error page.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from device_models import Problem

log = logging.getLogger("tunnel_server.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
}


PROBLEM_TYPE = "tag:edgefleet.io,2026:problem/"
"""Prefix of every problem ``type``; the reason word follows."""
PROBLEM_CONTENT_TYPE = "application/problem+json"


class ApiError(Exception):
    """An answer for the caller: HTTP status, a stable reason word, a detail a person can act on.

    ``code`` is the reason word (``reason`` in the problem document).
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        problems: tuple[Problem, ...] = (),
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}
        self.problems = problems
        self.extra = extra or {}

    def response(self) -> web.Response:
        return error_response(
            self.status,
            self.code,
            self.message,
            headers=self.headers,
            problems=self.problems,
            extra=self.extra,
        )


def error_response(
    status: int,
    code: str,
    message: str,
    *,
    headers: dict[str, str] | None = None,
    problems: tuple[Problem, ...] = (),
    extra: dict[str, Any] | None = None,
) -> web.Response:
    return web.json_response(
        problem(status, code, message, problems=problems, extra=extra),
        status=status,
        content_type=PROBLEM_CONTENT_TYPE,
        headers={**SECURITY_HEADERS, **(headers or {})},
    )


def problem(
    status: int,
    reason: str,
    detail: str,
    *,
    problems: tuple[Problem, ...] = (),
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The RFC 9457 problem document (also for places that answer with a body of their own)."""
    try:
        title = HTTPStatus(status).phrase
    except ValueError:
        title = "Error"
    body: dict[str, Any] = {
        **(extra or {}),
        "type": PROBLEM_TYPE + reason,
        "title": title,
        "status": status,
        "detail": detail,
        "reason": reason,
    }
    if problems:
        body["problems"] = [{"path": p.path, "reason": p.reason} for p in problems]
    return body


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
    except ApiError as error:
        log.debug("api error %s %s: %s", request.method, request.path, error.code)
        return error.response()
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
