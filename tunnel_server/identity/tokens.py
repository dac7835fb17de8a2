"""Bootstrap tokens, the admin API token and node names.

A bootstrap token is ``<id>.<secret>`` (kubeadm's ``[a-z0-9]{6}.[a-z0-9]{16}``, ~82 bits of
secret from ``secrets``). It is bound to a kind and a node name, expires (default 1 h), is
single-use, and may require an operator's approval. The store keeps only SHA-256 of the secret:
a fast hash is enough because the secret is random, not a password. Hashes are compared in
constant time.

The admin token (``<id>.<secret>`` with a 32-character secret) authenticates operators on the
REST API; it is created on first start and its secret written once to ``<data-dir>/admin-token``.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import string
from dataclasses import dataclass
from typing import TYPE_CHECKING

from daemon_support.files import write_atomic
from tunnel_server.store import (
    DuplicateIdError,
    NodeKind,
    NodeRecord,
    Store,
    StoreError,
    TokenRecord,
)

if TYPE_CHECKING:
    from pathlib import Path

log = logging.getLogger("tunnel_server.tokens")

ADMIN_FILE = "admin-token"
_ALPHABET = string.ascii_lowercase + string.digits
_TOKEN_RE = re.compile(r"([a-z0-9]{6})\.([a-z0-9]{16})")
_ADMIN_RE = re.compile(r"([a-z0-9]{6})\.([a-z0-9]{32})")
# RFC 1123 label characters plus dots, at most 63 so it fits a certificate's CN (64 max).
_NAME_RE = re.compile(r"[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?")
_DUMMY_HASH = hashlib.sha256(b"no such token").hexdigest()


class TokenError(Exception):
    """A presented bootstrap token cannot be used. ``code`` is stable for API clients."""

    code = "invalid_token"


class InvalidTokenError(TokenError):
    code = "invalid_token"


class ExpiredTokenError(TokenError):
    code = "token_expired"


class UsedTokenError(TokenError):
    code = "token_used"


@dataclass(frozen=True, kw_only=True)
class BootstrapToken:
    id: str
    secret: str

    def __str__(self) -> str:
        return f"{self.id}.{self.secret}"

    def __repr__(self) -> str:  # never print the secret by accident
        return f"BootstrapToken(id={self.id!r}, secret=<hidden>)"


def _random(length: int) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def same_hash(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def validate_name(name: str) -> str:
    """Return ``name`` if it is a valid node or cluster name, else raise ValueError."""
    if not _NAME_RE.fullmatch(name):
        raise ValueError(
            f"invalid name {name!r}: use 1-63 lower-case letters, digits, '-' or '.',"
            " starting and ending with a letter or digit"
        )
    return name


def parse_token(text: str) -> BootstrapToken:
    match = _TOKEN_RE.fullmatch(text.strip())
    if match is None:
        raise InvalidTokenError(
            "malformed bootstrap token: expected <6 chars>.<16 chars> of [a-z0-9],"
            " as printed by `tunnel-server token create`"
        )
    return BootstrapToken(id=match[1], secret=match[2])


@dataclass(frozen=True, kw_only=True)
class TokenSpec:
    """What a bootstrap token allows: who may join, for how long, and whether approval is due."""

    kind: NodeKind
    name: str
    ttl: float
    """Seconds until the token expires."""
    require_approval: bool = False


_ID_ATTEMPTS = 8


class NameInUseError(Exception):
    """A node of the name is joined or waits for approval, so a new token could not be used."""

    def __init__(self, node: NodeRecord) -> None:
        if node.state == "pending":
            now = f"waits for approval: approve it (`tunnel-server nodes approve {node.name}`)"
        else:
            now = "is joined, so a join with a new token would be refused"
        super().__init__(
            f"{node.kind} {node.name!r} {now}. To re-join a reinstalled or replaced machine as"
            f" {node.name!r}, add --replace (revokes the old one at once); to join another"
            " machine, give it another --name"
        )
        self.node = node


def free_name(store: Store, name: str, *, replace: bool) -> NodeRecord | None:
    """Make sure a token for ``name`` can be redeemed; return the node revoked, if any.

    A join under a name that a pending or approved node holds is refused, so the token is
    refused now; with ``replace`` that node is revoked instead (its session is cut off).
    """
    existing = store.get_node(name)
    if existing is None or existing.state == "revoked":
        return None
    if not replace:
        raise NameInUseError(existing)
    revoked = store.set_node_state(name, "revoked")
    log.info(
        "revoked to be replaced",
        extra={"kv": {"name": name, "kind": existing.kind, "was": existing.state}},
    )
    return revoked


def create_token(store: Store, spec: TokenSpec, *, now: float) -> BootstrapToken:
    """Make a token, store its hash, and return it: the only time the secret is seen."""
    validate_name(spec.name)
    if spec.ttl <= 0:
        raise ValueError("a token's TTL must be positive")
    for _ in range(_ID_ATTEMPTS):
        token = BootstrapToken(id=_random(6), secret=_random(16))
        record = TokenRecord(
            id=token.id,
            secret_hash=hash_secret(token.secret),
            kind=spec.kind,
            name=spec.name,
            created_at=now,
            expires_at=now + spec.ttl,
            require_approval=spec.require_approval,
        )
        try:
            store.add_token(record)
            break
        except DuplicateIdError:
            continue  # 36^6 ids: at 5,000 live tokens a collision is a 1-in-200 event
    else:
        raise StoreError(f"no free token id after {_ID_ATTEMPTS} tries")
    log.info(
        "created bootstrap token",
        extra={"kv": {"token_id": token.id, "kind": spec.kind, "name": spec.name, "ttl": spec.ttl}},
    )
    return token


def check_token(store: Store, text: str, *, now: float) -> TokenRecord:
    """Return the token's record if ``text`` is a valid, unexpired, unused token; else raise.

    Expiry and use are only revealed to a caller who knows the secret.
    """
    token = parse_token(text)
    record = store.get_token(token.id)
    presented = hash_secret(token.secret)
    # Compare against a dummy when the id is unknown, so timing does not reveal valid ids.
    if not same_hash(presented, record.secret_hash if record else _DUMMY_HASH) or record is None:
        raise InvalidTokenError(
            "unknown bootstrap token: check it was copied whole, or create a new one with"
            " `tunnel-server token create`"
        )
    if record.revoked_at is not None:
        # 401 like an unknown token: it will never work again, whatever is retried.
        raise InvalidTokenError(
            f"bootstrap token {token.id} was revoked by an operator: ask for a new one"
            f" (`tunnel-server token create --name {record.name}`)"
        )
    if record.used_at is not None:
        raise UsedTokenError(
            f"bootstrap token {token.id} was already used: tokens are single-use;"
            f" create a new one with `tunnel-server token create --name {record.name}`"
        )
    if now >= record.expires_at:
        raise ExpiredTokenError(
            f"bootstrap token {token.id} expired: create a new one with"
            f" `tunnel-server token create --name {record.name}`"
        )
    return record


def new_poll_secret() -> str:
    """Secret handed to a joiner waiting for approval; only its hash is stored."""
    return secrets.token_urlsafe(32)


def ensure_admin_token(store: Store, data_dir: Path, *, now: float) -> bool:
    """Create the admin token on first start; True if created (secret written to the file)."""
    if store.get_meta("admin_token_id") is not None:
        return False
    token_id, secret = _random(6), _random(32)
    store.add_api_token(token_id=token_id, secret_hash=hash_secret(secret), role="admin", now=now)
    write_atomic(data_dir / ADMIN_FILE, f"{token_id}.{secret}\n".encode(), mode=0o600)
    store.set_meta("admin_token_id", token_id)
    log.info("created admin API token", extra={"kv": {"file": data_dir / ADMIN_FILE}})
    return True


def rotate_admin_token(store: Store, data_dir: Path, *, now: float) -> str:
    """Make a new admin token, write it to ``<data-dir>/admin-token`` (0600), return it.

    The old one stops working the moment the store commits (it is deleted there), and so do
    the console sessions made from it (``admin_session_valid``). The file is written first and
    put back as it was if the store refuses, so the file and the store never disagree.
    """
    path = data_dir / ADMIN_FILE
    try:
        previous: bytes | None = path.read_bytes()
    except FileNotFoundError:
        previous = None
    for _ in range(_ID_ATTEMPTS):
        token_id, secret = _random(6), _random(32)
        write_atomic(path, f"{token_id}.{secret}\n".encode(), mode=0o600)
        try:
            old = store.rotate_admin_token(
                token_id=token_id, secret_hash=hash_secret(secret), now=now
            )
        except DuplicateIdError:
            continue
        except BaseException:
            if previous is not None:
                write_atomic(path, previous, mode=0o600)
            raise
        break
    else:
        if previous is not None:
            write_atomic(path, previous, mode=0o600)
        raise StoreError(f"no free admin token id after {_ID_ATTEMPTS} tries")
    log.info(
        "rotated admin API token",
        extra={"kv": {"old_id": old, "new_id": token_id, "file": path}},
    )
    return f"{token_id}.{secret}"


def admin_session_valid(store: Store, token_id: str | None) -> bool:
    """Whether a console session made from the admin token ``token_id`` may still be used.

    ``token_id`` None: a session from before sessions named their admin token; it stays valid
    until the admin token is first rotated.
    """
    if token_id is None:
        return store.get_meta("admin_token_rotated_at") is None
    current = store.get_meta("admin_token_id")
    return current is not None and same_hash(token_id, current)


def admin_token_id(presented: str) -> str | None:
    """The id part of an admin token (its first 6 characters), or None if it is not one."""
    match = _ADMIN_RE.fullmatch(presented.strip())
    return None if match is None else match[1]


def verify_admin_token(store: Store, presented: str) -> bool:
    """True if ``presented`` (the bearer value) is the admin token; constant-time on the secret."""
    match = _ADMIN_RE.fullmatch(presented.strip())
    if match is None:
        return False
    stored = store.get_api_token_hash(match[1])
    return same_hash(hash_secret(match[2]), stored or _DUMMY_HASH) and stored is not None
