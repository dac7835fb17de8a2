"""The audit middleware: a request id on every API answer, and one record per API write.

Placement: ``setup`` puts ``audit_writes`` first (outermost) in the application's middlewares,
outside ``api_errors`` and ``bounded_bodies``, so it sees the status and problem ``reason``
the caller really got: answers of handlers, problem documents made from ``ApiError`` (401 and
403 refusals of ``access.require`` included), aiohttp's 404/405/413, and 500s.

What is a write: POST, PUT, PATCH and DELETE under ``/api/v1/``, refused ones too, except the
agents' own protocol (``JOIN_PROTOCOL``: join and renew are a node asking for its certificate
with a bootstrap token or its client certificate, not an operator's act; their outcome is
in the join metrics and, for the node, in its events). The node proxy's writes are operator
writes to a node and are recorded.

Who: ``request[access.CALLER_KEY]`` (set by ``access.require``) gives the user name and role;
without it (no or a bad credential) the record says ``anonymous``.

Request id: ``X-Request-Id`` from the client when it is a short safe token
(``[A-Za-z0-9._:-]{1,64}``), else a new random one; echoed on every ``/api/`` answer (set in
``on_response_prepare``, so streamed answers carry it too) and kept in the record and the
log line, so an operator can quote it and an admin find it.

If the audit file fails (disk full, I/O error), the caller still gets the answer: the write
has happened by then, and refusing afterwards would only hide that it did. The record is not
lost either: the ``tunnel_server.audit`` log line is written before the database insert, and
the failure is logged and counted in ``tunnel_server_audit_write_failures_total`` for alerts.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
import sqlite3
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from aiohttp import web

from tunnel_server.api import access
from tunnel_server.audit.log_store import AuditLog, AuditRecord
from tunnel_server.web.errors import PROBLEM_CONTENT_TYPE

if TYPE_CHECKING:
    import prometheus_client

log = logging.getLogger("tunnel_server.audit")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
API_PREFIX = "/api/v1/"
JOIN_PROTOCOL = frozenset({"/api/v1/join", "/api/v1/renew"})
"""Paths of the agents' join protocol (and its ``/api/v1/join/{request}`` polls): not audited."""
REQUEST_ID_HEADER = "X-Request-Id"
_SAFE_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
MAX_FIELD = 256
"""Characters kept of a target or unmatched path: names are at most 253."""
MAX_BODY_READ = 64 * 1024
"""Bytes of an answer read for a problem's ``reason`` or a created object's id; a problem
document or a created token is far smaller, and a larger body is not parsed per write."""
_UNSAFE = re.compile(r"[^\x21-\x7e]")
# Route parameters that name a kind of object (``/fleet/{plural}/{name}``), and what a kind
# may look like to be put into an action.
KIND_PARAMETERS = frozenset({"plural"})
_WORD = re.compile(r"[a-z][a-z0-9-]{0,62}")
"""Anything but visible ASCII becomes ``?`` in a record: one log line, no terminal tricks."""

REQUEST_ID_KEY = web.RequestKey("request_id", str)
AUDIT_LOG_KEY = web.AppKey("audit_log", AuditLog)
AUDIT_FAILURES_KEY: web.AppKey[prometheus_client.Counter] = web.AppKey("audit_failures")


def request_id(sent: str | None) -> str:
    """The client's id when it is a short safe token, else a fresh one."""
    if sent is not None and _SAFE_ID.fullmatch(sent):
        return sent
    return secrets.token_hex(12)


def audited(method: str, path: str) -> bool:
    if method not in WRITE_METHODS or not path.startswith(API_PREFIX):
        return False
    return path not in JOIN_PROTOCOL and not path.startswith("/api/v1/join/")


def _clean(text: str, limit: int = MAX_FIELD) -> str:
    return _UNSAFE.sub("?", text[:limit])


def route_of(request: web.Request) -> tuple[str, list[tuple[str, str]]]:
    """The matched route pattern and its parameters (name, value), in path order."""
    info = request.match_info
    resource = info.route.resource if info.http_exception is None else None
    if resource is None or not resource.canonical.startswith(API_PREFIX):
        return _clean(request.path), []
    pattern = resource.canonical
    names = re.findall(r"\{(\w+)", pattern)
    params = [(name, info.get(name, "")) for name in names]
    # A fleet kind is part of what was asked (``fleet.placements.replace``), not the object:
    # the object is the name after it.
    for name, value in params:
        if name in KIND_PARAMETERS and _WORD.fullmatch(value):
            pattern = pattern.replace("{" + name + "}", value, 1)
    return pattern, [(n, v) for n, v in params if n not in KIND_PARAMETERS]


def action_of(method: str, pattern: str) -> str:
    """``nodes.approve``, ``tokens.create``, ``devices.twin.update``... (docs/audit.md)."""
    if not pattern.startswith(API_PREFIX):
        return "unknown"
    segments = [s for s in pattern[len(API_PREFIX) :].split("/") if s]
    words = [s for s in segments if not s.startswith("{")]
    if not words:
        return "unknown"
    if method == "POST" and len(segments) >= 2 and not segments[-1].startswith("{"):
        return ".".join(words)  # an action route: nodes/{name}/approve, admin-token/rotate
    verb = {"POST": "create", "PUT": "replace", "PATCH": "update", "DELETE": "delete"}[method]
    return ".".join([*words, verb])


def target_of(params: list[tuple[str, str]], response: web.StreamResponse | None) -> str | None:
    """The object named by the route; for a create (201), the one it made.

    A create names its object by its ``Location``; without one, by the ``id`` (else the
    ``name``) of the JSON object it answered.
    """
    if params:
        return _clean(params[0][1])
    if response is None or response.status != 201:
        return None
    if "Location" in response.headers:
        path = urlsplit(response.headers["Location"]).path.rstrip("/")
        return _clean(unquote(path.rpartition("/")[2])) or None
    body = _json_body(response)
    for key in ("id", "name"):
        value = body.get(key)
        if isinstance(value, str | int) and not isinstance(value, bool) and str(value):
            return _clean(str(value))
    return None


def _json_body(response: web.StreamResponse) -> dict[str, object]:
    """The JSON object a response carries (small, buffered bodies only), else ``{}``."""
    if not isinstance(response, web.Response) or not isinstance(response.body, bytes):
        return {}
    if len(response.body) > MAX_BODY_READ:
        return {}
    try:
        data = json.loads(response.body)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def reason_of(response: web.StreamResponse) -> str | None:
    """The ``reason`` of a problem answer (None for a success or another body)."""
    if response.status < 400 or response.content_type != PROBLEM_CONTENT_TYPE:
        return None
    reason = _json_body(response).get("reason")
    return _clean(reason, 64) if isinstance(reason, str) else None


@web.middleware
async def audit_writes(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Request id for ``/api/``; one audit record for every write (see the module docstring)."""
    if not request.path.startswith("/api/"):
        return await handler(request)
    request[REQUEST_ID_KEY] = request_id(request.headers.get(REQUEST_ID_HEADER))
    if not audited(request.method, request.path):
        return await handler(request)
    try:
        response = await handler(request)
    except web.HTTPException as answer:  # outside api_errors' reach: its status is the answer
        _record(request, answer.status, None, None)
        raise
    except asyncio.CancelledError:
        _record(request, 499, "client_closed", None)  # the client left before the answer
        raise
    except Exception:
        _record(request, 500, "internal_error", None)
        raise
    _record(request, response.status, reason_of(response), response)
    return response


def _record(
    request: web.Request, status: int, reason: str | None, response: web.StreamResponse | None
) -> None:
    caller = request.get(access.CALLER_KEY)
    route, params = route_of(request)
    record = AuditRecord(
        at=time.time(),
        user=caller.name if caller is not None else "anonymous",
        role=caller.role if caller is not None else None,
        method=request.method,
        route=route,
        action=action_of(request.method, route),
        target=target_of(params, response),
        status=status,
        reason=reason,
        request_id=request[REQUEST_ID_KEY],
        peer=request.remote,
    )
    # The log line first: it is the copy that survives a failing audit file.
    level = logging.WARNING if status >= 500 else logging.INFO
    log.log(
        level,
        "api write",
        extra={
            "kv": {
                "request_id": record.request_id,
                "user": record.user,
                "role": record.role or "-",
                "method": record.method,
                "route": record.route,
                "action": record.action,
                "target": record.target or "-",
                "status": record.status,
                "reason": record.reason or "-",
                "peer": record.peer or "-",
            }
        },
    )
    try:
        request.app[AUDIT_LOG_KEY].append(record)
    except sqlite3.Error as error:
        request.app[AUDIT_FAILURES_KEY].inc()
        log.error(  # noqa: TRY400 - the error text says it; no traceback per write
            "audit record not stored",
            extra={"kv": {"request_id": record.request_id, "error": _clean(str(error))}},
        )


async def add_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: every ``/api/`` answer carries its request id."""
    if REQUEST_ID_KEY in request:
        response.headers[REQUEST_ID_HEADER] = request[REQUEST_ID_KEY]
