"""``edge-agent join`` against a real ``tunnel-server run``: the happy path and every refusal."""

from __future__ import annotations

import contextlib
import sqlite3
import stat
import time
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edge_agent.identity import Identity
from tests.harness.waiting import eventually_async
from tests.integration.join.conftest import free_port, run

if TYPE_CHECKING:
    from pathlib import Path

    from tests.integration.join.conftest import RunningServer


def _subject(certificate: x509.Certificate) -> tuple[str, str]:
    cn = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    org = certificate.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value
    return str(cn), str(org)


async def test_happy_path(server: RunningServer, tmp_path: Path, name: str) -> None:
    """The node gets a client certificate for its name; its key stays local and 0600."""
    token = await server.token(name)
    agent_dir = tmp_path / "agent"
    result = await server.join(token=token, name=name, data_dir=agent_dir)
    assert result.rc == 0, result.stderr
    assert "joined" in result.stdout

    identity = Identity.load(agent_dir)
    assert _subject(identity.certificate) == (name, "edgefleet:node")
    eku = identity.certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert stat.S_IMODE(identity.key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(agent_dir.stat().st_mode) == 0o700
    assert identity.ca_path.read_bytes() == server.ca_pem
    assert identity.ca_hash == server.ca_hash

    key = serialization.load_pem_private_key(identity.key_path.read_bytes(), password=None)
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    assert key.public_key().public_bytes(der, spki) == (
        identity.certificate.public_key().public_bytes(der, spki)
    )
    # The key never reached the server: no file of its data dir and no log line holds it.
    key_der = key.private_bytes(
        der, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    key_pem = identity.key_path.read_bytes()
    for path in [*server.data_dir.iterdir(), server.log_path]:
        content = path.read_bytes()
        assert key_pem not in content
        assert key_der not in content
    # Nor was the token's secret logged, or stored.
    secret = token.split(".")[1]
    assert secret not in server.log()
    assert all(secret.encode() not in p.read_bytes() for p in server.data_dir.iterdir())

    nodes = await server.nodes()
    assert nodes[name]["state"] == "approved"
    assert nodes[name]["kind"] == "node"
    assert nodes[name]["certExpiresAt"] is not None
    assert nodes[name]["agentVersion"]


async def test_wrong_ca_hash_sends_nothing(
    server: RunningServer, tmp_path: Path, name: str
) -> None:
    token = await server.token(name)
    wrong = "sha256:" + "0" * 64
    joins_before = server.log().count("POST /api/v1/join")
    result = await server.join(token=token, name=name, data_dir=tmp_path / "a", ca_hash=wrong)
    assert result.rc == 3
    assert "does not match --ca-hash" in result.stderr
    assert server.log().count("POST /api/v1/join") == joins_before
    assert not (tmp_path / "a").exists()
    # The token is still good.
    assert (await server.join(token=token, name=name, data_dir=tmp_path / "b")).rc == 0


async def test_malformed_ca_hash_is_a_usage_error(
    server: RunningServer, tmp_path: Path, name: str
) -> None:
    token = await server.token(name)
    result = await server.join(token=token, name=name, data_dir=tmp_path, ca_hash="abc")
    assert result.rc == 2
    assert "sha256:<64 hex digits>" in result.stderr


async def test_expired_token(server: RunningServer, tmp_path: Path, name: str) -> None:
    # The API makes tokens of 60 s or more; the clock jumps instead: the token's expiry is set
    # in the past in the store (the server reads it there at every join and listing).
    token = await server.token(name, "--ttl", "1m")
    with contextlib.closing(sqlite3.connect(server.data_dir / "store.db")) as db, db:
        db.execute("UPDATE tokens SET expires_at = ? WHERE name = ?", (time.time() - 1, name))

    async def token_rows() -> list[list[str]]:
        listing = await server.cli("token", "list")
        return [line.split() for line in listing.stdout.splitlines() if name in line.split()]

    # Until the server's own listing says so: joining earlier would use the token up.
    await eventually_async(
        token_rows,
        lambda rows: len(rows) == 1 and "expired" in rows[0],
        what=f"the token of {name} listed as expired",
        every=0.1,
    )
    result = await server.join(token=token, name=name, data_dir=tmp_path)
    assert result.rc == 4
    assert "expired" in result.stderr
    assert f"tunnel-server token create --name {name}" in result.stderr


async def test_reused_token(server: RunningServer, tmp_path: Path, name: str) -> None:
    token = await server.token(name)
    assert (await server.join(token=token, name=name, data_dir=tmp_path / "a")).rc == 0
    result = await server.join(token=token, name=name, data_dir=tmp_path / "b")
    assert result.rc == 4
    assert "already used" in result.stderr


async def test_unknown_token(server: RunningServer, tmp_path: Path, name: str) -> None:
    result = await server.join(token="abcdef.0123456789abcdef", name=name, data_dir=tmp_path)
    assert result.rc == 4
    assert "unknown bootstrap token" in result.stderr


async def test_name_taken(server: RunningServer, tmp_path: Path, name: str) -> None:
    # Both tokens made before the first join: `token create` refuses a joined name itself.
    first = await server.token(name)
    second = await server.token(name)
    assert (await server.join(token=first, name=name, data_dir=tmp_path / "a")).rc == 0
    result = await server.join(token=second, name=name, data_dir=tmp_path / "b")
    assert result.rc == 5
    assert "already approved" in result.stderr
    assert f"token create --name {name} --replace" in result.stderr


async def test_token_is_bound_to_its_name(server: RunningServer, tmp_path: Path, name: str) -> None:
    token = await server.token(name)
    result = await server.join(token=token, name=f"{name}-b", data_dir=tmp_path)
    assert result.rc == 5
    assert f"--name {name}" in result.stderr
    assert name not in await server.nodes()


async def test_revoked_node_may_join_again_with_a_new_token(
    server: RunningServer, tmp_path: Path, name: str
) -> None:
    first = await server.token(name)
    assert (await server.join(token=first, name=name, data_dir=tmp_path / "a")).rc == 0
    assert (await server.cli("nodes", "revoke", name)).rc == 0
    assert (await server.nodes())[name]["state"] == "revoked"
    second = await server.token(name)
    assert (await server.join(token=second, name=name, data_dir=tmp_path / "b")).rc == 0
    assert (await server.nodes())[name]["state"] == "approved"


async def test_server_unreachable(tmp_path: Path, name: str) -> None:
    result = await run(
        "edge-agent",
        "join",
        "--server",
        f"https://127.0.0.1:{free_port()}",
        "--token",
        "abcdef.0123456789abcdef",
        "--ca-hash",
        "sha256:" + "0" * 64,
        "--name",
        name,
        "--data-dir",
        tmp_path,
    )
    assert result.rc == 6
    assert "cannot reach" in result.stderr
