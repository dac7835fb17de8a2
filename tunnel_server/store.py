"""Persistent state of the cloud side: tokens, nodes, certificates, joins, sessions, users.

Signed-out console sessions, and cloud users with their API tokens, are kept here too.

``Store`` is the interface; ``SqliteStore`` the default backend (one file, zero setup). A
Kubernetes custom-resource backend can follow by implementing the same Protocol: every method
that must be atomic (``redeem_token``, ``issue_pending``) says so, and none leaks SQL.

Security-relevant writes (node state, certificates, tokens) bump ``revision()``. A running server
polls it (a single-row read) to notice a revocation made by the CLI in another process.
Secrets are never stored: tokens, user tokens and the admin token are kept as SHA-256 hashes.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol, cast

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

log = logging.getLogger("tunnel_server.store")

NodeKind = Literal["node", "cluster"]
NodeState = Literal["pending", "approved", "revoked"]
KINDS: tuple[NodeKind, ...] = ("node", "cluster")
STORE_FILE = "store.db"
SCHEMA_VERSION = 4


class StoreError(Exception):
    """Base of the store's own errors."""


class ApiUnreachableError(Exception):
    """The Kubernetes API cannot be reached now; try again after ``retry_after`` seconds.

    With ``--store kubernetes``: a mixin of each store's own error type (``StoreUnavailableError``,
    the fleet's ``FleetStoreUnavailableError``), so callers that catch the store's errors still
    do, and the REST API answers any of them 503 ``store_unavailable``.
    """

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class NotFoundError(StoreError, LookupError):
    """The named node, token or request does not exist."""


class TokenUsedError(StoreError):
    """The bootstrap token was redeemed already (single use)."""


class DuplicateIdError(StoreError):
    """An id that must be unique is taken (a random token id collided): pick another."""


class WrongStateError(StoreError):
    """The node is not in a state the change may start from (approve a node not pending)."""

    def __init__(self, node: NodeRecord) -> None:
        super().__init__(f"{node.kind} {node.name!r} is {node.state}")
        self.node = node


class UserExistsError(StoreError):
    """A user of that name exists and is not revoked."""

    def __init__(self, name: str) -> None:
        super().__init__(f"user {name!r} exists")
        self.name = name


class NameTakenError(StoreError):
    """A pending or approved node already holds the name."""

    def __init__(self, name: str, state: NodeState) -> None:
        super().__init__(f"node {name!r} exists and is {state}")
        self.name = name
        self.state = state


@dataclass(frozen=True, kw_only=True)
class TokenRecord:
    id: str
    secret_hash: str
    kind: NodeKind
    name: str
    created_at: float
    expires_at: float
    require_approval: bool
    used_at: float | None = None
    revoked_at: float | None = None
    """When an operator revoked it unused (``revoke_token``): it can never be redeemed then."""


@dataclass(frozen=True, kw_only=True)
class NodeRecord:
    name: str
    kind: NodeKind
    state: NodeState
    created_at: float
    cert_serial: str | None = None
    cert_not_after: float | None = None
    last_seen: float | None = None
    agent_version: str | None = None


@dataclass(frozen=True, kw_only=True)
class CertificateRecord:
    serial: str
    """Hex serial number (serials are up to 159 bits: too wide for an SQLite integer)."""
    name: str
    not_after: float
    issued_at: float


@dataclass(frozen=True, kw_only=True)
class JoinRequest:
    id: str
    name: str
    kind: NodeKind
    csr_pem: str
    poll_hash: str
    created_at: float
    expires_at: float
    certificate_pem: str | None = None


@dataclass(frozen=True, kw_only=True)
class UserRecord:
    """A cloud user: a role, an optional cluster scope, a lifetime; its tokens are apart."""

    id: str
    """Random, never reused: console sessions name the user by it, so a user revoked and made
    again under the same name does not bring the old one's sessions back."""
    name: str
    role: str
    clusters: tuple[str, ...] | None
    """The clusters it may reach; None = every cluster."""
    created_at: float
    expires_at: float
    revoked_at: float | None = None
    tokens: int = 0
    """How many unexpired tokens it holds (filled by ``get_user``/``list_users``)."""


@dataclass(frozen=True, kw_only=True)
class UserTokenRecord:
    id: str
    user_id: str
    secret_hash: str
    created_at: float
    expires_at: float


class Store(Protocol):
    """What the server needs from persistence. Times are UNIX seconds, supplied by the caller."""

    def revision(self) -> int:
        """Counter bumped by every change to tokens, nodes or certificates; cheap to poll."""
        ...

    def get_meta(self, key: str) -> str | None: ...
    def set_meta(self, key: str, value: str) -> None: ...

    def add_token(self, token: TokenRecord) -> None:
        """Store a new token; raises DuplicateIdError if its id is taken."""
        ...

    def get_token(self, token_id: str) -> TokenRecord | None: ...
    def list_tokens(self) -> list[TokenRecord]: ...

    def revoke_token(self, token_id: str, *, now: float) -> TokenRecord:
        """Make an unused token unredeemable, atomically; bumps the revision.

        Idempotent for a revoked one. Raises NotFoundError (no such token) or TokenUsedError
        (it was redeemed: revoke its node instead).
        """
        ...

    def add_api_token(self, *, token_id: str, secret_hash: str, role: str, now: float) -> None: ...
    def get_api_token_hash(self, token_id: str) -> str | None: ...

    def rotate_admin_token(self, *, token_id: str, secret_hash: str, now: float) -> str | None:
        """Replace the admin token atomically: the old one stops working; return its id.

        Records the new id in meta ``admin_token_id`` and bumps the revision (watchers drop
        what they cached of the old token).
        """
        ...

    def get_node(self, name: str) -> NodeRecord | None: ...
    def list_nodes(self) -> list[NodeRecord]: ...
    def set_node_state(self, name: str, state: NodeState) -> NodeRecord: ...
    def change_node_state(
        self, name: str, state: NodeState, *, only_from: tuple[NodeState, ...]
    ) -> NodeRecord:
        """``set_node_state`` only while the node is in one of ``only_from``, atomically.

        Raises NotFoundError, or WrongStateError (with the node as it is) and changes nothing.
        A node already in ``state`` (and allowed to be in ``only_from``) is returned unchanged,
        without a revision bump: that makes a change idempotent.
        """
        ...

    def touch_node(self, name: str, *, now: float, agent_version: str | None = None) -> None: ...
    def touch_nodes(self, names: list[str], *, now: float) -> None:
        """``touch_node`` for many at once, in one transaction."""
        ...

    def redeem_token(
        self,
        token_id: str,
        *,
        now: float,
        node: NodeRecord,
        certificate: CertificateRecord | None = None,
        request: JoinRequest | None = None,
    ) -> None:
        """Redeem a token and create its node, atomically.

        Marks the token used, creates or replaces the node, records its certificate or its
        pending join request. Raises TokenUsedError or NameTakenError and changes nothing then.
        A revoked node of the same name is replaced and its old certificates forgotten.
        """
        ...

    def record_certificate(self, certificate: CertificateRecord) -> None:
        """Add a certificate of an existing node and make it the node's current one."""
        ...

    def get_certificate(self, serial: str) -> CertificateRecord | None: ...

    def get_join_request(self, request_id: str) -> JoinRequest | None: ...

    def issue_pending(
        self, request_id: str, *, certificate: CertificateRecord, certificate_pem: str
    ) -> None:
        """Atomically record the certificate issued for an approved join request."""
        ...

    def revoke_session(self, session_id: str, *, expires_at: float, now: float) -> None:
        """Remember a signed-out console session until it would have expired anyway.

        Idempotent. Forgets the sessions already past their expiry in the same transaction,
        so the table holds at most the sessions signed out within one session lifetime.
        """
        ...

    def session_revoked(self, session_id: str) -> bool: ...

    def add_user(self, user: UserRecord) -> None:
        """Create a user; a revoked one of the same name is replaced (its tokens go with it).

        Raises UserExistsError if an unrevoked user holds the name. Bumps the revision.
        """
        ...

    def get_user(self, name: str, *, now: float) -> UserRecord | None:
        """The user, with the count of its tokens unexpired at ``now``."""
        ...

    def get_user_by_id(self, user_id: str) -> UserRecord | None: ...
    def list_users(self, *, now: float) -> list[UserRecord]: ...

    def add_user_token(self, token: UserTokenRecord, *, now: float, max_tokens: int) -> None:
        """Store a user's new token, forgetting its expired ones in the same transaction.

        Raises NotFoundError (no such user, or revoked), DuplicateIdError (the id is taken) or
        StoreError (the user holds ``max_tokens`` unexpired tokens already).
        """
        ...

    def get_user_token(self, token_id: str) -> tuple[UserTokenRecord, UserRecord] | None:
        """A token and its user, in one indexed read."""
        ...

    def revoke_user(self, name: str, *, now: float) -> UserRecord:
        """Mark a user revoked (its tokens stop working with it); bumps the revision.

        Raises NotFoundError if there is no such user. Idempotent for a revoked one.
        """
        ...

    def close(self) -> None: ...


_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE revision (id INTEGER PRIMARY KEY CHECK (id = 1), value INTEGER NOT NULL);
INSERT INTO revision (id, value) VALUES (1, 0);
CREATE TABLE tokens (
    id TEXT PRIMARY KEY,
    secret_hash TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('node', 'cluster')),
    name TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    require_approval INTEGER NOT NULL,
    used_at REAL
);
CREATE TABLE api_tokens (
    id TEXT PRIMARY KEY,
    secret_hash TEXT NOT NULL,
    role TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE nodes (
    name TEXT PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('node', 'cluster')),
    state TEXT NOT NULL CHECK (state IN ('pending', 'approved', 'revoked')),
    cert_serial TEXT,
    cert_not_after REAL,
    created_at REAL NOT NULL,
    last_seen REAL,
    agent_version TEXT
);
CREATE TABLE certificates (
    serial TEXT PRIMARY KEY,
    name TEXT NOT NULL REFERENCES nodes (name) ON DELETE CASCADE,
    not_after REAL NOT NULL,
    issued_at REAL NOT NULL
);
CREATE INDEX certificates_by_name ON certificates (name);
CREATE TABLE join_requests (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL REFERENCES nodes (name) ON DELETE CASCADE,
    kind TEXT NOT NULL,
    csr_pem TEXT NOT NULL,
    poll_hash TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    certificate_pem TEXT
);
"""
_REVOKED_SESSIONS = """
CREATE TABLE revoked_sessions (id TEXT PRIMARY KEY, expires_at REAL NOT NULL);
CREATE INDEX revoked_sessions_by_expiry ON revoked_sessions (expires_at);
"""
_USERS = """
CREATE TABLE users (
    name TEXT PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL CHECK (role IN ('admin', 'operator', 'viewer')),
    clusters TEXT,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    revoked_at REAL
);
CREATE TABLE user_tokens (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    secret_hash TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX user_tokens_by_user ON user_tokens (user_id);
"""
_REVOKED_TOKENS = """
ALTER TABLE tokens ADD COLUMN revoked_at REAL;
"""
# Migrations from version N to N+1 go here, indexed by N.
_MIGRATIONS: dict[int, str] = {0: _SCHEMA, 1: _REVOKED_SESSIONS, 2: _USERS, 3: _REVOKED_TOKENS}


class SqliteStore:
    """``Store`` on one SQLite file in WAL mode, shared safely by the server and the CLI."""

    def __init__(self, path: Path, *, busy_timeout: float = 5.0) -> None:
        self.path = path
        self._db = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: durable at checkpoint
        self._db.execute("PRAGMA foreign_keys = ON")
        self._migrate()

    @classmethod
    def open(cls, data_dir: Path) -> SqliteStore:
        path = data_dir / STORE_FILE
        # Create the file 0600 before SQLite does (it copies the mode to the -wal/-shm files).
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        return cls(path)

    def _migrate(self) -> None:
        with self._transaction() as db:
            version = int(db.execute("PRAGMA user_version").fetchone()[0])
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path} has schema version {version}, newer than this server "
                    f"({SCHEMA_VERSION}): upgrade tunnel-server"
                )
            while version < SCHEMA_VERSION:
                for statement in _MIGRATIONS[version].split(";"):
                    if statement.strip():
                        db.execute(statement)
                version += 1
                db.execute(f"PRAGMA user_version = {version}")
                log.info("store schema migrated", extra={"kv": {"version": version}})

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        # BEGIN IMMEDIATE takes the write lock up front: no upgrade deadlock between processes.
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    @staticmethod
    def _bump(db: sqlite3.Connection) -> None:
        db.execute("UPDATE revision SET value = value + 1 WHERE id = 1")

    def revision(self) -> int:
        return int(self._db.execute("SELECT value FROM revision WHERE id = 1").fetchone()[0])

    def get_meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    # ------------------------------------------------------------------ tokens

    def add_token(self, token: TokenRecord) -> None:
        try:
            self._insert_token(token)
        except sqlite3.IntegrityError as error:
            raise DuplicateIdError(f"token id {token.id} exists") from error

    def _insert_token(self, token: TokenRecord) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT INTO tokens (id, secret_hash, kind, name, created_at, expires_at,"
                " require_approval, used_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    token.id,
                    token.secret_hash,
                    token.kind,
                    token.name,
                    token.created_at,
                    token.expires_at,
                    int(token.require_approval),
                    token.used_at,
                ),
            )
            self._bump(db)

    def get_token(self, token_id: str) -> TokenRecord | None:
        row = self._db.execute("SELECT * FROM tokens WHERE id = ?", (token_id,)).fetchone()
        return None if row is None else _token(row)

    def list_tokens(self) -> list[TokenRecord]:
        rows = self._db.execute("SELECT * FROM tokens ORDER BY created_at").fetchall()
        return [_token(row) for row in rows]

    def revoke_token(self, token_id: str, *, now: float) -> TokenRecord:
        with self._transaction() as db:
            row = db.execute("SELECT * FROM tokens WHERE id = ?", (token_id,)).fetchone()
            if row is None:
                raise NotFoundError(f"no bootstrap token {token_id!r}")
            if row["used_at"] is not None:
                raise TokenUsedError(token_id)
            if row["revoked_at"] is None:
                db.execute("UPDATE tokens SET revoked_at = ? WHERE id = ?", (now, token_id))
                self._bump(db)
            return _token(db.execute("SELECT * FROM tokens WHERE id = ?", (token_id,)).fetchone())

    def rotate_admin_token(self, *, token_id: str, secret_hash: str, now: float) -> str | None:
        with self._transaction() as db:
            old = db.execute("SELECT value FROM meta WHERE key = 'admin_token_id'").fetchone()
            # Every admin API token goes: there is one, and an older one must never come back.
            db.execute("DELETE FROM api_tokens WHERE role = 'admin'")
            try:
                db.execute(
                    "INSERT INTO api_tokens (id, secret_hash, role, created_at)"
                    " VALUES (?, ?, 'admin', ?)",
                    (token_id, secret_hash, now),
                )
            except sqlite3.IntegrityError as error:
                raise DuplicateIdError(f"api token id {token_id} exists") from error
            db.execute(
                "INSERT INTO meta (key, value) VALUES ('admin_token_id', ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (token_id,),
            )
            db.execute(
                "INSERT INTO meta (key, value) VALUES ('admin_token_rotated_at', ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (repr(now),),
            )
            self._bump(db)
            return None if old is None else str(old[0])

    def add_api_token(self, *, token_id: str, secret_hash: str, role: str, now: float) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT INTO api_tokens (id, secret_hash, role, created_at) VALUES (?, ?, ?, ?)",
                (token_id, secret_hash, role, now),
            )

    def get_api_token_hash(self, token_id: str) -> str | None:
        row = self._db.execute(
            "SELECT secret_hash FROM api_tokens WHERE id = ?", (token_id,)
        ).fetchone()
        return None if row is None else str(row[0])

    # ------------------------------------------------------------------ nodes

    def get_node(self, name: str) -> NodeRecord | None:
        row = self._db.execute("SELECT * FROM nodes WHERE name = ?", (name,)).fetchone()
        return None if row is None else _node(row)

    def list_nodes(self) -> list[NodeRecord]:
        return [_node(row) for row in self._db.execute("SELECT * FROM nodes ORDER BY name")]

    def set_node_state(self, name: str, state: NodeState) -> NodeRecord:
        with self._transaction() as db:
            updated = db.execute("UPDATE nodes SET state = ? WHERE name = ?", (state, name))
            if updated.rowcount != 1:
                raise NotFoundError(f"no node named {name!r}")
            self._bump(db)
            return _node(db.execute("SELECT * FROM nodes WHERE name = ?", (name,)).fetchone())

    def change_node_state(
        self, name: str, state: NodeState, *, only_from: tuple[NodeState, ...]
    ) -> NodeRecord:
        with self._transaction() as db:
            row = db.execute("SELECT * FROM nodes WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise NotFoundError(f"no node named {name!r}")
            node = _node(row)
            if node.state not in only_from:
                raise WrongStateError(node)
            if node.state == state:
                return node
            db.execute("UPDATE nodes SET state = ? WHERE name = ?", (state, name))
            self._bump(db)
            return _node(db.execute("SELECT * FROM nodes WHERE name = ?", (name,)).fetchone())

    def touch_nodes(self, names: list[str], *, now: float) -> None:
        with self._transaction() as db:
            db.executemany(
                "UPDATE nodes SET last_seen = ? WHERE name = ?", [(now, n) for n in names]
            )

    def touch_node(self, name: str, *, now: float, agent_version: str | None = None) -> None:
        # Not a security-relevant change: no revision bump, so heartbeats do not wake watchers.
        with self._transaction() as db:
            db.execute(
                "UPDATE nodes SET last_seen = ?, agent_version = COALESCE(?, agent_version)"
                " WHERE name = ?",
                (now, agent_version, name),
            )

    def redeem_token(
        self,
        token_id: str,
        *,
        now: float,
        node: NodeRecord,
        certificate: CertificateRecord | None = None,
        request: JoinRequest | None = None,
    ) -> None:
        with self._transaction() as db:
            # A token revoked after the caller checked it is refused here, in the same write.
            used = db.execute(
                "UPDATE tokens SET used_at = ? WHERE id = ? AND used_at IS NULL"
                " AND revoked_at IS NULL",
                (now, token_id),
            )
            if used.rowcount != 1:
                raise TokenUsedError(token_id)
            existing = db.execute("SELECT state FROM nodes WHERE name = ?", (node.name,)).fetchone()
            if existing is not None and existing["state"] != "revoked":
                raise NameTakenError(node.name, cast("NodeState", existing["state"]))
            # A revoked node is replaced: its old certificates and requests go with it (cascade).
            db.execute("DELETE FROM nodes WHERE name = ?", (node.name,))
            db.execute(
                "INSERT INTO nodes (name, kind, state, created_at, agent_version)"
                " VALUES (?, ?, ?, ?, ?)",
                (node.name, node.kind, node.state, node.created_at, node.agent_version),
            )
            if certificate is not None:
                _insert_certificate(db, certificate)
            if request is not None:
                db.execute(
                    "INSERT INTO join_requests (id, name, kind, csr_pem, poll_hash, created_at,"
                    " expires_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        request.id,
                        request.name,
                        request.kind,
                        request.csr_pem,
                        request.poll_hash,
                        request.created_at,
                        request.expires_at,
                    ),
                )
            self._bump(db)

    # ------------------------------------------------------------------ certificates

    def record_certificate(self, certificate: CertificateRecord) -> None:
        with self._transaction() as db:
            if db.execute("SELECT 1 FROM nodes WHERE name = ?", (certificate.name,)).fetchone():
                _insert_certificate(db, certificate)
            else:
                raise NotFoundError(f"no node named {certificate.name!r}")
            # Expired certificates can never authenticate again: forget them.
            db.execute(
                "DELETE FROM certificates WHERE name = ? AND not_after < ?",
                (certificate.name, certificate.issued_at),
            )
            self._bump(db)

    def get_certificate(self, serial: str) -> CertificateRecord | None:
        row = self._db.execute("SELECT * FROM certificates WHERE serial = ?", (serial,)).fetchone()
        if row is None:
            return None
        return CertificateRecord(
            serial=row["serial"],
            name=row["name"],
            not_after=row["not_after"],
            issued_at=row["issued_at"],
        )

    # ------------------------------------------------------------------ join requests

    def get_join_request(self, request_id: str) -> JoinRequest | None:
        row = self._db.execute("SELECT * FROM join_requests WHERE id = ?", (request_id,)).fetchone()
        if row is None:
            return None
        return JoinRequest(
            id=row["id"],
            name=row["name"],
            kind=row["kind"],
            csr_pem=row["csr_pem"],
            poll_hash=row["poll_hash"],
            created_at=row["created_at"],
            expires_at=row["expires_at"],
            certificate_pem=row["certificate_pem"],
        )

    def issue_pending(
        self, request_id: str, *, certificate: CertificateRecord, certificate_pem: str
    ) -> None:
        with self._transaction() as db:
            updated = db.execute(
                "UPDATE join_requests SET certificate_pem = ?"
                " WHERE id = ? AND certificate_pem IS NULL",
                (certificate_pem, request_id),
            )
            if updated.rowcount != 1:
                raise NotFoundError(f"no unissued join request {request_id!r}")
            _insert_certificate(db, certificate)
            self._bump(db)

    # ------------------------------------------------------------------ console sessions

    def revoke_session(self, session_id: str, *, expires_at: float, now: float) -> None:
        # Not a revision bump: sessions are checked on every API call, nothing polls for them.
        with self._transaction() as db:
            db.execute("DELETE FROM revoked_sessions WHERE expires_at <= ?", (now,))
            if expires_at > now:
                db.execute(
                    "INSERT INTO revoked_sessions (id, expires_at) VALUES (?, ?)"
                    " ON CONFLICT (id) DO NOTHING",
                    (session_id, expires_at),
                )

    def session_revoked(self, session_id: str) -> bool:
        row = self._db.execute(
            "SELECT 1 FROM revoked_sessions WHERE id = ?", (session_id,)
        ).fetchone()
        return row is not None

    # ------------------------------------------------------------------ users

    def add_user(self, user: UserRecord) -> None:
        with self._transaction() as db:
            old = db.execute("SELECT revoked_at FROM users WHERE name = ?", (user.name,)).fetchone()
            if old is not None and old["revoked_at"] is None:
                raise UserExistsError(user.name)
            db.execute("DELETE FROM users WHERE name = ?", (user.name,))  # tokens cascade
            try:
                db.execute(
                    "INSERT INTO users (name, id, role, clusters, created_at, expires_at)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        user.name,
                        user.id,
                        user.role,
                        None if user.clusters is None else json.dumps(list(user.clusters)),
                        user.created_at,
                        user.expires_at,
                    ),
                )
            except sqlite3.IntegrityError as error:
                raise DuplicateIdError(f"user id {user.id} exists") from error
            self._bump(db)

    _USER_COLUMNS = (
        "SELECT users.*, (SELECT COUNT(*) FROM user_tokens t WHERE t.user_id = users.id"
        " AND t.expires_at > ? AND users.revoked_at IS NULL) AS live_tokens FROM users"
    )

    def get_user(self, name: str, *, now: float) -> UserRecord | None:
        row = self._db.execute(
            f"{self._USER_COLUMNS} WHERE name = ?",
            (now, name),
        ).fetchone()
        return None if row is None else _user(row)

    def get_user_by_id(self, user_id: str) -> UserRecord | None:
        row = self._db.execute("SELECT * FROM users WHERE id = ?", (user_id,)).fetchone()
        return None if row is None else _user(row)

    def list_users(self, *, now: float) -> list[UserRecord]:
        rows = self._db.execute(
            f"{self._USER_COLUMNS} ORDER BY name",
            (now,),
        )
        return [_user(row) for row in rows]

    def add_user_token(self, token: UserTokenRecord, *, now: float, max_tokens: int) -> None:
        with self._transaction() as db:
            user = db.execute(
                "SELECT revoked_at FROM users WHERE id = ?", (token.user_id,)
            ).fetchone()
            if user is None or user["revoked_at"] is not None:
                raise NotFoundError(f"no active user with id {token.user_id!r}")
            db.execute(
                "DELETE FROM user_tokens WHERE user_id = ? AND expires_at <= ?",
                (token.user_id, now),
            )
            held = db.execute(
                "SELECT COUNT(*) FROM user_tokens WHERE user_id = ?", (token.user_id,)
            ).fetchone()[0]
            if held >= max_tokens:
                raise StoreError(
                    f"the user holds {held} unexpired tokens, the most allowed: revoke it and"
                    " create it again to start afresh"
                )
            try:
                db.execute(
                    "INSERT INTO user_tokens (id, user_id, secret_hash, created_at, expires_at)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (
                        token.id,
                        token.user_id,
                        token.secret_hash,
                        token.created_at,
                        token.expires_at,
                    ),
                )
            except sqlite3.IntegrityError as error:
                raise DuplicateIdError(f"user token id {token.id} exists") from error

    def get_user_token(self, token_id: str) -> tuple[UserTokenRecord, UserRecord] | None:
        row = self._db.execute(
            "SELECT t.id AS token_id, t.secret_hash, t.created_at AS token_created_at,"
            " t.expires_at AS token_expires_at, users.* FROM user_tokens t"
            " JOIN users ON users.id = t.user_id WHERE t.id = ?",
            (token_id,),
        ).fetchone()
        if row is None:
            return None
        token = UserTokenRecord(
            id=row["token_id"],
            user_id=row["id"],
            secret_hash=row["secret_hash"],
            created_at=row["token_created_at"],
            expires_at=row["token_expires_at"],
        )
        return token, _user(row)

    def revoke_user(self, name: str, *, now: float) -> UserRecord:
        with self._transaction() as db:
            row = db.execute("SELECT * FROM users WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise NotFoundError(f"no user named {name!r}")
            # Its tokens stay (bounded per user) so that one presented later is refused as the
            # token of a revoked user, not as an unknown one; `add_user` of the name drops them.
            if row["revoked_at"] is None:
                db.execute("UPDATE users SET revoked_at = ? WHERE name = ?", (now, name))
            self._bump(db)
            return _user(db.execute("SELECT * FROM users WHERE name = ?", (name,)).fetchone())

    def close(self) -> None:
        self._db.close()


def _user(row: sqlite3.Row) -> UserRecord:
    clusters = row["clusters"]
    keys = row.keys()
    return UserRecord(
        id=row["id"],
        name=row["name"],
        role=row["role"],
        clusters=None if clusters is None else tuple(json.loads(clusters)),
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        revoked_at=row["revoked_at"],
        tokens=int(row["live_tokens"]) if "live_tokens" in keys else 0,
    )


def _insert_certificate(db: sqlite3.Connection, certificate: CertificateRecord) -> None:
    db.execute(
        "INSERT INTO certificates (serial, name, not_after, issued_at) VALUES (?, ?, ?, ?)",
        (certificate.serial, certificate.name, certificate.not_after, certificate.issued_at),
    )
    db.execute(
        "UPDATE nodes SET cert_serial = ?, cert_not_after = ? WHERE name = ?",
        (certificate.serial, certificate.not_after, certificate.name),
    )


def _token(row: sqlite3.Row) -> TokenRecord:
    return TokenRecord(
        id=row["id"],
        secret_hash=row["secret_hash"],
        kind=row["kind"],
        name=row["name"],
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        require_approval=bool(row["require_approval"]),
        used_at=row["used_at"],
        revoked_at=row["revoked_at"],
    )


def _node(row: sqlite3.Row) -> NodeRecord:
    return NodeRecord(
        name=row["name"],
        kind=row["kind"],
        state=row["state"],
        created_at=row["created_at"],
        cert_serial=row["cert_serial"],
        cert_not_after=row["cert_not_after"],
        last_seen=row["last_seen"],
        agent_version=row["agent_version"],
    )
