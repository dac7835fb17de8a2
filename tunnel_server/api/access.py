"""Who the caller is and what their role lets them do: the one authorization point.

Rules (docs/security.md has the full table):

* Roles: ``viewer`` reads; ``operator`` reads and writes within its cluster scope; ``admin``
  does everything, including users and bootstrap tokens. The bootstrap admin token and the
  console sessions made from it are ``admin`` with no scope limit.
* A cluster scope (``clusters``) limits reads and writes that name a cluster to those clusters;
  ``None`` means every cluster. Node-level routes are not cluster-scoped (``cluster=None``).
* Every route calls ``require(request, verb, cluster=...)`` before it does anything, so a caller
  outside its role or scope gets 403 before anything leaves the cloud.

``authenticate`` is where bearer tokens are checked; today it knows the admin token and console
sessions (``api/auth.py``); the users part adds per-user tokens behind the same function.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from aiohttp import web

from tunnel_server.api import auth
from tunnel_server.web.errors import ApiError

Role = Literal["admin", "operator", "viewer"]
ROLES: tuple[Role, ...] = ("admin", "operator", "viewer")
Verb = Literal["read", "write", "admin"]

_ALLOWED: dict[Role, frozenset[Verb]] = {
    "viewer": frozenset({"read"}),
    "operator": frozenset({"read", "write"}),
    "admin": frozenset({"read", "write", "admin"}),
}


@dataclass(frozen=True, kw_only=True)
class Caller:
    """An authenticated caller of the cloud's APIs."""

    name: str
    """The user's name (``admin`` for the bootstrap admin token and its console sessions)."""
    role: Role
    clusters: frozenset[str] | None = None
    """The clusters this caller may touch; None = all."""
    session_id: str | None = None
    """A console session's id, when the caller is one."""

    def in_scope(self, cluster: str) -> bool:
        return self.clusters is None or cluster in self.clusters


def allows(caller: Caller, verb: Verb, *, cluster: str | None = None) -> bool:
    """Whether ``caller`` may do ``verb`` (on ``cluster``, when the action names one)."""
    if verb not in _ALLOWED[caller.role]:
        return False
    return cluster is None or caller.in_scope(cluster)


def authenticate(request: web.Request) -> Caller:
    """The caller of ``request``, or ApiError 401 that says what to send instead."""
    who = auth.authenticate(request)
    return Caller(name="admin", role="admin", session_id=who.session_id)


def require(request: web.Request, verb: Verb, *, cluster: str | None = None) -> Caller:
    """Authenticate and authorize; ApiError 401 or 403 (saying why) when not allowed."""
    caller = authenticate(request)
    if verb not in _ALLOWED[caller.role]:
        raise ApiError(
            403,
            "forbidden",
            f"user {caller.name!r} has role {caller.role!r}, which may not {verb} here; "
            "ask an admin for a user with a role that may",
        )
    if cluster is not None and not caller.in_scope(cluster):
        raise ApiError(
            403,
            "cluster_out_of_scope",
            f"user {caller.name!r} may not reach cluster {cluster!r} (its scope is "
            f"{', '.join(sorted(caller.clusters or ())) or 'empty'})",
        )
    return caller
