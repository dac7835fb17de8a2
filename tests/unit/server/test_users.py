"""Cloud users and their tokens: made, checked, expired, revoked, made again; the migration."""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING

import pytest

from tunnel_server.identity import users
from tunnel_server.store import SCHEMA_VERSION, SqliteStore, Store

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

NOW = 1_800_000_000.0
DAY = 86400.0


def _refused(store: Store, token: str, *, now: float = NOW) -> str:
    with pytest.raises(users.TokenRefusedError) as refused:
        users.verify_user_token(store, token, now=now)
    return refused.value.code


def test_a_user_token_authenticates_its_user_and_is_stored_hashed(
    store: Store, dump: Callable[[], str]
) -> None:
    user, token = users.create_user(
        store, "alice", role="operator", clusters=("b", "a"), ttl=90 * DAY, now=NOW
    )
    assert token.startswith("efu1.")
    assert len(token) == 4 + 1 + 12 + 1 + 32
    found, expires = users.verify_user_token(store, token, now=NOW + 1)
    assert (found.name, found.role, found.clusters) == ("alice", "operator", ("b", "a"))
    assert found.id == user.id
    assert expires == NOW + 90 * DAY
    stored = dump()
    assert found.id in stored, "the dump holds the store's data"
    assert token.rsplit(".", 1)[1] not in stored, "the secret is never stored"


def test_bad_tokens_are_refused_with_a_reason(store: Store) -> None:
    _, token = users.create_user(store, "bob", role="viewer", clusters=None, ttl=DAY, now=NOW)
    prefix, token_id, secret = token.split(".")
    assert _refused(store, f"{prefix}.{token_id}.{'0' * 32}") == "invalid_token"
    assert _refused(store, f"{prefix}.{'z' * 12}.{secret}") == "invalid_token"
    assert _refused(store, "efu1.short.x") == "invalid_token"
    assert _refused(store, token + "x") == "invalid_token"
    assert _refused(store, token.upper()) == "invalid_token"
    assert _refused(store, token, now=NOW + DAY) == "user_expired"


def test_several_tokens_each_with_its_own_expiry_capped_by_the_user(store: Store) -> None:
    _, first = users.create_user(store, "ci", role="operator", clusters=None, ttl=30 * DAY, now=NOW)
    short = users.issue_user_token(store, "ci", ttl=3600, now=NOW)
    long = users.issue_user_token(store, "ci", ttl=365 * DAY, now=NOW)
    assert len({first, short, long}) == 3
    assert users.verify_user_token(store, long, now=NOW)[1] == NOW + 30 * DAY
    assert _refused(store, short, now=NOW + 3600) == "token_expired"
    assert users.verify_user_token(store, first, now=NOW + 3600)[0].name == "ci"
    listed = store.list_users(now=NOW + 3600)
    assert [(u.name, u.tokens) for u in listed] == [("ci", 2)]


def test_revoking_stops_every_token_and_making_again_does_not_revive_them(
    store: Store,
) -> None:
    old, token = users.create_user(store, "eve", role="admin", clusters=None, ttl=DAY, now=NOW)
    other = users.issue_user_token(store, "eve", ttl=DAY, now=NOW)
    before = store.revision()
    users.revoke_user(store, "eve", now=NOW + 1)
    assert store.revision() > before, "a running server notices"
    assert _refused(store, token) == "user_revoked"
    assert _refused(store, other) == "user_revoked"
    assert store.list_users(now=NOW)[0].tokens == 0
    with pytest.raises(users.UserError, match="revoked"):
        users.issue_user_token(store, "eve", ttl=DAY, now=NOW)
    users.revoke_user(store, "eve", now=NOW + 2)  # idempotent
    new, fresh = users.create_user(store, "eve", role="viewer", clusters=None, ttl=DAY, now=NOW)
    assert new.id != old.id
    assert _refused(store, token) == "invalid_token"
    assert users.verify_user_token(store, fresh, now=NOW)[0].role == "viewer"
    assert store.get_user_by_id(old.id) is None


def test_names_roles_scopes_and_lifetimes_are_checked(store: Store) -> None:
    for name in ("", "Alice", "-x", "x-", "a" * 64, "a_b", "admin", "a b"):
        with pytest.raises(users.UserError):
            users.create_user(store, name, role="viewer", clusters=None, ttl=DAY, now=NOW)
    with pytest.raises(users.UserError, match="role"):
        users.create_user(store, "x", role="root", clusters=None, ttl=DAY, now=NOW)  # type: ignore[arg-type]
    with pytest.raises(users.UserError, match="no cluster scope"):
        users.create_user(store, "x", role="admin", clusters=("a",), ttl=DAY, now=NOW)
    with pytest.raises(users.UserError, match="lifetime"):
        users.create_user(store, "x", role="viewer", clusters=None, ttl=10, now=NOW)
    with pytest.raises(users.UserError, match="kept for people who sign in through SSO"):
        users.create_user(store, "sso.ann-0123abcd", role="viewer", clusters=None, ttl=DAY, now=NOW)
    users.create_user(store, "x", role="viewer", clusters=None, ttl=DAY, now=NOW)
    with pytest.raises(users.UserError, match="exists"):
        users.create_user(store, "x", role="viewer", clusters=None, ttl=DAY, now=NOW)
    with pytest.raises(users.UserError, match="no user"):
        users.issue_user_token(store, "nobody", ttl=DAY, now=NOW)
    with pytest.raises(users.UserError, match="no user"):
        users.revoke_user(store, "nobody", now=NOW)
    assert users.parse_clusters("b, a,b") == ("a", "b")
    for bad in ("", ",", "A", "a,b_c"):
        with pytest.raises(users.UserError):
            users.parse_clusters(bad)
    assert users.parse_ttl("90d") == 90 * DAY
    assert users.parse_ttl("12h") == 12 * 3600
    assert users.parse_ttl("30m") == 1800
    assert users.parse_ttl("3600") == 3600
    for bad in ("", "1w", "-5d", "10", "731d", "1e9", "nan", "5 d"):
        with pytest.raises(users.UserError):
            users.parse_ttl(bad)


def test_a_user_holds_a_bounded_number_of_tokens(store: Store) -> None:
    users.create_user(store, "loop", role="viewer", clusters=None, ttl=DAY, now=NOW)
    for _ in range(users.MAX_TOKENS_PER_USER - 1):
        users.issue_user_token(store, "loop", ttl=3600, now=NOW)
    with pytest.raises(users.UserError, match="unexpired tokens"):
        users.issue_user_token(store, "loop", ttl=DAY, now=NOW)
    # Expired ones are forgotten when a new one is made.
    users.issue_user_token(store, "loop", ttl=3600, now=NOW + 3600)
    assert store.list_users(now=NOW + 3600)[0].tokens == 2


def test_a_version_2_store_gets_the_users_tables(tmp_path: Path) -> None:
    store = SqliteStore.open(tmp_path)
    store.set_meta("public_url", "https://x:1")
    store.close()
    db = sqlite3.connect(tmp_path / "store.db", isolation_level=None)
    db.execute("DROP TABLE user_tokens")
    db.execute("DROP TABLE users")
    db.execute("ALTER TABLE tokens DROP COLUMN revoked_at")  # version 4's
    db.execute("PRAGMA user_version = 2")
    db.close()
    store = SqliteStore.open(tmp_path)
    try:
        assert store.get_meta("public_url") == "https://x:1"
        users.create_user(store, "after", role="viewer", clusters=None, ttl=DAY, now=NOW)
        db = sqlite3.connect(tmp_path / "store.db")
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
        db.close()
    finally:
        store.close()
