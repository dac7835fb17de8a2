"""The impersonation the agent lets through to its member API server (defence in depth).

The cloud strips every caller's ``Authorization`` and ``Impersonate-*`` and sends, for its
user with role R (docs/clusters.md)::

    Impersonate-User: edgefleet:R
    Impersonate-Group: edgefleet:R
    Impersonate-Extra-user.edgefleet.io: <the cloud user's name, percent-encoded>

The agent's RBAC pins impersonation to exactly these names; this check refuses, before the
agent adds its own credential, anything else: no ``Impersonate-User`` (the request would run
as the agent itself), another user or group, a UID, another extra key. Pure: headers in,
a refusal message or None out.
"""

from __future__ import annotations

from collections.abc import Iterable

ROLES = ("admin", "operator", "viewer")
USERS = frozenset(f"edgefleet:{role}" for role in ROLES)
"""The only users (and groups) the cloud impersonates."""
EXTRA_HEADER = "impersonate-extra-user.edgefleet.io"
"""The one extra key: the cloud user's name, for the member's audit log."""
MAX_EXTRA_VALUES = 4
"""Values of the extra key: the cloud sends one."""
_PREFIX = "impersonate-"


def refusal(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """Why a request head with ``headers`` may not pass, or None when it follows the scheme."""
    users: list[str] = []
    groups: list[str] = []
    extras = 0
    for raw_name, raw_value in headers:
        name = raw_name.decode("latin-1").lower()
        if not name.startswith(_PREFIX):
            continue
        value = raw_value.decode("latin-1")
        if name == "impersonate-user":
            users.append(value)
        elif name == "impersonate-group":
            groups.append(value)
        elif name == EXTRA_HEADER:
            extras += 1
        else:
            return f"the header {raw_name.decode('latin-1')} is not part of EdgeFleet's scheme"
    if len(users) != 1 or users[0] not in USERS:
        shown = ", ".join(repr(u) for u in users) or "none"
        return (
            f"Impersonate-User must be one of {', '.join(sorted(USERS))} exactly once "
            f"(got {shown}): requests reach this cluster only through the EdgeFleet cloud"
        )
    if any(group != users[0] for group in groups):
        return f"Impersonate-Group may only be {users[0]} for Impersonate-User {users[0]}"
    if extras > MAX_EXTRA_VALUES:
        return f"at most {MAX_EXTRA_VALUES} values of Impersonate-Extra-user.edgefleet.io"
    return None
