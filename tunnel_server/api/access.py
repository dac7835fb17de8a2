"""Who the caller is and what their role lets them do: the one authorization point.

Rules (docs/security.md has the full table, and a test holds every route to it):

* Roles: ``viewer`` reads; ``operator`` reads and writes within its cluster scope; ``admin``
  does everything, including users and bootstrap tokens. The bootstrap admin token and the
  console sessions made from it are ``admin`` with no scope limit; so are admin users (an admin
  has no scope).
* A cluster scope (``clusters``) limits reads and writes that name a cluster to those clusters;
  ``None`` means every cluster. Node-level routes are not cluster-scoped (``cluster=None``).
* Every route calls ``require(request, verb, cluster=...)`` before it does anything, so a caller
  outside its role or scope gets 403 before anything leaves the cloud.

``authenticate`` is where bearer tokens are checked (``api/auth.py``: the admin token, user
tokens, console sessions). Refusals are counted by reason in
``tunnel_server_auth_failures_total``.
"""

from __future__ import annotations

import time
from typing import Any, Literal

import prometheus_client
from aiohttp import web

from tunnel_server.api import auth
from tunnel_server.api.caller import ROLES, Caller, Role
from tunnel_server.app_keys import AUTH_FAILURES_KEY, REGISTRY_KEY, VERIFIED_ADMIN_KEY
from tunnel_server.web.errors import ApiError

__all__ = [
    "CALLER_KEY",
    "ROLES",
    "Caller",
    "Role",
    "Verb",
    "allows",
    "authenticate",
    "check_scope",
    "require",
    "sees_row",
    "visible",
]

Verb = Literal["read", "write", "admin"]

CALLER_KEY = web.RequestKey("caller", Caller)
"""Who ``require`` let through, kept on the request for the audit log (``request.get``)."""

_ALLOWED: dict[Role, frozenset[Verb]] = {
    "viewer": frozenset({"read"}),
    "operator": frozenset({"read", "write"}),
    "admin": frozenset({"read", "write", "admin"}),
}
_NEEDS: dict[Verb, str] = {
    "read": "viewer, operator or admin",
    "write": "operator or admin",
    "admin": "admin",
}
MAX_CACHED = 1024
"""Most bearer values ``require(..., cached=True)`` remembers; then it starts afresh."""


def allows(caller: Caller, verb: Verb, *, cluster: str | None = None) -> bool:
    """Whether ``caller`` may do ``verb`` (on ``cluster``, when the action names one)."""
    if verb not in _ALLOWED[caller.role]:
        return False
    return cluster is None or caller.in_scope(cluster)


def visible(caller: Caller, clusters: list[str]) -> list[str]:
    """The ``clusters`` a caller may see: a list route shows a scoped caller only its own."""
    return [name for name in clusters if caller.in_scope(name)]


def caller_of(identity: auth.Identity) -> Caller:
    return Caller(
        name=identity.name,
        role=identity.role,
        clusters=identity.clusters,
        session_id=identity.session_id,
        user_id=identity.user_id,
        expires_at=identity.expires_at,
    )


def authenticate(request: web.Request) -> Caller:
    """The caller of ``request``, or ApiError 401 that says what to send instead."""
    try:
        return caller_of(auth.authenticate(request))
    except ApiError as refused:
        count_failure(request.app, refused.code)
        raise


def require(
    request: web.Request, verb: Verb, *, cluster: str | None = None, cached: bool = False
) -> Caller:
    """Authenticate and authorize; ApiError 401 or 403 (saying why) when not allowed.

    ``cached``: remember the caller of a bearer value until the store changes (a revocation
    bumps its revision and the tunnel's watcher empties the cache within its poll interval)
    or the credential expires, for routes on the hot path of many small requests (the node
    proxy); everything else reads the store each time and sees a revocation at once.
    """
    caller = _cached(request) if cached else authenticate(request)
    request[CALLER_KEY] = caller
    if verb not in _ALLOWED[caller.role]:
        count_failure(request.app, "forbidden")
        raise ApiError(
            403,
            "forbidden",
            f"user {caller.name!r} has role {caller.role!r}, which may not {verb} here: this "
            f"needs role {_NEEDS[verb]}; ask an admin for a user with one",
        )
    if cluster is not None:
        check_scope(request, caller, cluster)
    return caller


def check_scope(request: web.Request, caller: Caller, cluster: str) -> None:
    """ApiError 403 ``cluster_out_of_scope`` unless ``caller`` may reach ``cluster``.

    For routes that learn only after reading that a name is a cluster's (a node route asked
    for a cluster record).
    """
    if caller.in_scope(cluster):
        return
    count_failure(request.app, "cluster_out_of_scope")
    raise ApiError(
        403,
        "cluster_out_of_scope",
        f"user {caller.name!r} may not reach cluster {cluster!r} (its scope is "
        f"{', '.join(sorted(caller.clusters or ())) or 'empty'}); ask an admin for a user "
        "whose --clusters name it",
    )


def sees_row(caller: Caller, row: dict[str, Any]) -> bool:
    """Whether a node-table row is for ``caller``'s eyes: nodes always, clusters in scope.

    Node routes are not cluster-scoped, but the store keeps registered clusters in the same
    table as nodes: a scoped caller must not learn other clusters' names and state there.
    """
    return row.get("kind") != "cluster" or caller.in_scope(str(row.get("name")))


def _cached(request: web.Request) -> Caller:
    known = request.app.get(VERIFIED_ADMIN_KEY)
    token = auth.bearer(request)
    now = time.time()
    if known is not None and token:
        caller = known.get(token)
        if caller is not None and (caller.expires_at is None or caller.expires_at > now):
            return caller
    caller = authenticate(request)
    if known is not None and caller.session_id is None:  # sign-outs bump no revision
        if len(known) >= MAX_CACHED:
            known.clear()
        known[token] = caller
    return caller


def count_failure(app: web.Application, reason: str) -> None:
    counter = app.get(AUTH_FAILURES_KEY)
    if counter is not None:
        counter.labels(reason).inc()


def setup(app: web.Application) -> None:
    """The failure counter and the verified-caller cache."""
    app[AUTH_FAILURES_KEY] = prometheus_client.Counter(
        "tunnel_server_auth_failures",
        "API calls refused by authentication (401) or authorization (403), by reason",
        ["reason"],
        registry=app[REGISTRY_KEY],
    )
    app[VERIFIED_ADMIN_KEY] = {}
