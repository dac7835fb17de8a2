"""``GET /api/v1/audit`` (admins) and ``GET /api/v1/nodes/{name}/events`` (every role).

Both are lists in the one list shape, newest first. The audit list pages in SQLite by record
id (the log may hold a million rows, so it never loads them all) and leaves out
``remainingItemCount`` (a count over a million rows per page is not worth its cost); the
events of one node are few (``NodeEventSettings.max_per_node``) and page in memory.
"""

from __future__ import annotations

import asyncio
import re

from aiohttp import web

from tunnel_server.api import access, paging
from tunnel_server.api.views import iso
from tunnel_server.app_keys import NODE_EVENTS_KEY, STORE_KEY
from tunnel_server.audit.log_store import AuditQuery, AuditRecord
from tunnel_server.audit.recorder import AUDIT_LOG_KEY
from tunnel_server.status.node_events import NodeEvent
from tunnel_server.web.errors import ApiError

MAX_FILTER = 256
"""Characters of a filter value: names are at most 253."""
_STATUS = re.compile(r"[1-5][0-9][0-9]")
_STATUS_CLASS = re.compile(r"[1-5]xx")
_NAME = re.compile(r"[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?")
FILTERS = ("user", "action", "target", "result")


def _filter(request: web.Request, name: str) -> str | None:
    value = request.query.get(name)
    if value is None:
        return None
    if not value or len(value) > MAX_FILTER:
        raise ApiError(
            400, "bad_parameter", f"query parameter {name!r} must be 1..{MAX_FILTER} characters"
        )
    return value


def audit_query(request: web.Request) -> AuditQuery:
    """The filters of a listing; 400 ``bad_parameter`` for a bad value."""
    result = _filter(request, "result")
    status = status_class = None
    reason = None
    if result is not None:
        if _STATUS.fullmatch(result):
            status = int(result)
        elif _STATUS_CLASS.fullmatch(result):
            status_class = int(result[0])
        else:
            reason = result
    return AuditQuery(
        user=_filter(request, "user"),
        action=_filter(request, "action"),
        target=_filter(request, "target"),
        status=status,
        status_class=status_class,
        reason=reason,
    )


def render_record(record: AuditRecord) -> dict[str, object]:
    return {
        "id": record.id,
        "at": iso(record.at),
        "user": record.user,
        "role": record.role,
        "method": record.method,
        "route": record.route,
        "action": record.action,
        "target": record.target,
        "status": record.status,
        "reason": record.reason,
        "requestId": record.request_id,
        "peer": record.peer,
    }


async def list_audit(request: web.Request) -> web.Response:
    access.require(request, "admin")
    query = audit_query(request)
    params = paging.page_params(request)
    before = None
    if params.after is not None:
        if len(params.after) != 1 or not isinstance(params.after[0], int):
            raise ApiError(400, "bad_continue", "the 'continue' token is not one of this list")
        before = params.after[0]
    # One more than a page says whether another page follows.
    records = await asyncio.to_thread(
        request.app[AUDIT_LOG_KEY].list, query, before_id=before, limit=params.limit + 1
    )
    chosen = records[: params.limit]
    token = None
    if len(records) > params.limit:
        token = paging.encode_continue((chosen[-1].id,), scope=params.scope)
    return web.json_response(
        paging.list_body([render_record(r) for r in chosen], token=token, remaining=None)
    )


def render_event(event: NodeEvent) -> dict[str, object]:
    return {"id": event.id, "at": iso(event.at), "type": event.type, "detail": event.detail}


async def list_node_events(request: web.Request) -> web.Response:
    caller = access.require(request, "read")
    name = request.match_info["name"]
    if not _NAME.fullmatch(name):
        raise ApiError(
            400, "bad_name", "a node name is 1-253 of a-z 0-9 - . starting and ending alnum"
        )
    node = request.app[STORE_KEY].get_node(name)
    if node is not None and node.kind == "cluster":
        access.check_scope(request, caller, name)
    events = request.app[NODE_EVENTS_KEY].events(name)
    if node is None and not events:
        raise ApiError(404, "node_not_found", f"no node named {name!r}: see GET /api/v1/nodes")
    newest_first = paging.sort_items(events, key=lambda e: (e.id,), reverse=True)
    return web.json_response(
        paging.page(request, newest_first, key=lambda e: (e.id,), render=render_event, reverse=True)
    )


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/v1/audit", list_audit)
    app.router.add_get("/api/v1/nodes/{name}/events", list_node_events)
