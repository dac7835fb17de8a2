"""Console session tokens: ``s2.<expiry>.<nonce>.<principal>.<mac>``, signed by a data-dir key.

``principal`` is who the session acts for: ``admin-<admin token id>`` (made from the bootstrap
admin token; the id binds it to that token, so rotating the admin token ends its sessions; a
bare ``admin`` is a session made before that, valid until the first rotation) or the id of the
cloud user whose token made it (``UserRecord.id``, random and never reused, so a
user revoked and made again under the same name does not bring the old one's sessions back).
The MAC is HMAC-SHA256 over everything before it; see ``tunnel_server.api.auth`` for who may
call the API with one. Sessions of the older form ``s1.<expiry>.<nonce>.<mac>`` were only ever
made from the admin token and are still accepted as such until they expire.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING

from daemon_support.files import write_atomic

if TYPE_CHECKING:
    from pathlib import Path

log = logging.getLogger("tunnel_server.api.auth")

KEY_FILE = "console-session-key"
SESSION_PREFIX = "s2"
LEGACY_PREFIX = "s1"
ADMIN_PRINCIPAL = "admin"
REVOKED_MESSAGE = "this console session was signed out: sign in again with the admin token"
USER_REVOKED_MESSAGE = "this console session was signed out: sign in again with your user token"
_PRINCIPAL = re.compile(r"admin(-[a-z0-9]{6})?|[a-z0-9]{12}")


@dataclass(frozen=True, kw_only=True)
class SessionClaim:
    """What a genuine session token says (its expiry may be past)."""

    expires_at: float
    session_id: str
    """Its nonce, unique per session: what signing out revokes."""
    principal: str
    """``admin``, ``admin-<admin token id>`` or a user id."""

    @property
    def admin_made(self) -> bool:
        """Whether the admin token made this session (not a user's token)."""
        return self.principal == ADMIN_PRINCIPAL or self.principal.startswith(ADMIN_PRINCIPAL + "-")

    @property
    def admin_token_id(self) -> str | None:
        """The id of the admin token that made it; None if unknown (older) or a user's."""
        head, _, token_id = self.principal.partition("-")
        return token_id if head == ADMIN_PRINCIPAL and token_id else None


def admin_principal(token_id: str) -> str:
    """The principal of a session made from the admin token ``token_id``."""
    return f"{ADMIN_PRINCIPAL}-{token_id}"


def is_session_token(token: str) -> bool:
    """Whether ``token`` has the form of a console session token (genuine or not)."""
    return token.startswith((SESSION_PREFIX + ".", LEGACY_PREFIX + "."))


class SessionSigner:
    """Makes and checks console session tokens."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    @classmethod
    def load_or_create(cls, data_dir: Path) -> SessionSigner:
        path = data_dir / KEY_FILE
        try:
            key = bytes.fromhex(path.read_text().strip())
        except (OSError, ValueError):
            key = secrets.token_bytes(32)
            write_atomic(path, key.hex().encode() + b"\n", mode=0o600)
            log.info("created console session key", extra={"kv": {"file": path}})
        return cls(key)

    def _mac(self, payload: str) -> str:
        digest = hmac.new(self._key, payload.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def issue(
        self, *, now: float, ttl: float, principal: str = ADMIN_PRINCIPAL
    ) -> tuple[str, float]:
        if not _PRINCIPAL.fullmatch(principal):
            raise ValueError(f"not a session principal: {principal!r}")
        expires = int(now + ttl)
        payload = f"{SESSION_PREFIX}.{expires}.{secrets.token_hex(8)}.{principal}"
        return f"{payload}.{self._mac(payload)}", float(expires)

    def check(self, token: str, *, now: float) -> SessionClaim | None:
        """What a genuine token says (its expiry maybe past); None if it is not one of ours."""
        del now
        parts = token.split(".")
        if len(parts) == 4 and parts[0] == LEGACY_PREFIX:  # made from the admin token only
            parts = [*parts[:3], ADMIN_PRINCIPAL, parts[3]]
            payload = ".".join(parts[:3])
        elif len(parts) == 5 and parts[0] == SESSION_PREFIX:
            payload = ".".join(parts[:4])
        else:
            return None
        if not parts[1].isdigit() or not _PRINCIPAL.fullmatch(parts[3]):
            return None
        if not hmac.compare_digest(self._mac(payload).encode(), parts[4].encode()):
            return None
        return SessionClaim(expires_at=float(parts[1]), session_id=parts[2], principal=parts[3])

    @staticmethod
    def session_id(token: str) -> str:
        """The id of a token ``check`` accepted: its nonce, unique per session."""
        return token.split(".")[2]
