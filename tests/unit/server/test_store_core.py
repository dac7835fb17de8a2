"""The store suite (both backends) for the operators' API.

Node states, token revocation, admin token rotation.

Node state changes start from allowed states only, a revoked bootstrap token is never
redeemed, the admin token rotates atomically, and a version-3 store.db migrates to version 4.
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING

import pytest

from tunnel_server.identity import tokens
from tunnel_server.store import (
    SCHEMA_VERSION,
    NodeRecord,
    NodeState,
    NotFoundError,
    SqliteStore,
    Store,
    TokenRecord,
    TokenUsedError,
    WrongStateError,
)

if TYPE_CHECKING:
    from pathlib import Path

NOW = 1_800_000_000.0


def _token(store: Store, token_id: str, name: str = "edge-1") -> None:
    store.add_token(
        TokenRecord(
            id=token_id,
            secret_hash="0" * 64,
            kind="node",
            name=name,
            created_at=NOW,
            expires_at=NOW + 60,
            require_approval=True,
        )
    )


def _pending(store: Store, name: str) -> None:
    _token(store, f"t{name[-5:]:0>5}", name)
    store.redeem_token(
        f"t{name[-5:]:0>5}",
        now=NOW,
        node=NodeRecord(name=name, kind="node", state="pending", created_at=NOW),
    )


def test_a_change_starts_only_from_the_states_allowed(store: Store) -> None:
    _pending(store, "edge-1")
    before = store.revision()
    node = store.change_node_state("edge-1", "approved", only_from=("pending",))
    assert node.state == "approved"
    assert store.revision() == before + 1
    with pytest.raises(WrongStateError) as wrong:
        store.change_node_state("edge-1", "approved", only_from=("pending",))
    assert wrong.value.node.state == "approved"
    with pytest.raises(WrongStateError):
        store.change_node_state("edge-1", "revoked", only_from=("pending",))  # deny
    assert store.revision() == before + 1, "a refused change changes nothing"
    every: tuple[NodeState, ...] = ("pending", "approved", "revoked")
    assert store.change_node_state("edge-1", "revoked", only_from=every).state == "revoked"
    again = store.revision()
    assert store.change_node_state("edge-1", "revoked", only_from=every).state == "revoked"
    assert store.revision() == again, "the same state again: no change, no bump"
    with pytest.raises(NotFoundError):
        store.change_node_state("nobody", "revoked", only_from=every)


def test_a_revoked_token_is_never_redeemed(store: Store) -> None:
    _token(store, "tok001")
    before = store.revision()
    revoked = store.revoke_token("tok001", now=NOW + 1)
    assert revoked.revoked_at == NOW + 1
    assert store.revision() == before + 1
    assert store.revoke_token("tok001", now=NOW + 2).revoked_at == NOW + 1, "idempotent"
    node = NodeRecord(name="edge-1", kind="node", state="approved", created_at=NOW)
    with pytest.raises(TokenUsedError):  # refused in the redeeming write itself
        store.redeem_token("tok001", now=NOW + 3, node=node)
    assert store.get_node("edge-1") is None
    with pytest.raises(NotFoundError):
        store.revoke_token("nope00", now=NOW)
    _token(store, "tok002", "edge-2")
    store.redeem_token("tok002", now=NOW, node=node)
    with pytest.raises(TokenUsedError):
        store.revoke_token("tok002", now=NOW)


def test_check_token_says_a_revoked_token_was_revoked(store: Store) -> None:
    made = tokens.create_token(store, tokens.TokenSpec(kind="node", name="e", ttl=60), now=NOW)
    store.revoke_token(made.id, now=NOW)
    with pytest.raises(tokens.InvalidTokenError, match="revoked"):
        tokens.check_token(store, str(made), now=NOW + 1)


def test_rotation_replaces_the_admin_token(store: Store, tmp_path: Path) -> None:
    assert tokens.ensure_admin_token(store, tmp_path, now=NOW)
    first = (tmp_path / tokens.ADMIN_FILE).read_text().strip()
    first_id = tokens.admin_token_id(first)
    assert tokens.admin_session_valid(store, first_id)
    assert tokens.admin_session_valid(store, None), "sessions older than rotation: until one"
    before = store.revision()
    second = tokens.rotate_admin_token(store, tmp_path, now=NOW + 1)
    assert (tmp_path / tokens.ADMIN_FILE).read_text().strip() == second
    assert (tmp_path / tokens.ADMIN_FILE).stat().st_mode & 0o777 == 0o600
    assert store.revision() > before
    assert not tokens.verify_admin_token(store, first)
    assert tokens.verify_admin_token(store, second)
    assert not tokens.admin_session_valid(store, first_id)
    assert not tokens.admin_session_valid(store, None)
    assert tokens.admin_session_valid(store, tokens.admin_token_id(second))
    assert not tokens.ensure_admin_token(store, tmp_path, now=NOW + 2), "a restart keeps it"


def test_a_failed_rotation_leaves_the_file_as_it_was(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokens.ensure_admin_token(store, tmp_path, now=NOW)
    first = (tmp_path / tokens.ADMIN_FILE).read_text()

    def broken(**_: object) -> None:
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(store, "rotate_admin_token", broken)
    with pytest.raises(sqlite3.OperationalError):
        tokens.rotate_admin_token(store, tmp_path, now=NOW + 1)
    assert (tmp_path / tokens.ADMIN_FILE).read_text() == first
    assert tokens.verify_admin_token(store, first)


def test_a_version_3_store_migrates_with_its_tokens(tmp_path: Path) -> None:
    store = SqliteStore.open(tmp_path)
    _token(store, "tok003")
    store.close()
    db = sqlite3.connect(tmp_path / "store.db", isolation_level=None)
    db.execute("ALTER TABLE tokens DROP COLUMN revoked_at")  # as version 3 had it
    db.execute("PRAGMA user_version = 3")
    db.close()
    store = SqliteStore.open(tmp_path)
    try:
        db = sqlite3.connect(tmp_path / "store.db")
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
        db.close()
        record = store.get_token("tok003")
        assert record is not None
        assert (record.name, record.revoked_at, record.used_at) == ("edge-1", None, None)
        assert store.revoke_token("tok003", now=NOW).revoked_at == NOW
    finally:
        store.close()
