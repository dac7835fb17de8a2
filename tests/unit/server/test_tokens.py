"""Bootstrap tokens: format, hashing, expiry, single use; the admin token; node names."""

from __future__ import annotations

import re
import stat
from typing import TYPE_CHECKING

import pytest

from tunnel_server.identity import tokens
from tunnel_server.store import NodeRecord, SqliteStore, Store, TokenUsedError

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

NOW = 1_800_000_000.0


def _create(store: Store, *, ttl: float = 3600, approval: bool = False) -> str:
    spec = tokens.TokenSpec(kind="node", name="edge-1", ttl=ttl, require_approval=approval)
    return str(tokens.create_token(store, spec, now=NOW))


def test_format_is_kubeadm_like(store: Store) -> None:
    token = _create(store)
    assert re.fullmatch(r"[a-z0-9]{6}\.[a-z0-9]{16}", token)
    assert _create(store) != token


def test_only_the_hash_is_stored(store: Store, dump: Callable[[], str]) -> None:
    token = _create(store)
    token_id, secret = token.split(".")
    record = store.get_token(token_id)
    assert record is not None
    assert record.secret_hash == tokens.hash_secret(secret)
    assert secret not in record.secret_hash
    stored = dump()
    assert record.secret_hash in stored, "the dump holds the store's data"
    assert secret not in stored


def test_valid_token_checks(store: Store) -> None:
    record = tokens.check_token(store, _create(store, approval=True), now=NOW + 10)
    assert (record.kind, record.name, record.require_approval) == ("node", "edge-1", True)


def test_wrong_secret_and_unknown_id(store: Store) -> None:
    token_id = _create(store).split(".")[0]
    with pytest.raises(tokens.InvalidTokenError, match="unknown bootstrap token"):
        tokens.check_token(store, f"{token_id}.0000000000000000", now=NOW)
    with pytest.raises(tokens.InvalidTokenError):
        tokens.check_token(store, "zzzzzz.0000000000000000", now=NOW)
    with pytest.raises(tokens.InvalidTokenError, match="malformed"):
        tokens.check_token(store, "not-a-token", now=NOW)


def test_expiry(store: Store) -> None:
    token = _create(store, ttl=60)
    tokens.check_token(store, token, now=NOW + 59)
    with pytest.raises(tokens.ExpiredTokenError, match="expired"):
        tokens.check_token(store, token, now=NOW + 60)


def test_single_use(store: Store) -> None:
    token = _create(store)
    token_id = token.split(".")[0]
    node = NodeRecord(name="edge-1", kind="node", state="approved", created_at=NOW)
    store.redeem_token(token_id, now=NOW, node=node)
    with pytest.raises(tokens.UsedTokenError, match="already used"):
        tokens.check_token(store, token, now=NOW)
    with pytest.raises(TokenUsedError):
        store.redeem_token(token_id, now=NOW, node=node)


def test_secret_not_in_repr() -> None:
    token = tokens.BootstrapToken(id="abcdef", secret="0123456789abcdef")
    assert "0123456789abcdef" not in repr(token)
    assert str(token) == "abcdef.0123456789abcdef"


@pytest.mark.parametrize("name", ["edge-1", "a", "factory.site-3", "x" * 63])
def test_valid_names(name: str) -> None:
    assert tokens.validate_name(name) == name


@pytest.mark.parametrize("name", ["", "Edge", "-a", "a-", "a_b", "x" * 64, "a b", "ä"])
def test_invalid_names(name: str) -> None:
    with pytest.raises(ValueError, match="invalid name"):
        tokens.validate_name(name)


def test_admin_token(store: Store, tmp_path: Path) -> None:
    assert tokens.ensure_admin_token(store, tmp_path, now=NOW)
    assert not tokens.ensure_admin_token(store, tmp_path, now=NOW)  # once only
    path = tmp_path / tokens.ADMIN_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    secret = path.read_text().strip()
    assert tokens.verify_admin_token(store, secret)
    assert not tokens.verify_admin_token(store, secret[:-1] + ("a" if secret[-1] != "a" else "b"))
    assert not tokens.verify_admin_token(store, "garbage")


def test_a_colliding_token_id_is_drawn_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SqliteStore.open(tmp_path)
    spec = tokens.TokenSpec(kind="node", name="edge-1", ttl=60.0)
    first = tokens.create_token(store, spec, now=1000.0)
    draws = iter([first.id, "s" * 16, "fresh1", "t" * 16])
    monkeypatch.setattr(tokens, "_random", lambda _length: next(draws))
    second = tokens.create_token(store, spec, now=1000.0)
    assert second.id == "fresh1"
    assert {t.id for t in store.list_tokens()} == {first.id, "fresh1"}
    store.close()
