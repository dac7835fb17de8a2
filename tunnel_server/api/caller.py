"""``Caller``: who an API call comes from, as ``access.require`` returns it.

Apart from ``access`` so that ``app_keys`` can name the type without an import cycle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Role = Literal["admin", "operator", "viewer"]
ROLES: tuple[Role, ...] = ("admin", "operator", "viewer")


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
    user_id: str | None = None
    """The cloud user's id; None for the bootstrap admin token and its sessions."""
    expires_at: float | None = None
    """When the credential stops working (UNIX seconds); None: never."""

    def in_scope(self, cluster: str) -> bool:
        return self.clusters is None or cluster in self.clusters
