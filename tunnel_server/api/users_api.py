"""Cloud users in the REST API (admin only): list, create, read, revoke, tokens, kubeconfigs.

``GET|POST /api/v1/users``, ``GET|DELETE /api/v1/users/{name}``,
``POST /api/v1/users/{name}/tokens``, ``POST /api/v1/users/{name}/kubeconfig``.

What a user is, how its tokens look and are checked: ``identity/users.py``. Rules here:

* Every handler calls ``access.require(request, "admin")`` first: users and their tokens are
  the keys to everything, so only an admin manages them (docs/security.md).
* A token is in an answer exactly once, when it is made (201); the store keeps its hash.
* Revoking (``DELETE``) takes effect on the next request of any token or console session of the
  user (every route but the node proxy reads the store each time; the node proxy's cache of
  verified tokens is emptied here too); its live event streams end within the store poll
  interval (``api.events``).
* Bodies are bounded (``ApiSettings.max_body_bytes``); unknown fields are a 400
  ``unknown_field`` naming them.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

from aiohttp import web

from device_models import Problem
from tunnel_server.api import access
from tunnel_server.api.paging import page, sort_items
from tunnel_server.api.params import is_name
from tunnel_server.api.views import iso
from tunnel_server.app_keys import (
    API_SETTINGS_KEY,
    AUTHORITY_KEY,
    STORE_KEY,
    VERIFIED_ADMIN_KEY,
)
from tunnel_server.identity import users
from tunnel_server.store import Store, UserRecord
from tunnel_server.web.bodies import decode_json_object, read_bounded
from tunnel_server.web.errors import ApiError

__all__ = ["setup", "user_json"]

log = logging.getLogger("tunnel_server.api.users")

_CREATE_FIELDS = frozenset({"name", "role", "clusters", "ttlSeconds"})
_TOKEN_FIELDS = frozenset({"ttlSeconds"})
_KUBECONFIG_FIELDS = frozenset({"clusters", "server", "ttlSeconds"})
_PORT = r"(6553[0-5]|655[0-2][0-9]|65[0-4][0-9][0-9]|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3})"
SERVER_PATTERN = rf"^https://([A-Za-z0-9]([A-Za-z0-9.-]{{0,251}}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]{{2,45}}\])(:{_PORT})?/?$"
"""A kubeconfig's ``server``: ``https://HOST[:PORT]`` (a DNS name, IPv4 or [IPv6]), nothing more."""
SERVER_URL = re.compile(SERVER_PATTERN)


def user_json(user: UserRecord, *, now: float) -> dict[str, Any]:
    """A user as the API shows it: never a token, only how many it holds."""
    return {
        "name": user.name,
        "role": user.role,
        "clusters": None if user.clusters is None else list(user.clusters),
        "state": users.user_state(user, now=now),
        "createdAt": iso(user.created_at),
        "expiresAt": iso(user.expires_at),
        "revokedAt": iso(user.revoked_at),
        "tokenCount": user.tokens,
    }


async def _body(request: web.Request, known: frozenset[str], *, required: bool) -> dict[str, Any]:
    """The JSON object sent (``{}`` for none when not ``required``); 400 on unknown fields."""
    raw = await read_bounded(request, limit=request.app[API_SETTINGS_KEY].max_body_bytes)
    if not raw.strip() and not required:
        return {}
    data = decode_json_object(raw)
    unknown = sorted(set(data) - known)
    if unknown:
        shown = [name[:40] for name in unknown[:10]]
        raise ApiError(
            400,
            "unknown_field",
            f"unknown field(s) {', '.join(map(repr, shown))}; this route takes "
            f"{', '.join(sorted(known))}",
            problems=tuple(Problem(path="/" + name, reason="unknown field") for name in shown),
        )
    return data


def _bad(field: str, detail: str) -> ApiError:
    return ApiError(
        400,
        "bad_request",
        f"{field!r} {detail}",
        problems=(Problem(path="/" + field, reason=detail),),
    )


def _ttl(data: dict[str, Any], *, default: float, high: float) -> float:
    ttl = data.get("ttlSeconds", default)
    if (
        not isinstance(ttl, int | float)
        or isinstance(ttl, bool)
        or not users.MIN_TTL <= ttl <= high
    ):
        raise _bad("ttlSeconds", f"must be a number of seconds in {users.MIN_TTL:.0f}..{high:.0f}")
    return float(ttl)


def _cluster_list(data: dict[str, Any]) -> tuple[str, ...] | None:
    """``clusters``: null/absent (every cluster) or 1..MAX_CLUSTERS valid names."""
    value = data.get("clusters")
    if value is None:
        return None
    if (
        not isinstance(value, list)
        or not value
        or len(value) > users.MAX_CLUSTERS
        or not all(is_name(name) for name in value)
    ):
        raise _bad(
            "clusters",
            f"must be null (every cluster) or a list of 1..{users.MAX_CLUSTERS} cluster names "
            "(1-63 lower-case letters, digits, '-' or '.')",
        )
    return tuple(sorted(set(value)))


def _user_name(request: web.Request) -> str:
    name = request.match_info["name"]
    if not is_name(name):
        raise ApiError(
            400,
            "bad_name",
            "user names are 1-63 lower-case letters, digits, '-' or '.', starting and ending "
            "with a letter or digit",
        )
    return name


def _user(store: Store, name: str, *, now: float) -> UserRecord:
    user = store.get_user(name, now=now)
    if user is None:
        raise ApiError(404, "user_not_found", f"no user named {name!r}: see GET /api/v1/users")
    return user


def _active(store: Store, name: str, *, now: float) -> UserRecord:
    """The user if it may get new tokens; 404 unknown, 409 ``user_inactive`` else."""
    user = _user(store, name, now=now)
    state = users.user_state(user, now=now)
    if state != "active":
        raise ApiError(
            409,
            "user_inactive",
            f"user {name!r} is {state}: it gets no new tokens. Make it again with POST "
            "/api/v1/users (a revoked or expired name may be reused)",
            extra={"state": state},
        )
    return user


async def list_users(request: web.Request) -> web.Response:
    """``GET /api/v1/users``: every user by name, revoked and expired ones too."""
    access.require(request, "admin")
    now = time.time()
    found = [user_json(u, now=now) for u in request.app[STORE_KEY].list_users(now=now)]

    def key(row: dict[str, Any]) -> tuple[Any, ...]:
        return (row["name"],)

    body = page(request, sort_items(found, key=key), key=key, render=lambda row: row)
    return web.json_response(body)


async def create_user(request: web.Request) -> web.Response:
    """``POST /api/v1/users``: the user and its first token (201; the token shown once)."""
    caller = access.require(request, "admin")
    data = await _body(request, _CREATE_FIELDS, required=True)
    name = data.get("name")
    if not isinstance(name, str):
        raise _bad("name", "is required: the user's name, 1-63 of a-z 0-9 - .")
    try:
        users.validate_user_name(name)
    except users.UserError as exc:
        raise ApiError(
            400, "bad_name", str(exc), problems=(Problem(path="/name", reason="bad name"),)
        ) from None
    role = data.get("role")
    if role not in users.ROLES:
        raise _bad("role", f"must be one of {', '.join(users.ROLES)}")
    clusters = _cluster_list(data)
    if role == "admin" and clusters is not None:
        raise _bad(
            "clusters",
            "must be null for an admin (it manages every cluster); give a scoped user role "
            "operator or viewer",
        )
    ttl = _ttl(data, default=users.DEFAULT_USER_TTL, high=users.MAX_USER_TTL)
    store = request.app[STORE_KEY]
    now = time.time()
    existing = store.get_user(name, now=now)
    if existing is not None and existing.revoked_at is None:
        raise ApiError(
            409,
            "user_exists",
            f"user {name!r} exists: revoke it first (DELETE /api/v1/users/{name}) to replace "
            f"it, or POST /api/v1/users/{name}/tokens for another token of it",
        )
    try:
        user, token = users.create_user(store, name, role=role, clusters=clusters, ttl=ttl, now=now)
    except users.UserError as exc:  # made by another request just now
        raise ApiError(409, "user_exists", str(exc)) from None
    log.info("user created", extra={"kv": {"user": name, "role": role, "by": caller.name}})
    fresh = store.get_user(name, now=now) or user
    return web.json_response(
        {**user_json(fresh, now=now), "token": token},
        status=201,
        headers={"Location": f"/api/v1/users/{name}"},
    )


async def get_user(request: web.Request) -> web.Response:
    """``GET /api/v1/users/{name}``."""
    access.require(request, "admin")
    name = _user_name(request)
    now = time.time()
    return web.json_response(user_json(_user(request.app[STORE_KEY], name, now=now), now=now))


async def revoke_user(request: web.Request) -> web.Response:
    """``DELETE /api/v1/users/{name}``: every token and session of it stops at once."""
    caller = access.require(request, "admin")
    name = _user_name(request)
    store = request.app[STORE_KEY]
    now = time.time()
    _user(store, name, now=now)
    try:
        users.revoke_user(store, name, now=now)
    except users.UserError:
        raise ApiError(404, "user_not_found", f"no user named {name!r}") from None
    verified = request.app.get(VERIFIED_ADMIN_KEY)
    if verified is not None:
        verified.clear()  # the node proxy's cache: not even one poll interval of grace
    log.info("user revoked", extra={"kv": {"user": name, "by": caller.name}})
    return web.json_response(user_json(_user(store, name, now=now), now=now))


async def create_token(request: web.Request) -> web.Response:
    """``POST /api/v1/users/{name}/tokens``: another token of an active user (201)."""
    caller = access.require(request, "admin")
    name = _user_name(request)
    data = await _body(request, _TOKEN_FIELDS, required=False)
    ttl = _ttl(data, default=users.DEFAULT_TOKEN_TTL, high=users.MAX_USER_TTL)
    store = request.app[STORE_KEY]
    now = time.time()
    user = _active(store, name, now=now)
    token = _issue(store, name, ttl=ttl, now=now)
    log.info("user token issued", extra={"kv": {"user": name, "by": caller.name}})
    return web.json_response(
        {"token": token, "expiresAt": iso(min(now + ttl, user.expires_at))}, status=201
    )


def _issue(store: Store, name: str, *, ttl: float, now: float) -> str:
    try:
        return users.issue_user_token(store, name, ttl=ttl, now=now)
    except users.UserError as exc:
        raise ApiError(409, "too_many_tokens", str(exc)) from None


def _server(data: dict[str, Any], store: Store) -> str:
    value = data.get("server")
    if value is None:
        return store.get_meta("public_url") or "https://SERVER:8443"
    if not isinstance(value, str) or not SERVER_URL.fullmatch(value):
        raise _bad("server", "must be https://HOST[:PORT], as kubectl reaches this server")
    return value.rstrip("/")


async def create_kubeconfig(request: web.Request) -> web.Response:
    """``POST /api/v1/users/{name}/kubeconfig``: a new token in a kubeconfig (201)."""
    caller = access.require(request, "admin")
    name = _user_name(request)
    data = await _body(request, _KUBECONFIG_FIELDS, required=False)
    wanted = _cluster_list(data)
    ttl = _ttl(data, default=users.DEFAULT_TOKEN_TTL, high=users.MAX_USER_TTL)
    store = request.app[STORE_KEY]
    server = _server(data, store)
    now = time.time()
    user = _active(store, name, now=now)
    registered = [
        n.name for n in store.list_nodes() if n.kind == "cluster" and n.state != "revoked"
    ]
    scope = [n for n in registered if user.clusters is None or n in user.clusters]
    if wanted is not None:
        outside = [c for c in wanted if user.clusters is not None and c not in user.clusters]
        if outside:
            raise ApiError(
                400,
                "outside_scope",
                f"cluster(s) {', '.join(outside)} are outside user {name!r}'s scope "
                f"({', '.join(user.clusters or ())}): leave them out, or make a user whose "
                "clusters name them",
                problems=(Problem(path="/clusters", reason="outside the user's scope"),),
            )
        missing = [c for c in wanted if c not in registered]
        if missing:
            raise ApiError(
                404,
                "cluster_not_found",
                f"no registered cluster named {', '.join(missing)}: see GET /api/v1/clusters "
                '(join one with POST /api/v1/tokens {"kind": "cluster", ...})',
            )
        scope = list(wanted)
    if not scope:
        raise ApiError(
            409,
            "no_clusters",
            f"no registered cluster is in user {name!r}'s scope yet: join one first "
            '(POST /api/v1/tokens {"kind": "cluster", "name": ...})',
        )
    token = _issue(store, name, ttl=ttl, now=now)
    text = users.kubeconfig_text(
        user=name,
        token=token,
        clusters=scope,
        server=server,
        ca_pem=request.app[AUTHORITY_KEY].ca_pem(),
    )
    log.info(
        "kubeconfig issued",
        extra={"kv": {"user": name, "clusters": len(scope), "by": caller.name}},
    )
    return web.json_response(
        {
            "kubeconfig": text,
            "expiresAt": iso(min(now + ttl, user.expires_at)),
            "clusters": scope,
        },
        status=201,
    )


def setup(app: web.Application) -> None:
    """Mount the routes; needs the store, the CA and the API (``api.setup``) first."""
    app.router.add_get("/api/v1/users", list_users)
    app.router.add_post("/api/v1/users", create_user)
    app.router.add_get("/api/v1/users/{name}", get_user)
    app.router.add_delete("/api/v1/users/{name}", revoke_user)
    app.router.add_post("/api/v1/users/{name}/tokens", create_token)
    app.router.add_post("/api/v1/users/{name}/kubeconfig", create_kubeconfig)
