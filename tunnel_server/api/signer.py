"""Console session tokens: ``s1.<expiry>.<nonce>.<mac>``, signed by a key in the data dir.

The MAC is HMAC-SHA256; see ``tunnel_server.api.auth`` for who may call the API with one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
from typing import TYPE_CHECKING

from daemon_support.files import write_atomic

if TYPE_CHECKING:
    from pathlib import Path

log = logging.getLogger("tunnel_server.api.auth")

KEY_FILE = "console-session-key"
SESSION_PREFIX = "s1"
REVOKED_MESSAGE = "this console session was signed out: sign in again with the admin token"


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

    def issue(self, *, now: float, ttl: float) -> tuple[str, float]:
        expires = int(now + ttl)
        payload = f"{SESSION_PREFIX}.{expires}.{secrets.token_hex(8)}"
        return f"{payload}.{self._mac(payload)}", float(expires)

    def check(self, token: str, *, now: float) -> float | None:
        """The expiry of a genuine token (maybe past); None if it is not one of ours."""
        parts = token.split(".")
        if len(parts) != 4 or parts[0] != SESSION_PREFIX or not parts[1].isdigit():
            return None
        payload = ".".join(parts[:3])
        if not hmac.compare_digest(self._mac(payload).encode(), parts[3].encode()):
            return None
        del now
        return float(parts[1])

    @staticmethod
    def session_id(token: str) -> str:
        """The id of a token ``check`` accepted: its nonce, unique per session."""
        return token.split(".")[2]
