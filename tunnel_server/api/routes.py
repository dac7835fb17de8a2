"""Handlers of the REST API under ``/api/v1/`` (the OpenAPI document is ``openapi.py``)."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from tunnel_protocol import ErrorCode
from tunnel_server.api import access, events
from tunnel_server.api.auth import bearer, session_token
from tunnel_server.api.paging import page, sort_items
from tunnel_server.api.params import choice, int_param, is_name, name_query
from tunnel_server.api.signer import ADMIN_PRINCIPAL, admin_principal
from tunnel_server.api.views import SORT_FIELDS, STATUSES, iso, node_row, overview, sort_key
from tunnel_server.app_keys import (
    API_SETTINGS_KEY,
    AUTHORITY_KEY,
    CLUSTER_MANIFEST_KEY,
    DEVICES_KEY,
    HISTORY_KEY,
    HUB_KEY,
    SESSIONS_KEY,
    SETTINGS_KEY,
    SIGNER_KEY,
    STORE_KEY,
    TABLE_KEY,
    VERIFIED_ADMIN_KEY,
)
from tunnel_server.identity import tokens
from tunnel_server.replicas import opener
from tunnel_server.status.history import SERIES
from tunnel_server.store import (
    NodeRecord,
    NodeState,
    NotFoundError,
    Store,
    TokenRecord,
    TokenUsedError,
    WrongStateError,
)
from tunnel_server.web.bodies import (
    decode_json_object,
    read_bounded,
    read_json_object,
    refuse_large_body,
)
from tunnel_server.web.errors import ApiError

log = logging.getLogger("tunnel_server.api.routes")

Handler = Callable[[web.Request], Awaitable[web.Response]]

"""Optional: the device-twin part registers ``name -> [device, ...]`` here; until then node
pages say nothing about devices (``"devices": null``)."""

_TOKEN_FIELDS = frozenset(
    {"name", "kind", "ttlSeconds", "requireApproval", "replace", "manifest", "image"}
)
MAX_IMAGE = 512
"""Characters of an image reference in a token request (registry/name:tag@digest fit)."""
SERIES_NAMES = {"rx_bps": "rxBps", "tx_bps": "txBps", "rtt_ms": "rttMs"}
"""History columns -> their API names (the others are one word already)."""
_TOKEN_ID = re.compile(r"[a-z0-9]{6}")


def rows(app: web.Application, now: float) -> list[dict[str, Any]]:
    """Node table rows, ordered by name."""
    return [row.data for row in app[TABLE_KEY].rows(now)]


def unknown_fields(data: dict[str, Any], known: frozenset[str]) -> None:
    """400 ``unknown_field`` naming what a write body holds besides ``known``."""
    unknown = sorted(set(data) - known)
    if unknown:
        raise ApiError(
            400,
            "unknown_field",
            f"unknown field(s) {', '.join(map(repr, unknown))}: this route takes "
            f"{', '.join(sorted(known)) or 'no fields'}",
        )


async def optional_body(request: web.Request, known: frozenset[str]) -> dict[str, Any]:
    """A write body that may be left out: none, or a JSON object of ``known`` fields only."""
    raw = await read_bounded(request, limit=request.app[API_SETTINGS_KEY].max_body_bytes)
    if not raw.strip():
        return {}
    data = decode_json_object(raw)
    unknown_fields(data, known)
    return data


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
    admin_id = tokens.admin_token_id(bearer(request)) if caller.user_id is None else None
    if admin_id is not None:  # bound to this admin token: rotating it ends the session
        principal = admin_principal(admin_id)
    token, expires = request.app[SIGNER_KEY].issue(now=now, ttl=ttl, principal=principal)
    log.info(
        "console session created",
        extra={"kv": {"peer": request.remote, "user": caller.name, "role": caller.role}},
    )
    return web.json_response(
        {
            "token": token,
            "expiresAt": iso(expires),
            "ttlSeconds": round(expires - now),
            **_whoami(caller),
        },
        status=201,
        headers={"Location": "/api/v1/sessions/current"},
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
    return web.json_response({**_whoami(caller), "expiresAt": iso(caller.expires_at)})


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
    """One page of node rows: ``status``, ``q`` (name part) and ``sort`` filter and order."""
    caller = access.require(request, "read")
    status = choice(request, "status", STATUSES)
    sort = choice(request, "sort", SORT_FIELDS + tuple("-" + f for f in SORT_FIELDS)) or "name"
    query = name_query(request)
    now = time.time()
    found = [
        row.data
        for row in request.app[TABLE_KEY].rows(now)
        if (status is None or row.data["status"] == status)
        and query in row.data["name"]
        and access.sees_row(caller, row.data)
    ]
    descending = sort.startswith("-")
    key = sort_key(sort.lstrip("-"), descending=descending)
    ordered = sort_items(found, key=key, reverse=descending)
    return web.json_response(
        page(request, ordered, key=key, render=lambda row: row, reverse=descending)
    )


def _visible_node(request: web.Request, caller: access.Caller, name: str) -> NodeRecord:
    """The node ``name``: 404 if there is none, 403 if it is a cluster outside the scope."""
    node = request.app[STORE_KEY].get_node(name)
    if node is None:
        raise ApiError(404, "node_not_found", f"no node named {name!r}: see GET /api/v1/nodes")
    if node.kind == "cluster":
        access.check_scope(request, caller, name)
    return node


def _row(request: web.Request, node: NodeRecord) -> dict[str, Any]:
    return node_row(
        node,
        request.app[HISTORY_KEY].live(node.name),
        connected=opener.connected(request.app, node.name),
        now=time.time(),
        settings=request.app[API_SETTINGS_KEY],
    )


async def get_node(request: web.Request) -> web.Response:
    caller = access.require(request, "read")
    node = _visible_node(request, caller, _node_name(request))
    name = node.name
    live = request.app[HISTORY_KEY].live(name)
    devices = request.app.get(DEVICES_KEY)
    lease = None
    if live is not None and live.last_report is not None:
        lease = request.app[HISTORY_KEY].lease_for(live.interval)
    return web.json_response(
        {
            **_row(request, node),
            "createdAt": iso(node.created_at),
            "certSerial": node.cert_serial,
            "reportIntervalSeconds": live.interval if live is not None else None,
            "leaseSeconds": lease,
            "metrics": dict(sorted(live.metrics.items())) if live is not None else {},
            "devices": None if devices is None else devices(name),
        }
    )


async def node_history(request: web.Request) -> web.Response:
    caller = access.require(request, "read")
    name = _node_name(request)
    history = request.app[HISTORY_KEY]
    retention = int(history.settings.history_retention)
    window = int_param(request, "windowSeconds", 3600, 60, retention)
    _visible_node(request, caller, name)
    now = time.time()
    points = history.history(name, since=now - window, until=now)
    return web.json_response(
        {
            "node": name,
            "windowSeconds": window,
            "resolutionSeconds": 60,
            "series": [SERIES_NAMES.get(column, column) for column in SERIES],
            "points": [
                {
                    "at": iso(p.minute),
                    "samples": p.samples,
                    **{SERIES_NAMES.get(k, k): v for k, v in p.values.items()},
                }
                for p in points
            ],
        }
    )


# ---------------------------------------------------------------- node actions

_ACTIONS: dict[str, tuple[NodeState, tuple[NodeState, ...]]] = {
    "approve": ("approved", ("pending",)),
    "deny": ("revoked", ("pending",)),
    "revoke": ("revoked", ("pending", "approved", "revoked")),
}
"""verb -> (the state it sets, the states it may start from)."""


def _node_action(verb: str) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        return await node_action(request, verb)

    handler.__name__ = f"{verb}_node"
    return handler


async def node_action(request: web.Request, verb: str) -> web.Response:
    """``POST /api/v1/nodes/{name}/approve|deny|revoke``: the node as it is after, 200.

    approve and deny act on a pending join only (409 ``wrong_state`` else); deny refuses it
    (the agent's poll gets ``join_rejected``). revoke is idempotent and ends the node's tunnel
    session in this same request: the store change alone would be noticed by the session
    watcher within its poll interval.
    """
    caller = access.require(request, "write")
    name = _node_name(request)
    await optional_body(request, frozenset())
    _visible_node(request, caller, name)
    state, only_from = _ACTIONS[verb]
    try:
        node = request.app[STORE_KEY].change_node_state(name, state, only_from=only_from)
    except NotFoundError:
        raise ApiError(
            404, "node_not_found", f"no node named {name!r}: see GET /api/v1/nodes"
        ) from None
    except WrongStateError as wrong:
        raise ApiError(
            409,
            "wrong_state",
            f"{wrong.node.kind} {name!r} is {wrong.node.state}, not waiting for approval: only a"
            f" pending join can be approved or denied"
            + (
                f"; to cut it off, POST /api/v1/nodes/{name}/revoke"
                if wrong.node.state == "approved"
                else "; a revoked node joins again with a new token (POST /api/v1/tokens)"
            ),
            extra={"state": wrong.node.state},
        ) from None
    if state == "revoked":
        _cut_off(request.app, name)
    log.info(
        "node %s",
        verb,
        extra={"kv": {"name": name, "kind": node.kind, "user": caller.name}},
    )
    request.app[TABLE_KEY].mark(name)
    return web.json_response(_row(request, node))


def _cut_off(app: web.Application, name: str) -> None:
    """End the live tunnel session of a revoked node now (its agent sees CANCEL and stops)."""
    session = app[SESSIONS_KEY].get(name)
    if session is not None:
        log.warning("cutting off node", extra={"kv": {"node": name, "why": "revoked"}})
        session.connection.close(ErrorCode.CANCEL, "this node was revoked by an operator")


# ---------------------------------------------------------------- bootstrap tokens


def _token_row(record: TokenRecord, now: float) -> dict[str, Any]:
    if record.used_at:
        state = "used"
    elif record.revoked_at:
        state = "revoked"
    else:
        state = "expired" if record.expires_at <= now else "valid"
    return {
        "id": record.id,
        "kind": record.kind,
        "name": record.name,
        "status": state,
        "createdAt": iso(record.created_at),
        "expiresAt": iso(record.expires_at),
        "usedAt": iso(record.used_at),
        "revokedAt": iso(record.revoked_at),
        "requireApproval": record.require_approval,
    }


def _token_key(record: TokenRecord) -> tuple[float, str]:
    return (record.created_at, record.id)


async def list_tokens(request: web.Request) -> web.Response:
    """Bootstrap tokens, newest first, never their secrets."""
    access.require(request, "admin")
    now = time.time()
    records = sort_items(request.app[STORE_KEY].list_tokens(), key=_token_key, reverse=True)
    return web.json_response(
        page(request, records, key=_token_key, render=lambda r: _token_row(r, now), reverse=True)
    )


def _token_id(request: web.Request) -> str:
    token_id = request.match_info["id"]
    if not _TOKEN_ID.fullmatch(token_id):
        raise ApiError(
            400,
            "bad_name",
            "a bootstrap token's id is its first 6 characters ([a-z0-9]): see GET /api/v1/tokens",
        )
    return token_id


def _no_token(token_id: str) -> ApiError:
    return ApiError(
        404, "token_not_found", f"no bootstrap token {token_id!r}: see GET /api/v1/tokens"
    )


async def get_token(request: web.Request) -> web.Response:
    access.require(request, "admin")
    token_id = _token_id(request)
    record = request.app[STORE_KEY].get_token(token_id)
    if record is None:
        raise _no_token(token_id)
    return web.json_response(_token_row(record, time.time()))


async def delete_token(request: web.Request) -> web.Response:
    """Revoke an unused bootstrap token: a join with it is refused (401) from now on."""
    caller = access.require(request, "admin")
    token_id = _token_id(request)
    try:
        record = request.app[STORE_KEY].revoke_token(token_id, now=time.time())
    except NotFoundError:
        raise _no_token(token_id) from None
    except TokenUsedError:
        raise ApiError(
            409,
            "token_used",
            f"bootstrap token {token_id} was used already: its node joined; to cut that off,"
            " POST /api/v1/nodes/{name}/revoke",
        ) from None
    log.info(
        "bootstrap token revoked",
        extra={"kv": {"token_id": token_id, "name": record.name, "user": caller.name}},
    )
    return web.Response(status=204)


def _token_spec(data: dict[str, Any], max_ttl: float) -> tokens.TokenSpec:
    unknown_fields(data, _TOKEN_FIELDS)
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
    ttl = data.get("ttlSeconds", 3600)
    if not isinstance(ttl, int | float) or isinstance(ttl, bool) or not 60 <= ttl <= max_ttl:
        raise ApiError(
            400, "bad_request", f"'ttlSeconds' must be a number of seconds in 60..{max_ttl:.0f}"
        )
    approval = data.get("requireApproval", False)
    for field in ("requireApproval", "replace", "manifest"):
        if not isinstance(data.get(field, False), bool):
            raise ApiError(400, "bad_request", f"{field!r} must be true or false")
    image = data.get("image")
    if "image" in data and (
        not isinstance(image, str) or not 0 < len(image) <= MAX_IMAGE or not image.isprintable()
    ):
        raise ApiError(
            400, "bad_request", f"'image' must be an image reference of 1..{MAX_IMAGE} characters"
        )
    if data.get("manifest") is True and kind != "cluster":
        raise ApiError(
            400,
            "bad_request",
            "'manifest' is the cluster agent's install manifest: send it with \"kind\": "
            '"cluster" (a node joins with the joinCommand instead)',
        )
    if "image" in data and data.get("manifest") is not True:
        raise ApiError(
            400, "bad_request", "'image' goes into the manifest: send \"manifest\": true"
        )
    return tokens.TokenSpec(kind=kind, name=name, ttl=float(ttl), require_approval=approval)


def _free_name(store: Store, name: str, *, replace: bool) -> NodeRecord | None:
    """Refuse a token its join would be refused for, as ``tunnel-server token create`` does."""
    try:
        return tokens.free_name(store, name, replace=replace)
    except tokens.NameInUseError as exc:
        pending = exc.node.state == "pending"
        state = "waits for approval" if pending else "is joined"
        kinds = "clusters" if exc.node.kind == "cluster" else "nodes"
        waiting = (
            f" Its join waits for you: `tunnel-server {kinds} approve {name}` (POST"
            f" /api/v1/{kinds}/{name}/approve) or deny it."
            if pending
            else ""
        )
        raise ApiError(
            409,
            "name_taken",
            f"{exc.node.kind} {name!r} {state}, so a join with a new token would be refused."
            f"{waiting}"
            ' To re-join a reinstalled or replaced machine under this name, send "replace":'
            " true (`--replace`; revokes the old one at once); to join another machine, use"
            " another name",
        ) from None


async def create_token(request: web.Request) -> web.Response:
    access.require(request, "admin")
    settings = request.app[SETTINGS_KEY]
    data = await read_json_object(request, limit=request.app[API_SETTINGS_KEY].max_body_bytes)
    spec = _token_spec(data, settings.join.max_token_ttl)
    render = request.app.get(CLUSTER_MANIFEST_KEY)
    manifest = data.get("manifest") is True
    if manifest and render is None:
        raise ApiError(
            400,
            "manifest_unavailable",
            "this server cannot make cluster manifests (its clusters part is not mounted):"
            " create the token without 'manifest' and install the cluster agent by hand",
        )
    store = request.app[STORE_KEY]
    if _free_name(store, spec.name, replace=data.get("replace") is True) is not None:
        _cut_off(request.app, spec.name)
    now = time.time()
    token = tokens.create_token(store, spec, now=now)
    ca_hash = request.app[AUTHORITY_KEY].ca_hash()
    server = store.get_meta("public_url") or f"https://{settings.public_name}:{settings.port}"
    body: dict[str, Any] = {
        "id": token.id,
        "token": str(token),
        "kind": spec.kind,
        "name": spec.name,
        "expiresAt": iso(now + spec.ttl),
        "requireApproval": spec.require_approval,
        "joinCommand": (
            f"edge-agent join --server {server} --token {token} --ca-hash {ca_hash}"
            f" --name {spec.name}"
        ),
    }
    if manifest and render is not None:
        try:
            body["manifest"] = render(
                name=spec.name,
                token=str(token),
                server=server,
                ca_hash=ca_hash,
                image=data.get("image"),
            )
        except (ApiError, ValueError):
            store.revoke_token(token.id, now=time.time())  # never leave a token no one has
            raise
    return web.json_response(body, status=201, headers={"Location": f"/api/v1/tokens/{token.id}"})


# ---------------------------------------------------------------- admin token


async def rotate_admin_token(request: web.Request) -> web.Response:
    """A new admin token: the old one and its console sessions fail from this moment on."""
    caller = access.require(request, "admin")
    await optional_body(request, frozenset())
    data_dir = request.app[SETTINGS_KEY].data_dir
    token = tokens.rotate_admin_token(request.app[STORE_KEY], data_dir, now=time.time())
    # Caches of verified callers hold the old token: empty them now, not at the next poll.
    request.app[VERIFIED_ADMIN_KEY].clear()
    ended = events.recheck_streams(request.app)
    log.warning(
        "admin token rotated",
        extra={"kv": {"user": caller.name, "peer": request.remote, "streams_ended": ended}},
    )
    return web.json_response({"token": token})


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/v1/sessions", create_session)
    app.router.add_delete("/api/v1/sessions/current", delete_session)
    app.router.add_get("/api/v1/me", get_me)
    app.router.add_get("/api/v1/overview", get_overview)
    app.router.add_get("/api/v1/nodes", list_nodes)
    app.router.add_get("/api/v1/nodes/{name}", get_node)
    app.router.add_get("/api/v1/nodes/{name}/history", node_history)
    for verb in _ACTIONS:
        app.router.add_post(f"/api/v1/nodes/{{name}}/{verb}", _node_action(verb))
    app.router.add_get("/api/v1/tokens", list_tokens)
    app.router.add_post("/api/v1/tokens", create_token)
    app.router.add_get("/api/v1/tokens/{id}", get_token)
    app.router.add_delete("/api/v1/tokens/{id}", delete_token)
    app.router.add_post("/api/v1/admin-token/rotate", rotate_admin_token)
