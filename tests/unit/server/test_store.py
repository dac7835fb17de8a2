"""The store suite: atomic redeem, name rules, revision counter across processes; SQLite schema.

Every test taking ``store`` runs on both backends (tests/unit/server/conftest.py).
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING

import pytest

from tests.harness.waiting import eventually
from tunnel_server.store import (
    SCHEMA_VERSION,
    CertificateRecord,
    JoinRequest,
    NameTakenError,
    NodeRecord,
    NodeState,
    NotFoundError,
    SqliteStore,
    Store,
    StoreError,
    TokenRecord,
    TokenUsedError,
)

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

NOW = 1_800_000_000.0


def _token(store: Store, token_id: str, name: str = "edge-1") -> str:
    store.add_token(
        TokenRecord(
            id=token_id,
            secret_hash="0" * 64,
            kind="node",
            name=name,
            created_at=NOW,
            expires_at=NOW + 60,
            require_approval=False,
        )
    )
    return token_id


def _node(name: str = "edge-1", state: NodeState = "approved") -> NodeRecord:
    return NodeRecord(name=name, kind="node", state=state, created_at=NOW)


def _cert(serial: str, name: str = "edge-1") -> CertificateRecord:
    return CertificateRecord(serial=serial, name=name, not_after=NOW + 86400, issued_at=NOW)


def test_schema_version_and_wal(sqlite_store: SqliteStore) -> None:
    db = sqlite3.connect(sqlite_store.path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    SqliteStore.open(tmp_path).close()
    db = sqlite3.connect(tmp_path / "store.db")
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(StoreError, match="upgrade tunnel-server"):
        SqliteStore.open(tmp_path)


def test_redeem_creates_node_and_certificate(store: Store) -> None:
    store.redeem_token(_token(store, "aaaaaa"), now=NOW, node=_node(), certificate=_cert("ab"))
    node = store.get_node("edge-1")
    assert node is not None
    assert (node.state, node.cert_serial) == ("approved", "ab")
    assert store.get_certificate("ab") == _cert("ab")
    token = store.get_token("aaaaaa")
    assert token is not None
    assert token.used_at == NOW


def test_redeem_is_atomic(store: Store) -> None:
    store.redeem_token(_token(store, "aaaaaa"), now=NOW, node=_node())
    with pytest.raises(NameTakenError) as taken:
        store.redeem_token(_token(store, "bbbbbb"), now=NOW, node=_node(), certificate=_cert("x"))
    assert taken.value.state == "approved"
    token = store.get_token("bbbbbb")
    assert token is not None
    assert token.used_at is None  # rolled back: the token is still usable
    assert store.get_certificate("x") is None
    with pytest.raises(TokenUsedError):
        store.redeem_token("aaaaaa", now=NOW, node=_node("other"))
    assert store.get_node("other") is None


def test_revoked_node_is_replaced_and_its_certificates_forgotten(store: Store) -> None:
    store.redeem_token(_token(store, "aaaaaa"), now=NOW, node=_node(), certificate=_cert("old"))
    store.set_node_state("edge-1", "revoked")
    store.redeem_token(_token(store, "bbbbbb"), now=NOW, node=_node(), certificate=_cert("new"))
    assert store.get_certificate("old") is None
    assert store.get_certificate("new") is not None


def test_pending_join_request(store: Store) -> None:
    request = JoinRequest(
        id="r1",
        name="edge-1",
        kind="node",
        csr_pem="CSR",
        poll_hash="h",
        created_at=NOW,
        expires_at=NOW + 60,
    )
    store.redeem_token(
        _token(store, "aaaaaa"), now=NOW, node=_node(state="pending"), request=request
    )
    assert store.get_join_request("r1") == request
    store.issue_pending("r1", certificate=_cert("c1"), certificate_pem="PEM")
    issued = store.get_join_request("r1")
    assert issued is not None
    assert issued.certificate_pem == "PEM"
    with pytest.raises(NotFoundError):
        store.issue_pending("r1", certificate=_cert("c2"), certificate_pem="PEM")


def test_revision_moves_on_security_changes_only(store: Store, reopen: Callable[[], Store]) -> None:
    store.redeem_token(_token(store, "aaaaaa"), now=NOW, node=_node())
    other = reopen()  # another process, e.g. the CLI, or another replica
    eventually(lambda: other.get_node("edge-1"), what="the other store sees the node")
    before = store.revision()
    other.touch_node("edge-1", now=NOW + 5, agent_version="1.2.3")
    node = eventually(
        lambda: store.get_node("edge-1"),
        lambda n: n is not None and n.last_seen is not None,
        what="the heartbeat reaches the first store",
    )
    assert node is not None
    assert (node.last_seen, node.agent_version) == (NOW + 5, "1.2.3")
    assert store.revision() == before, "a heartbeat is not a security change"
    other.set_node_state("edge-1", "revoked")
    eventually(lambda: store.revision() > before, what="the revocation moves the revision")


def test_record_certificate_needs_a_node(store: Store) -> None:
    with pytest.raises(NotFoundError):
        store.record_certificate(_cert("zz", name="ghost"))
    with pytest.raises(NotFoundError):
        store.set_node_state("ghost", "approved")
