"""Who may call the REST API: the admin token, or a console session made from it.

``Authorization: Bearer <token>`` on every call (no cookies anywhere, so no CSRF surface).
Two kinds of bearer value are accepted:

* the admin token from the server's data dir (``admin-token``), for scripts and the CLI;
* a console session token, ``s1.<expiry>.<nonce>.<mac>``, which ``POST /api/v1/sessions``
  gives in exchange for the admin token. It expires (``ApiSettings.session_ttl``, 8 h), so a
  browser tab left open does not hold the admin token forever; the console keeps it in
  ``sessionStorage`` only. The MAC is HMAC-SHA256 under a key kept in the data dir
  (``console-session-key``, 0600), so sessions survive a server restart and deleting the key
  file signs every console out. ``DELETE /api/v1/sessions/current`` signs one session out for
  good: its id (the nonce) is kept in the store until the session would have expired, and
  ``authenticate`` refuses it from then on (``session_revoked``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from aiohttp import web

from tunnel_server.api.signer import REVOKED_MESSAGE, SESSION_PREFIX
from tunnel_server.app_keys import SIGNER_KEY, STORE_KEY
from tunnel_server.identity import tokens
from tunnel_server.web.errors import ApiError

log = logging.getLogger("tunnel_server.api.auth")

_BEARER_HELP = (
    "send 'Authorization: Bearer <token>' with the admin token from the server's data dir "
    "(admin-token) or a console session token from POST /api/v1/sessions"
)


@dataclass(frozen=True, kw_only=True)
class Caller:
    kind: str
    """``admin`` (the admin token) or ``session`` (a console session)."""
    expires_at: float | None = None
    session_id: str | None = None
    """A console session's id (its nonce): what signing out revokes."""


def bearer(request: web.Request) -> str:
    value = request.headers.get("Authorization", "")
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def is_admin(request: web.Request) -> bool:
    return tokens.verify_admin_token(request.app[STORE_KEY], bearer(request))


def session_token(request: web.Request) -> str | None:
    """The bearer value if it looks like a console session token (genuine or not)."""
    token = bearer(request)
    return token if token.startswith(SESSION_PREFIX + ".") and len(token) <= _MAX_TOKEN else None


def authenticate(request: web.Request, *, now: float | None = None) -> Caller:
    """The caller, or ApiError 401 that says what to send instead."""
    token = bearer(request)
    if not token:
        raise ApiError(
            401, "unauthenticated", f"no credentials: {_BEARER_HELP}", headers=_CHALLENGE
        )
    if len(token) > _MAX_TOKEN:
        raise ApiError(401, "unauthenticated", "bearer token too long", headers=_CHALLENGE)
    now = time.time() if now is None else now
    if token.startswith(SESSION_PREFIX + "."):
        signer = request.app[SIGNER_KEY]
        expires = signer.check(token, now=now)
        if expires is None:
            raise ApiError(
                401,
                "invalid_session",
                "this console session is not valid (the server's session key changed?): "
                "sign in again with the admin token",
                headers=_CHALLENGE,
            )
        if expires <= now:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(expires))
            raise ApiError(
                401,
                "session_expired",
                f"this console session expired at {stamp}: sign in again with the admin token",
                headers=_CHALLENGE,
            )
        session_id = signer.session_id(token)
        if request.app[STORE_KEY].session_revoked(session_id):
            raise ApiError(401, "session_revoked", REVOKED_MESSAGE, headers=_CHALLENGE)
        return Caller(kind="session", expires_at=expires, session_id=session_id)
    if tokens.verify_admin_token(request.app[STORE_KEY], token):
        return Caller(kind="admin")
    raise ApiError(
        401,
        "invalid_token",
        "that token is not valid: use the admin token from the server's data dir "
        "(admin-token), e.g. `sudo cat /var/lib/tunnel-server/admin-token`",
        headers=_CHALLENGE,
    )


_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="edgefleet"'}
_MAX_TOKEN = 512
