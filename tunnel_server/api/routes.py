"""Handlers of the REST API under ``/api/v1/`` (the OpenAPI document is ``openapi.py``)."""

from __future__ import annotations

import logging
import time
from typing import Any

from aiohttp import web

from tunnel_server.api import access
from tunnel_server.api.auth import session_token
from tunnel_server.api.params import int_param, is_name, list_params
from tunnel_server.api.signer import ADMIN_PRINCIPAL
from tunnel_server.api.views import SORT_FIELDS, STATUSES, iso, overview, sort_key, summary
from tunnel_server.app_keys import (
    API_SETTINGS_KEY,
    AUTHORITY_KEY,
    DEVICES_KEY,
    HISTORY_KEY,
    HUB_KEY,
    SESSIONS_KEY,
    SETTINGS_KEY,
    SIGNER_KEY,
    STORE_KEY,
    TABLE_KEY,
)
from tunnel_server.identity import tokens
from tunnel_server.status.history import SERIES
from tunnel_server.store import Store
from tunnel_server.web.bodies import read_json_object, refuse_large_body
from tunnel_server.web.errors import ApiError

log = logging.getLogger("tunnel_server.api.routes")

"""Optional: the device-twin part registers ``name -> [device, ...]`` here; until then node
pages say nothing about devices (``"devices": null``)."""

_TOKEN_FIELDS = frozenset({"name", "kind", "ttl_seconds", "require_approval", "replace"})


def rows(app: web.Application, now: float) -> list[dict[str, Any]]:
    """Node table rows, ordered by name."""
    return [row.data for row in app[TABLE_KEY].rows(now)]


def _node_name(request: web.Request) -> str:
    name = request.match_info["name"]
    if not is_name(name):
        raise ApiError(
            400,
            "bad_name",
            "node names are 1-63 lower-case letters, digits, '-' or '.', starting and ending "
            "with a letter or digit",
        )
    return name


# ---------------------------------------------------------------- sessions


async def create_session(request: web.Request) -> web.Response:
    """Exchange the admin token or a user token for a console session token of that caller."""
    # It takes no body: one is bounded like every other (a 10 MB upload gets 413, not 201).
    await refuse_large_body(request, limit=request.app[API_SETTINGS_KEY].max_body_bytes)
    caller = access.authenticate(request)
    if caller.session_id is not None:
        access.count_failure(request.app, "admin_token_required")
        raise ApiError(
            403,
            "admin_token_required",
            "a session is made from the admin token or a user token, not from another session: "
            "sign in again",
        )
    settings = request.app[API_SETTINGS_KEY]
    now = time.time()
    # A session never outlives the token that made it.
    ttl = settings.session_ttl
    if caller.expires_at is not None:
        ttl = min(ttl, caller.expires_at - now)
    principal = caller.user_id or ADMIN_PRINCIPAL
    token, expires = request.app[SIGNER_KEY].issue(now=now, ttl=ttl, principal=principal)
    log.info(
        "console session created",
        extra={"kv": {"peer": request.remote, "user": caller.name, "role": caller.role}},
    )
    return web.json_response(
        {
            "token": token,
            "expires_at": iso(expires),
            "ttl_seconds": round(expires - now),
            **_whoami(caller),
        },
        status=201,
    )


def _whoami(caller: access.Caller) -> dict[str, Any]:
    return {
        "user": caller.name,
        "role": caller.role,
        "clusters": None if caller.clusters is None else sorted(caller.clusters),
    }


async def get_me(request: web.Request) -> web.Response:
    """Who the credential sent is: name, role, cluster scope and expiry (for the console)."""
    caller = access.require(request, "read")
    return web.json_response({**_whoami(caller), "expires_at": iso(caller.expires_at)})


async def delete_session(request: web.Request) -> web.Response:
    """Sign the calling console session out for good: its token stops working at once.

    Idempotent: a session signed out already (or expired) gets 204 again, so a console that
    retries, or two tabs sharing a session, never see an error for it.
    """
    signer = request.app[SIGNER_KEY]
    token = session_token(request)
    now = time.time()
    claim = None if token is None else signer.check(token, now=now)
    if token is None or claim is None:
        access.authenticate(request)  # says what is wrong with what was sent
        raise ApiError(
            403,
            "session_token_required",
            "only a console session signs out; the admin token is not a session (it stays "
            "valid until the server's data dir is reset)",
        )
    session_id = claim.session_id
    request.app[STORE_KEY].revoke_session(session_id, expires_at=claim.expires_at, now=now)
    streams = request.app[HUB_KEY].end_session(session_id)
    log.info(
        "console session signed out", extra={"kv": {"peer": request.remote, "streams": streams}}
    )
    return web.Response(status=204)


# ---------------------------------------------------------------- nodes


async def get_overview(request: web.Request) -> web.Response:
    caller = access.require(request, "read")
    now = time.time()
    seen = [row for row in rows(request.app, now) if access.sees_row(caller, row)]
    return web.json_response(overview(seen, now=now))


async def list_nodes(request: web.Request) -> web.Response:
    caller = access.require(request, "read")
    params = list_params(
        request,
        max_page=request.app[API_SETTINGS_KEY].max_page,
        statuses=STATUSES,
        sort_fields=SORT_FIELDS,
    )
    status, sort = params.status, params.sort
    now = time.time()
    found = [
        row
        for row in request.app[TABLE_KEY].rows(now)
        if (status is None or row.data["status"] == status)
        and params.query in row.data["name"]
        and access.sees_row(caller, row.data)
    ]
    if sort:
        field = sort.lstrip("-")
        present = [r for r in found if r.data.get(field) is not None]
        missing = [r for r in found if r.data.get(field) is None]
        key = sort_key(field)
        present.sort(key=lambda r: key(r.data), reverse=sort.startswith("-"))
        found = present + missing
    page = ",".join(row.text for row in found[params.offset : params.offset + params.limit])
    body = f'{{"total":{len(found)},"offset":{params.offset},"nodes":[{page}]}}'
    return web.Response(text=body, content_type="application/json")


async def get_node(request: web.Request) -> web.Response:
    caller = access.require(request, "read")
    name = _node_name(request)
    node = request.app[STORE_KEY].get_node(name)
    if node is None:
        raise ApiError(404, "node_not_found", f"no node named {name!r}: see GET /api/v1/nodes")
    if node.kind == "cluster":
        access.check_scope(request, caller, name)
    now = time.time()
    live = request.app[HISTORY_KEY].live(name)
    row = summary(
        node,
        live,
        connected=request.app[SESSIONS_KEY].get(name) is not None,
        now=now,
        settings=request.app[API_SETTINGS_KEY],
    )
    devices = request.app.get(DEVICES_KEY)
    lease = None
    if live is not None and live.last_report is not None:
        lease = request.app[HISTORY_KEY].lease_for(live.interval)
    return web.json_response(
        {
            **row,
            "created_at": iso(node.created_at),
            "cert_serial": node.cert_serial,
            "report_interval_seconds": live.interval if live is not None else None,
            "lease_seconds": lease,
            "metrics": dict(sorted(live.metrics.items())) if live is not None else {},
            "devices": None if devices is None else devices(name),
        }
    )


async def node_history(request: web.Request) -> web.Response:
    caller = access.require(request, "read")
    name = _node_name(request)
    history = request.app[HISTORY_KEY]
    retention = int(history.settings.history_retention)
    window = int_param(request, "window", 3600, 60, retention)
    node = request.app[STORE_KEY].get_node(name)
    if node is None:
        raise ApiError(404, "node_not_found", f"no node named {name!r}: see GET /api/v1/nodes")
    if node.kind == "cluster":
        access.check_scope(request, caller, name)
    now = time.time()
    points = history.history(name, since=now - window, until=now)
    return web.json_response(
        {
            "node": name,
            "window_seconds": window,
            "resolution_seconds": 60,
            "series": list(SERIES),
            "points": [{"t": p.minute, "n": p.samples, **p.values} for p in points],
        }
    )


# ---------------------------------------------------------------- bootstrap tokens


def _token_row(record: Any, now: float) -> dict[str, Any]:  # noqa: ANN401 - a TokenRecord
    state = "used" if record.used_at else ("expired" if record.expires_at <= now else "valid")
    return {
        "id": record.id,
        "kind": record.kind,
        "name": record.name,
        "status": state,
        "created_at": iso(record.created_at),
        "expires_at": iso(record.expires_at),
        "used_at": iso(record.used_at),
        "require_approval": record.require_approval,
    }


async def list_tokens(request: web.Request) -> web.Response:
    access.require(request, "admin")
    now = time.time()
    records = request.app[STORE_KEY].list_tokens()
    return web.json_response({"tokens": [_token_row(r, now) for r in reversed(records)]})


def _token_spec(data: dict[str, Any], max_ttl: float) -> tokens.TokenSpec:
    unknown = sorted(set(data) - _TOKEN_FIELDS)
    if unknown:
        raise ApiError(
            400,
            "bad_request",
            f"unknown field(s) {', '.join(unknown)}; known: {sorted(_TOKEN_FIELDS)}",
        )
    name = data.get("name")
    if not is_name(name):
        raise ApiError(
            400,
            "bad_name",
            "'name' must be the node's name: 1-63 lower-case letters, digits, '-' or '.', "
            "starting and ending with a letter or digit",
        )
    kind = data.get("kind", "node")
    if kind not in ("node", "cluster"):
        raise ApiError(400, "bad_request", "'kind' must be 'node' or 'cluster'")
    ttl = data.get("ttl_seconds", 3600)
    if not isinstance(ttl, int | float) or isinstance(ttl, bool) or not 60 <= ttl <= max_ttl:
        raise ApiError(
            400, "bad_request", f"'ttl_seconds' must be a number of seconds in 60..{max_ttl:.0f}"
        )
    approval = data.get("require_approval", False)
    if not isinstance(approval, bool):
        raise ApiError(400, "bad_request", "'require_approval' must be true or false")
    if not isinstance(data.get("replace", False), bool):
        raise ApiError(400, "bad_request", "'replace' must be true or false")
    return tokens.TokenSpec(kind=kind, name=name, ttl=float(ttl), require_approval=approval)


def _free_name(store: Store, name: str, *, replace: bool) -> None:
    """Refuse a token its join would be refused for, as ``tunnel-server token create`` does."""
    try:
        tokens.free_name(store, name, replace=replace)
    except tokens.NameInUseError as exc:
        state = "waits for approval" if exc.node.state == "pending" else "is joined"
        raise ApiError(
            409,
            "name_taken",
            f"{exc.node.kind} {name!r} {state}, so a join with a new token would be refused."
            ' To re-join a reinstalled or replaced machine under this name, send "replace":'
            " true (revokes the old one at once); to join another machine, use another name",
        ) from None


async def create_token(request: web.Request) -> web.Response:
    access.require(request, "admin")
    settings = request.app[SETTINGS_KEY]
    data = await read_json_object(request, limit=request.app[API_SETTINGS_KEY].max_body_bytes)
    spec = _token_spec(data, settings.join.max_token_ttl)
    store = request.app[STORE_KEY]
    _free_name(store, spec.name, replace=data.get("replace") is True)
    now = time.time()
    token = tokens.create_token(store, spec, now=now)
    ca_hash = request.app[AUTHORITY_KEY].ca_hash()
    server = store.get_meta("public_url") or f"https://{settings.public_name}:{settings.port}"
    return web.json_response(
        {
            "id": token.id,
            "token": str(token),
            "kind": spec.kind,
            "name": spec.name,
            "expires_at": iso(now + spec.ttl),
            "require_approval": spec.require_approval,
            "join_command": (
                f"edge-agent join --server {server} --token {token} --ca-hash {ca_hash}"
                f" --name {spec.name}"
            ),
        },
        status=201,
    )


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/v1/sessions", create_session)
    app.router.add_delete("/api/v1/sessions/current", delete_session)
    app.router.add_get("/api/v1/me", get_me)
    app.router.add_get("/api/v1/overview", get_overview)
    app.router.add_get("/api/v1/nodes", list_nodes)
    app.router.add_get("/api/v1/nodes/{name}", get_node)
    app.router.add_get("/api/v1/nodes/{name}/history", node_history)
    app.router.add_get("/api/v1/tokens", list_tokens)
    app.router.add_post("/api/v1/tokens", create_token)
