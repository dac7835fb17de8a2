"""Who is calling: bearer tokens checked (authentication only; ``access.py`` authorizes).

``Authorization: Bearer <token>`` on every call (no cookies anywhere, so no CSRF surface).
Three kinds of bearer value are accepted:

* the bootstrap admin token from the server's data dir (``admin-token``): role ``admin``;
* a cloud user's token, ``efu1.<id>.<secret>`` (``tunnel-server users create`` /
  ``kubeconfig``; see ``tunnel_server.identity.users``): the user's role and cluster scope;
* a console session token, ``s2.<expiry>.<nonce>.<principal>.<mac>``, which
  ``POST /api/v1/sessions`` gives in exchange for the admin token or a user token. It acts as
  whoever made it (``principal``: ``admin`` or the user's id) and expires
  (``ApiSettings.session_ttl``, 8 h, and never after the token that made it), so a browser tab
  left open does not hold a long-lived token; the console keeps it in ``sessionStorage`` only.
  A user's sessions stop with the user (revoked, expired). The MAC is HMAC-SHA256 under a key
  kept in the data dir (``console-session-key``, 0600), so sessions survive a server restart and
  deleting the key file signs every console out. ``DELETE /api/v1/sessions/current`` signs one
  session out for good: its id (the nonce) is kept in the store until the session would have
  expired, and ``authenticate`` refuses it from then on (``session_revoked``).

Every refusal is ApiError 401 with a stable code (``unauthenticated``, ``invalid_token``,
``token_expired``, ``user_revoked``, ``user_expired``, ``user_unknown``, ``invalid_session``,
``session_expired``, ``session_revoked``) and a message that says what to send instead.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from aiohttp import web

from tunnel_server.api.signer import (
    REVOKED_MESSAGE,
    USER_REVOKED_MESSAGE,
    SessionClaim,
    is_session_token,
)
from tunnel_server.app_keys import SIGNER_KEY, STORE_KEY
from tunnel_server.identity import tokens, users
from tunnel_server.store import UserRecord
from tunnel_server.web.errors import ApiError

log = logging.getLogger("tunnel_server.api.auth")

_BEARER_HELP = (
    "send 'Authorization: Bearer <token>' with the admin token from the server's data dir "
    "(admin-token), a user token from `tunnel-server users create`, or a console session "
    "token from POST /api/v1/sessions"
)
MAX_TOKEN = 512
"""Longest bearer value read, in bytes: ours are under 120; more is refused unread."""


@dataclass(frozen=True, kw_only=True)
class Identity:
    """Who a credential stands for."""

    name: str
    """The user's name; ``admin`` for the bootstrap admin token and its sessions."""
    role: users.Role
    clusters: frozenset[str] | None = None
    user_id: str | None = None
    """None for the bootstrap admin token and its sessions."""
    expires_at: float | None = None
    """When this credential stops working (a session's or token's expiry); None: never."""
    session_id: str | None = None
    """A console session's id (its nonce): what signing out revokes."""


ADMIN = Identity(name=users.BOOTSTRAP_ADMIN, role="admin")


def bearer(request: web.Request) -> str:
    value = request.headers.get("Authorization", "")
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def session_token(request: web.Request) -> str | None:
    """The bearer value if it looks like a console session token (genuine or not)."""
    token = bearer(request)
    return token if is_session_token(token) and len(token) <= MAX_TOKEN else None


def authenticate(request: web.Request, *, now: float | None = None) -> Identity:
    """The caller of ``request``, or ApiError 401 that says what to send instead."""
    token = bearer(request)
    if not token:
        raise _refused("unauthenticated", f"no credentials: {_BEARER_HELP}")
    return identify(request.app, token, now=time.time() if now is None else now)


def identify(app: web.Application, token: str, *, now: float) -> Identity:
    """Who ``token`` (a bearer value) stands for at ``now``; ApiError 401 if nobody."""
    if len(token) > MAX_TOKEN:
        raise _refused(
            "invalid_token", f"bearer token too long (over {MAX_TOKEN} bytes): {_BEARER_HELP}"
        )
    store = app[STORE_KEY]
    if is_session_token(token):
        claim = app[SIGNER_KEY].check(token, now=now)
        if claim is None:
            raise _refused(
                "invalid_session",
                "this console session is not valid (the server's session key changed?): "
                "sign in again",
            )
        return _session(app, claim, now=now)
    if users.looks_like_user_token(token):
        try:
            user, expires = users.verify_user_token(store, token, now=now)
        except users.TokenRefusedError as refused:
            raise _refused(refused.code, str(refused)) from None
        return _user_identity(user, expires_at=expires)
    if tokens.verify_admin_token(store, token):
        return ADMIN
    raise _refused(
        "invalid_token",
        "that token is not valid: use the admin token from the server's data dir "
        "(admin-token), e.g. `sudo cat /var/lib/tunnel-server/admin-token`, or a user token "
        "(efu1.…) from `tunnel-server users create`",
    )


def _session(app: web.Application, claim: SessionClaim, *, now: float) -> Identity:
    admin_made = claim.admin_made
    whose = "the admin token" if admin_made else "your user token"
    if claim.expires_at <= now:
        raise _refused(
            "session_expired",
            f"this console session expired at {_stamp(claim.expires_at)}: sign in again with "
            f"{whose}",
        )
    store = app[STORE_KEY]
    if store.session_revoked(claim.session_id):
        message = REVOKED_MESSAGE if admin_made else USER_REVOKED_MESSAGE
        raise _refused("session_revoked", message)
    if admin_made:
        if not tokens.admin_session_valid(store, claim.admin_token_id):
            raise _refused(
                "session_revoked",
                "the admin token that made this console session was rotated: sign in again "
                "with the new admin token (the server's data dir, admin-token)",
            )
        return Identity(
            name=ADMIN.name, role="admin", expires_at=claim.expires_at, session_id=claim.session_id
        )
    try:
        user = users.check_user(store.get_user_by_id(claim.principal), now=now)
    except users.TokenRefusedError as refused:
        raise _refused(refused.code, f"{refused} (this console session was made by it)") from None
    return _user_identity(user, expires_at=claim.expires_at, session_id=claim.session_id)


def _user_identity(
    user: UserRecord, *, expires_at: float, session_id: str | None = None
) -> Identity:
    return Identity(
        name=user.name,
        role=users.parse_role(user.role),
        clusters=None if user.clusters is None else frozenset(user.clusters),
        user_id=user.id,
        expires_at=min(expires_at, user.expires_at),
        session_id=session_id,
    )


def _refused(code: str, message: str) -> ApiError:
    return ApiError(401, code, message, headers=_CHALLENGE)


def _stamp(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(timestamp))


_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="edgefleet"'}
