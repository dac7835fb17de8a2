"""The store suite (both backends): signed-out console sessions; SQLite: version 1 migrating to 2.

The version-1 file is built as the version-1 server wrote it (its schema is copied below
from ``git show 0aa1eb0~1:tunnel_server/store.py``, not taken from the current module), so a
migration that edits the old schema in place instead of adding a step is caught too.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest

from tests.harness.waiting import eventually
from tunnel_server.store import (
    SCHEMA_VERSION,
    CertificateRecord,
    JoinRequest,
    NodeRecord,
    SqliteStore,
    Store,
    TokenRecord,
)

if TYPE_CHECKING:
    from pathlib import Path

NOW = 1_800_000_000.0
TTL = 8 * 3600.0  # ApiSettings.session_ttl: a session lives 8 h


RevokedRows = Callable[[], list[tuple[str, float]]]


# ---------------------------------------------------------------- revoke and check


def test_a_revoked_session_is_revoked_and_others_are_not(store: Store) -> None:
    assert not store.session_revoked("nonce-a")
    store.revoke_session("nonce-a", expires_at=NOW + TTL, now=NOW)
    assert store.session_revoked("nonce-a")
    assert not store.session_revoked("nonce-b")


def test_revocation_is_seen_by_another_process(store: Store, reopen: Callable[[], Store]) -> None:
    other = reopen()  # e.g. a second server process on the same data dir, or another replica
    store.revoke_session("nonce-a", expires_at=NOW + TTL, now=NOW)
    eventually(lambda: other.session_revoked("nonce-a"), what="the sign-out reaches the other")


def test_revoking_again_is_a_no_op(store: Store, revoked_rows: RevokedRows) -> None:
    store.revoke_session("nonce-a", expires_at=NOW + TTL, now=NOW)
    revision = store.revision()
    store.revoke_session("nonce-a", expires_at=NOW + TTL, now=NOW + 60)
    assert store.session_revoked("nonce-a")
    assert revoked_rows() == [("nonce-a", NOW + TTL)]
    assert store.revision() == revision  # sign-outs do not wake the revision pollers


def test_an_expired_session_is_not_stored(store: Store, revoked_rows: RevokedRows) -> None:
    store.revoke_session("nonce-a", expires_at=NOW, now=NOW)  # expires this very second
    store.revoke_session("nonce-b", expires_at=NOW - 1, now=NOW)
    assert revoked_rows() == []


def test_entries_are_kept_until_their_session_would_have_expired(store: Store) -> None:
    store.revoke_session("nonce-a", expires_at=NOW + TTL, now=NOW)
    store.revoke_session("nonce-b", expires_at=NOW + TTL + 10, now=NOW + TTL - 1)
    assert store.session_revoked("nonce-a")  # one second left: still refused as revoked
    store.revoke_session("nonce-c", expires_at=NOW + 2 * TTL, now=NOW + TTL)
    assert not store.session_revoked("nonce-a")  # expired: pruned, refused as expired now
    assert store.session_revoked("nonce-b")
    assert store.session_revoked("nonce-c")


def test_pruning_keeps_the_table_to_one_session_lifetime(
    store: Store, revoked_rows: RevokedRows
) -> None:
    """A sign-out every 10 minutes for three days: never more rows than 8 h of sign-outs."""
    every = 600.0
    most = 0
    for i in range(3 * 24 * 6):
        now = NOW + i * every
        store.revoke_session(f"nonce-{i}", expires_at=now + TTL, now=now)
        rows = revoked_rows()
        most = max(most, len(rows))
        assert all(expires > now for _, expires in rows)
    assert most == int(TTL / every)


# ---------------------------------------------------------------- version 1 -> 2

_V1_SCHEMA = """
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

_V1_ROWS = [
    ("INSERT INTO meta VALUES ('public_url', 'https://fleet.example:8443')", ()),
    ("UPDATE revision SET value = 7 WHERE id = 1", ()),
    (
        "INSERT INTO tokens VALUES ('tok001', ?, 'node', 'edge-1', ?, ?, 0, ?)",
        ("a" * 64, NOW - 100, NOW + 3500, NOW - 50),
    ),
    (
        "INSERT INTO tokens VALUES ('tok002', ?, 'cluster', 'k3s-1', ?, ?, 1, NULL)",
        ("b" * 64, NOW - 90, NOW + 3510),
    ),
    ("INSERT INTO api_tokens VALUES ('admin', ?, 'admin', ?)", ("c" * 64, NOW - 1000)),
    (
        "INSERT INTO nodes VALUES ('edge-1', 'node', 'approved', 'ab01', ?, ?, ?, '1.4.0')",
        (NOW + 86400, NOW - 50, NOW - 5),
    ),
    ("INSERT INTO nodes VALUES ('k3s-1', 'cluster', 'pending', NULL, NULL, ?, NULL, NULL)", (NOW,)),
    ("INSERT INTO certificates VALUES ('ab01', 'edge-1', ?, ?)", (NOW + 86400, NOW - 50)),
    (
        "INSERT INTO join_requests VALUES ('req1', 'k3s-1', 'cluster', 'CSR', 'h', ?, ?, NULL)",
        (NOW, NOW + 600),
    ),
]


def _write_v1_store(data_dir: Path) -> Path:
    """A store.db as the version-1 server left it: WAL mode, user_version 1, some rows."""
    path = data_dir / "store.db"
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA foreign_keys = ON")
    db.execute("BEGIN IMMEDIATE")
    for statement in _V1_SCHEMA.split(";"):
        if statement.strip():
            db.execute(statement)
    db.execute("PRAGMA user_version = 1")
    db.execute("COMMIT")
    for statement, params in _V1_ROWS:
        db.execute(statement, params)
    db.close()
    return path


def test_a_version_1_store_migrates_with_its_data_intact(tmp_path: Path) -> None:
    path = _write_v1_store(tmp_path)
    store = SqliteStore.open(tmp_path)
    try:
        db = sqlite3.connect(path)
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert db.execute("PRAGMA foreign_key_check").fetchall() == []
        db.close()
        assert store.revision() == 7
        assert store.get_meta("public_url") == "https://fleet.example:8443"
        assert store.get_api_token_hash("admin") == "c" * 64
        assert store.list_tokens() == [
            TokenRecord(
                id="tok001",
                secret_hash="a" * 64,
                kind="node",
                name="edge-1",
                created_at=NOW - 100,
                expires_at=NOW + 3500,
                require_approval=False,
                used_at=NOW - 50,
            ),
            TokenRecord(
                id="tok002",
                secret_hash="b" * 64,
                kind="cluster",
                name="k3s-1",
                created_at=NOW - 90,
                expires_at=NOW + 3510,
                require_approval=True,
            ),
        ]
        assert store.list_nodes() == [
            NodeRecord(
                name="edge-1",
                kind="node",
                state="approved",
                created_at=NOW - 50,
                cert_serial="ab01",
                cert_not_after=NOW + 86400,
                last_seen=NOW - 5,
                agent_version="1.4.0",
            ),
            NodeRecord(name="k3s-1", kind="cluster", state="pending", created_at=NOW),
        ]
        assert store.get_certificate("ab01") == CertificateRecord(
            serial="ab01", name="edge-1", not_after=NOW + 86400, issued_at=NOW - 50
        )
        assert store.get_join_request("req1") == JoinRequest(
            id="req1",
            name="k3s-1",
            kind="cluster",
            csr_pem="CSR",
            poll_hash="h",
            created_at=NOW,
            expires_at=NOW + 600,
        )
        # The new table works on the migrated file.
        assert not store.session_revoked("nonce-a")
        store.revoke_session("nonce-a", expires_at=NOW + TTL, now=NOW)
        assert store.session_revoked("nonce-a")
    finally:
        store.close()


def test_a_migrated_store_opens_again_without_migrating(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _write_v1_store(tmp_path)
    with caplog.at_level("INFO", logger="tunnel_server.store"):
        SqliteStore.open(tmp_path).close()
        assert [r.kv for r in caplog.records if r.message == "store schema migrated"] == [  # type: ignore[attr-defined]
            {"version": version} for version in range(2, SCHEMA_VERSION + 1)
        ]
        caplog.clear()
        store = SqliteStore.open(tmp_path)  # the server, then the CLI: the second has no work
        store.revoke_session("nonce-a", expires_at=NOW + TTL, now=NOW)
        store.close()
        assert not [r for r in caplog.records if r.message == "store schema migrated"]
    store = SqliteStore.open(tmp_path)
    assert store.session_revoked("nonce-a")
    store.close()
