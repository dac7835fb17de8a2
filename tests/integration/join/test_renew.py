"""Renewal over mTLS keeps the certificate's name; revocation cuts a node off."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edge_agent.identity import Identity
from edge_agent.join import TrustError, renew
from edge_agent.settings import JoinSettings

if TYPE_CHECKING:
    from pathlib import Path

    from tests.integration.join.conftest import RunningServer


async def _joined(server: RunningServer, tmp_path: Path, name: str) -> Identity:
    token = await server.token(name)
    result = await server.join(token=token, name=name, data_dir=tmp_path / name)
    assert result.rc == 0, result.stderr
    return Identity.load(tmp_path / name)


def _csr(common_name: str) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:masters"),
        ]
    )
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM).decode()


async def _post_renew(
    server: RunningServer, identity: Identity | None, body: dict[str, str]
) -> tuple[int, dict[str, Any]]:
    context = identity.client_ssl_context() if identity else server.trusting_context()
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{server.url}/api/v1/renew", json=body, ssl=context) as answer,
    ):
        return answer.status, await answer.json()


async def test_renew_keeps_the_name(server: RunningServer, tmp_path: Path, name: str) -> None:
    before = await _joined(server, tmp_path, name)
    after = await renew(before, settings=JoinSettings())
    assert after.name == name
    assert after.certificate.serial_number != before.certificate.serial_number
    assert after.key_path != before.key_path
    assert not before.key_path.exists()  # the old pair is gone, identity.json points at the new
    assert Identity.load(tmp_path / name).cert_path == after.cert_path
    shown = await server.cli("nodes", "get", name, "-o", "json")
    assert shown.rc == 0, shown.stderr
    assert json.loads(shown.stdout)["certSerial"] == format(after.certificate.serial_number, "x")
    # The renewed certificate authenticates in turn.
    status, body = await _post_renew(server, after, {"csr": _csr(name)})
    assert status == 200, body


async def test_csr_subject_is_ignored(server: RunningServer, tmp_path: Path, name: str) -> None:
    identity = await _joined(server, tmp_path, name)
    status, body = await _post_renew(server, identity, {"csr": _csr(f"{name}-b")})
    assert status == 200, body
    issued = x509.load_pem_x509_certificate(body["certificate"].encode())
    subject = {a.oid: a.value for a in issued.subject}
    assert subject == {NameOID.COMMON_NAME: name, NameOID.ORGANIZATION_NAME: "edgefleet:node"}


async def test_node_a_cannot_renew_as_node_b(
    server: RunningServer, tmp_path: Path, name: str
) -> None:
    identity_a = await _joined(server, tmp_path, name)
    await _joined(server, tmp_path, f"{name}-b")
    status, body = await _post_renew(
        server, identity_a, {"csr": _csr(f"{name}-b"), "name": f"{name}-b"}
    )
    assert status == 403
    assert body["reason"] == "name_mismatch"


async def test_renew_needs_a_client_certificate(server: RunningServer, name: str) -> None:
    status, body = await _post_renew(server, None, {"csr": _csr(name)})
    assert status == 401
    assert body["reason"] == "client_certificate_required"


async def test_revoked_node_is_cut_off(server: RunningServer, tmp_path: Path, name: str) -> None:
    identity = await _joined(server, tmp_path, name)
    revoked = await server.cli("nodes", "revoke", name)
    assert revoked.rc == 0, revoked.stderr
    nodes = await server.nodes()
    assert nodes[name]["state"] == "revoked"
    status, body = await _post_renew(server, identity, {"csr": _csr(name)})
    assert status == 403
    assert body["reason"] == "certificate_not_valid"
    with pytest.raises(TrustError, match="revoked"):
        await renew(identity, settings=JoinSettings())
