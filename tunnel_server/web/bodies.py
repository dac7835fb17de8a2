"""Request bodies from outside, bounded before they are buffered or parsed.

``read_json_object`` is the one JSON body reader of the server's own routes (join, renew, the
REST API): at most ``limit`` bytes (a larger ``Content-Length`` is refused before a byte is
read), UTF-8, and nested at most ``MAX_JSON_DEPTH`` levels, checked by a linear scan of the
text before ``json.loads`` runs, so a hostile body cannot make the parser recurse.
``decode_json_object`` is the same check for bytes read elsewhere (a tunnel stream).

``bounded_bodies`` is a middleware for the routes that take no body (GET, HEAD, DELETE,
OPTIONS): a body there is ignored up to ``MAX_IGNORED_BODY`` bytes and refused with 413 past
it, so such a route never answers 200 to a 10 MB upload. The node proxy and the cluster proxy
are left alone: they stream bodies through (a Kubernetes DELETE carries DeleteOptions), with
backpressure.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from device_models import nesting_depth, reject_constant
from tunnel_server.web.errors import ApiError

MAX_JSON_DEPTH = 16
"""Deepest nesting of a JSON body: our bodies are flat objects (depth 1); 16 leaves room for
any sane client and keeps ``json.loads`` far from Python's recursion limit (~1,000)."""

MAX_IGNORED_BODY = 16 * 1024
"""Bytes of body a route that takes none ignores before it answers 413; the REST API's own
body limit, so one rule holds for every route."""

BODYLESS_METHODS = frozenset({"GET", "HEAD", "DELETE", "OPTIONS"})
"""Methods whose routes here take no body."""

_READ_CHUNK = 16 * 1024
_PROXY_MARK = "/proxy/"
"""Node proxy paths (``/api/v1/nodes/{name}/proxy/...``) carry other services' bodies."""
_CLUSTER_PROXY_PREFIX = "/clusters/"
"""The cluster proxy forwards every method's body to the member API server."""


class BodyError(ApiError):
    """A refused body: HTTP status, a stable code, and what to do about it."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(status, code, message)

    def response(self) -> web.Response:
        return close_if_unread(self, super().response())


def close_if_unread(error: BodyError, response: web.Response) -> web.Response:
    """A 413 leaves the body unread, so the connection carries no further request.

    The answer says ``Connection: close``; aiohttp reads and drops what the client still sends
    for at most its lingering time (10 s), then closes.
    """
    if error.status == 413:
        response.force_close()
    return response


def _too_large(limit: int) -> BodyError:
    return BodyError(413, "body_too_large", f"request body over {limit} bytes")


async def read_bounded(request: web.Request, *, limit: int) -> bytes:
    """The whole body, or BodyError 413 as soon as it passes ``limit`` bytes."""
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(limit)
    body = bytearray()
    async for chunk in request.content.iter_chunked(_READ_CHUNK):
        body += chunk
        if len(body) > limit:
            raise _too_large(limit)
    return bytes(body)


def decode_json_object(raw: bytes, *, max_depth: int = MAX_JSON_DEPTH) -> dict[str, Any]:
    """``raw`` as a JSON object, or BodyError 400 saying what is wrong with it."""
    if not raw.strip():
        raise BodyError(400, "bad_json", "request body is empty: send a JSON object")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BodyError(400, "bad_json", "request body is not UTF-8") from None
    if nesting_depth(text, max_depth) > max_depth:
        raise BodyError(400, "bad_json", f"request body nests deeper than {max_depth} levels")
    try:
        data = json.loads(text, parse_constant=reject_constant)
    except (ValueError, RecursionError):
        raise BodyError(400, "bad_json", "request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise BodyError(400, "bad_json", "request body must be a JSON object")
    return data


async def read_json_object(
    request: web.Request, *, limit: int, max_depth: int = MAX_JSON_DEPTH
) -> dict[str, Any]:
    """The body as a JSON object of at most ``limit`` bytes and ``max_depth`` levels."""
    return decode_json_object(await read_bounded(request, limit=limit), max_depth=max_depth)


async def refuse_large_body(request: web.Request, *, limit: int = MAX_IGNORED_BODY) -> None:
    """For a route that takes no body: ignore up to ``limit`` bytes of one, 413 past that."""
    if request.body_exists:
        await read_bounded(request, limit=limit)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def bounded_bodies(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bodies sent to routes that take none are bounded too (see the module docstring)."""
    proxied = _PROXY_MARK in request.path or request.path.startswith(_CLUSTER_PROXY_PREFIX)
    if request.method in BODYLESS_METHODS and not proxied:
        try:
            await refuse_large_body(request)
        except BodyError as refused:
            return refused.response()
    return await handler(request)


__all__ = [
    "MAX_JSON_DEPTH",
    "BodyError",
    "bounded_bodies",
    "close_if_unread",
    "decode_json_object",
    "read_bounded",
    "read_json_object",
    "refuse_large_body",
]
