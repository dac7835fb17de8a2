"""Cloud users: a name, a role, an optional cluster scope, a lifetime, and bearer tokens.

A user token is ``efu1.<id>.<secret>``: ``id`` is 12 and ``secret`` 32 characters of
``[a-z0-9]`` (~165 bits) from ``secrets``. The id makes the check one indexed read; the store
keeps SHA-256 of the secret only (a fast hash is enough for a random secret, as for bootstrap
tokens) and hashes are compared in constant time, against a dummy when the id is unknown, so
timing tells nothing about which ids exist. The prefix lets a leaked token be recognised by
secret scanners and keeps it apart from the admin token (``<6>.<32>``) and console sessions.

A user may hold several tokens (one per kubeconfig, say), each expiring no later than the user.
Revoking a user stops every token and console session of it at once; ``users create`` of a
revoked name makes a new user (a new ``id``), so nothing of the old one works again.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import string
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from tunnel_server.identity.tokens import hash_secret, same_hash
from tunnel_server.store import (
    ApiUnreachableError,
    DuplicateIdError,
    NotFoundError,
    StoreError,
    UserExistsError,
    UserRecord,
    UserTokenRecord,
)

if TYPE_CHECKING:
    from tunnel_server.store import Store

log = logging.getLogger("tunnel_server.users")

Role = Literal["admin", "operator", "viewer"]
ROLES: tuple[Role, ...] = ("admin", "operator", "viewer")
TOKEN_PREFIX = "efu1"  # noqa: S105 - a format marker, not a secret
BOOTSTRAP_ADMIN = "admin"
"""The name the bootstrap admin token (and its console sessions) act as; no user may take it,
so an audit line saying ``admin`` always means that token."""

DAY = 86400.0
DEFAULT_USER_TTL = 90 * DAY
"""A user lives 90 days unless told otherwise: long enough for a person, short enough that a
forgotten one goes away by itself."""
MAX_USER_TTL = 2 * 365 * DAY
"""Longest user lifetime, 2 years: a CI user is made again at least that often."""
MIN_TTL = 60.0
"""Shortest user or token lifetime, 1 minute: less cannot even be typed into a kubeconfig."""
MAX_TOKENS_PER_USER = 100
"""Unexpired tokens one user may hold (each kubeconfig made for it holds one): bounds the store
against a script that makes kubeconfigs in a loop."""
MAX_CLUSTERS = 256
"""Most clusters one user's scope may name."""

_ALPHABET = string.ascii_lowercase + string.digits
_TOKEN_RE = re.compile(rf"{TOKEN_PREFIX}\.([a-z0-9]{{12}})\.([a-z0-9]{{32}})")
_NAME_RE = re.compile(r"[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?")
_DURATION_RE = re.compile(r"(\d{1,9}(?:\.\d{1,3})?)([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_DUMMY_HASH = hash_secret("no such user token")
_ID_ATTEMPTS = 8


class UserError(ValueError):
    """A users command cannot be done as asked; the message says why and what to do."""


class TokenRefusedError(Exception):
    """A presented user token does not authenticate. ``code`` is stable for API clients."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def validate_user_name(name: str) -> str:
    """``name`` if it may name a user (1-63 of a-z 0-9 - ., not ``admin``); else UserError."""
    if not _NAME_RE.fullmatch(name):
        raise UserError(
            f"invalid user name {name[:80]!r}: use 1-63 lower-case letters, digits, '-' or '.',"
            " starting and ending with a letter or digit"
        )
    if name == BOOTSTRAP_ADMIN:
        raise UserError(
            f"{BOOTSTRAP_ADMIN!r} is the bootstrap admin token's name: choose another user name"
        )
    return name


def parse_role(text: str) -> Role:
    if text not in ROLES:
        raise UserError(f"unknown role {text[:40]!r}: one of {', '.join(ROLES)}")
    return text


def parse_clusters(text: str) -> tuple[str, ...]:
    """``c1,c2`` as sorted unique cluster names; UserError naming the bad one."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise UserError("--clusters needs at least one cluster name, such as --clusters a,b")
    for name in names:
        if not _NAME_RE.fullmatch(name):
            raise UserError(
                f"invalid cluster name {name[:80]!r}: 1-63 lower-case letters, digits, '-' or"
                " '.', starting and ending with a letter or digit"
            )
    unique = tuple(sorted(set(names)))
    if len(unique) > MAX_CLUSTERS:
        raise UserError(f"at most {MAX_CLUSTERS} clusters in a scope, got {len(unique)}")
    return unique


def parse_ttl(text: str, *, high: float = MAX_USER_TTL) -> float:
    """``90d``, ``12h``, ``30m``, ``45s`` or plain seconds, from 1 minute to ``high``."""
    match = _DURATION_RE.fullmatch(text.strip())
    if match is None:
        raise UserError(
            f"expected a lifetime such as 90d, 12h, 30m or 3600 (seconds), got {text[:40]!r}"
        )
    seconds = float(match[1]) * _UNITS[match[2]]
    if not MIN_TTL <= seconds <= high:
        raise UserError(
            f"a lifetime must be from 1 minute to {high / DAY:g} days, got {text[:40]!r}"
        )
    return seconds


@dataclass(frozen=True, kw_only=True)
class UserToken:
    id: str
    secret: str

    def __str__(self) -> str:
        return f"{TOKEN_PREFIX}.{self.id}.{self.secret}"

    def __repr__(self) -> str:  # never print the secret by accident
        return f"UserToken(id={self.id!r}, secret=<hidden>)"


def looks_like_user_token(text: str) -> bool:
    return text.startswith(TOKEN_PREFIX + ".")


def _random(length: int) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


def create_user(
    store: Store,
    name: str,
    *,
    role: Role,
    clusters: tuple[str, ...] | None,
    ttl: float,
    now: float,
) -> tuple[UserRecord, str]:
    """Make a user and its first token; the token is returned once and stored hashed."""
    validate_user_name(name)
    if name.startswith(SSO_PREFIX):
        # Else a sign-in whose identity maps to this exact name would take the user over.
        raise UserError(
            f"user names starting with {SSO_PREFIX!r} are kept for people who sign in through"
            " SSO (docs/sso.md): choose another name"
        )
    parse_role(role)
    if role == "admin" and clusters is not None:
        raise UserError(
            "an admin manages users and tokens for every cluster, so it has no cluster scope:"
            " give a scoped user --role operator or viewer"
        )
    if not MIN_TTL <= ttl <= MAX_USER_TTL:
        raise UserError(f"a user's lifetime must be from 1 minute to {MAX_USER_TTL / DAY:g} days")
    for _ in range(_ID_ATTEMPTS):
        user = UserRecord(
            id=_random(12),
            name=name,
            role=role,
            clusters=clusters,
            created_at=now,
            expires_at=now + ttl,
        )
        try:
            store.add_user(user)
            break
        except UserExistsError:
            raise UserError(
                f"user {name!r} exists: `tunnel-server users revoke {name}` first to replace it,"
                f" or `tunnel-server kubeconfig --user {name}` for another token of it"
            ) from None
        except DuplicateIdError:
            continue  # 36^12 ids: practically never
    else:
        raise StoreError(f"no free user id after {_ID_ATTEMPTS} tries")
    log.info(
        "created user",
        extra={"kv": {"user": name, "role": role, "clusters": clusters, "ttl": ttl}},
    )
    return user, issue_user_token(store, name, ttl=ttl, now=now)


def issue_user_token(store: Store, name: str, *, ttl: float, now: float) -> str:
    """A new token of user ``name``, expiring in ``ttl`` seconds or with the user if sooner.

    The token is returned this once; the store keeps its hash. UserError when the user does not
    exist, is revoked or expired, or holds ``MAX_TOKENS_PER_USER`` tokens already.
    """
    user = active_user(store, name, now=now)
    if ttl < MIN_TTL:
        raise UserError("a token's lifetime must be at least 1 minute")
    expires = min(now + ttl, user.expires_at)
    for _ in range(_ID_ATTEMPTS):
        token = UserToken(id=_random(12), secret=_random(32))
        record = UserTokenRecord(
            id=token.id,
            user_id=user.id,
            secret_hash=hash_secret(token.secret),
            created_at=now,
            expires_at=expires,
        )
        try:
            store.add_user_token(record, now=now, max_tokens=MAX_TOKENS_PER_USER)
            break
        except DuplicateIdError:
            continue
        except NotFoundError:
            raise UserError(f"user {name!r} was revoked just now") from None
        except ApiUnreachableError:
            raise  # the store is down: 503 store_unavailable, not a refusal of this user
        except StoreError as exc:
            raise UserError(f"user {name!r}: {exc}") from None
    else:
        raise StoreError(f"no free user token id after {_ID_ATTEMPTS} tries")
    log.info(
        "issued user token",
        extra={"kv": {"user": name, "token_id": token.id, "expires_at": expires}},
    )
    return str(token)


def active_user(store: Store, name: str, *, now: float) -> UserRecord:
    """The user ``name`` if it exists, is not revoked and has not expired; else UserError."""
    user = store.get_user(name, now=now)
    if user is None:
        raise UserError(f"no user named {name[:80]!r}: see `tunnel-server users list`")
    if user.revoked_at is not None:
        raise UserError(
            f"user {name!r} is revoked: `tunnel-server users create {name} --role ...` makes it"
            " again"
        )
    if user.expires_at <= now:
        raise UserError(
            f"user {name!r} expired: revoke it and create it again"
            f" (`tunnel-server users revoke {name}`)"
        )
    return user


def revoke_user(store: Store, name: str, *, now: float) -> UserRecord:
    """Revoke ``name``: every token and console session of it stops working at once."""
    try:
        user = store.revoke_user(name, now=now)
    except NotFoundError:
        raise UserError(f"no user named {name[:80]!r}: see `tunnel-server users list`") from None
    log.info("revoked user", extra={"kv": {"user": name}})
    return user


def check_user(user: UserRecord | None, *, now: float) -> UserRecord:
    """``user`` if it may act now; TokenRefusedError (revoked, expired, gone) otherwise."""
    if user is None:
        raise TokenRefusedError(
            "user_unknown",
            "the user this credential was made for no longer exists (revoked and made again?):"
            " ask an admin for a new token",
        )
    if user.revoked_at is not None:
        raise TokenRefusedError(
            "user_revoked", f"user {user.name!r} was revoked: ask an admin for a new user"
        )
    if user.expires_at <= now:
        raise TokenRefusedError(
            "user_expired",
            f"user {user.name!r} expired at {_stamp(user.expires_at)}: ask an admin to make it"
            " again",
        )
    return user


def verify_user_token(store: Store, presented: str, *, now: float) -> tuple[UserRecord, float]:
    """The user a token authenticates and when that token expires; else TokenRefusedError.

    Whether a token expired or its user was revoked is only told to a caller who knows the
    secret.
    """
    match = _TOKEN_RE.fullmatch(presented)
    if match is None:
        raise TokenRefusedError(
            "invalid_token",
            f"malformed user token: expected {TOKEN_PREFIX}.<12 chars>.<32 chars> of [a-z0-9],"
            " as printed by `tunnel-server users create` (copied whole?)",
        )
    found = store.get_user_token(match[1])
    stored = found[0].secret_hash if found is not None else _DUMMY_HASH
    if not same_hash(hash_secret(match[2]), stored) or found is None:
        raise TokenRefusedError(
            "invalid_token",
            "unknown user token: check it was copied whole, or ask an admin for a new one"
            " (`tunnel-server kubeconfig --user NAME` or `users create`)",
        )
    token, user = found
    check_user(user, now=now)
    if token.expires_at <= now:
        raise TokenRefusedError(
            "token_expired",
            f"this token of user {user.name!r} expired at {_stamp(token.expires_at)}: ask an admin"
            f" for a new one (`tunnel-server kubeconfig --user {user.name}`)",
        )
    return user, token.expires_at


def _stamp(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(timestamp))


# ---------------------------------------------------------------- for the REST API (api/users_api)

UserState = Literal["active", "expired", "revoked"]
DEFAULT_TOKEN_TTL = 30 * DAY
"""A token made for a kubeconfig or a script lives 30 days unless told otherwise (never past
its user): a leaked kubeconfig stops working by itself within a month."""


def user_state(user: UserRecord, *, now: float) -> UserState:
    """``revoked``, ``expired`` or ``active``, in that order of precedence."""
    if user.revoked_at is not None:
        return "revoked"
    return "expired" if user.expires_at <= now else "active"


def kubeconfig_text(
    *, user: str, token: str, clusters: list[str], server: str, ca_pem: bytes
) -> str:
    """A kubeconfig (YAML) with the CA embedded and one cluster and context per name.

    Each cluster's server is ``SERVER/clusters/NAME`` (the cluster proxy); the first is the
    current context. The token is in it: whoever holds the file acts as ``user``.
    """
    import base64  # noqa: PLC0415 - only kubeconfigs need them

    import yaml  # noqa: PLC0415 - see above

    ca_data = base64.b64encode(ca_pem).decode()
    entry = f"edgefleet-{user}"
    document = {
        "apiVersion": "v1",
        "kind": "Config",
        "preferences": {},
        "clusters": [
            {
                "name": name,
                "cluster": {
                    "server": f"{server}/clusters/{name}",
                    "certificate-authority-data": ca_data,
                },
            }
            for name in clusters
        ],
        "users": [{"name": entry, "user": {"token": token}}],
        "contexts": [
            {"name": name, "context": {"cluster": name, "user": entry}} for name in clusters
        ],
        "current-context": clusters[0],
    }
    text: str = yaml.safe_dump(document, sort_keys=False)
    return text


# --- SSO ---
# Users signed in through OpenID Connect (``tunnel_server/identity/sso_mapping.py``). Each
# person gets a user record named ``sso.<readable part>-<8 hex of sha256(issuer, sub)>``: the
# hash keeps two people apart whose readable names map alike, and the prefix keeps SSO users
# apart from users made with `tunnel-server users create`. The record holds no token of its
# own; console sessions name it by its id as for every user.

SSO_PREFIX = "sso."
SSO_USER_TTL = 30 * DAY
"""An SSO user record lives 30 days from its last sign-in; its sessions are bounded by it."""


def sso_user_name(*, issuer: str, subject: str, hint: str) -> str:
    """The user name of the person ``subject`` of ``issuer`` (``hint``: a readable claim)."""
    digest = hashlib.sha256(f"{issuer}\n{subject}".encode()).hexdigest()[:8]
    readable = re.sub(r"[^a-z0-9.-]+", "-", hint.lower().replace("@", ".")).strip(".-")[:40]
    readable = readable.strip(".-") or "user"
    return validate_user_name(f"{SSO_PREFIX}{readable}-{digest}")


def provision_sso_user(
    store: Store,
    name: str,
    *,
    role: Role,
    clusters: tuple[str, ...] | None,
    now: float,
    ttl: float = SSO_USER_TTL,
    least: float = 0.0,
) -> UserRecord:
    """The active user ``name`` with ``role`` and ``clusters``, made (or made again) if needed.

    A record with the same role and scope that lives at least ``least`` more seconds is kept,
    so the person's other sessions go on. A record whose role or scope differs (the person
    changed groups at the IdP, or the mapping changed), that expired or was revoked is revoked
    and made again under a new id: every session of the old grant stops at once.
    """
    if not name.startswith(SSO_PREFIX):
        raise UserError(f"{name!r} is not an SSO user name")
    current = store.get_user(name, now=now)
    if (
        current is not None
        and current.revoked_at is None
        and current.expires_at > now + least
        and current.role == role
        and current.clusters == clusters
    ):
        return current
    if current is not None and current.revoked_at is None:
        store.revoke_user(name, now=now)
    for _ in range(_ID_ATTEMPTS):
        user = UserRecord(
            id=_random(12),
            name=name,
            role=role,
            clusters=clusters,
            created_at=now,
            expires_at=now + ttl,
        )
        try:
            store.add_user(user)
            break
        except DuplicateIdError:
            continue
        except UserExistsError:  # a sign-in of the same person at the same moment made it
            raced = store.get_user(name, now=now)
            if raced is not None and raced.role == role and raced.clusters == clusters:
                return raced
            raise UserError(f"SSO user {name!r} changed while signing in: sign in again") from None
    else:
        raise StoreError(f"no free user id after {_ID_ATTEMPTS} tries")
    log.info(
        "provisioned SSO user",
        extra={"kv": {"user": name, "role": role, "clusters": clusters}},
    )
    return user
