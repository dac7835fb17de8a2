"""The agent's identity files: key stays 0600, pairs switch atomically, renewal timing."""

from __future__ import annotations

import stat
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edge_agent.identity import (
    Identity,
    NotJoinedError,
    generate_key,
    make_csr,
    pinned_ssl_context,
    save_identity,
    spki_hash,
    validate_ca_hash,
    validate_name,
)

if TYPE_CHECKING:
    from pathlib import Path

NOW = datetime(2030, 1, 1, tzinfo=UTC)


def _ca() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, certificate


def _issue(csr_pem: bytes, *, days: int = 30) -> tuple[bytes, bytes]:
    ca_key, ca = _ca()
    csr = x509.load_pem_x509_csr(csr_pem)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(csr.subject)
        .issuer_name(ca.subject)
        .public_key(csr.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW)
        .not_valid_after(NOW + timedelta(days=days))
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    return certificate.public_bytes(pem), ca.public_bytes(pem)


def _save(data_dir: Path, key: ec.EllipticCurvePrivateKey) -> Identity:
    certificate_pem, ca_pem = _issue(make_csr(key, "edge-1"))
    ca_hash = spki_hash(x509.load_pem_x509_certificate(ca_pem))
    return save_identity(
        data_dir,
        server="https://cloud:8443",
        kind="node",
        ca_hash=ca_hash,
        key=key,
        certificate_pem=certificate_pem,
        ca_pem=ca_pem,
    )


def test_csr_carries_our_key_and_name() -> None:
    key = generate_key()
    csr = x509.load_pem_x509_csr(make_csr(key, "edge-1"))
    assert csr.is_signature_valid
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "edge-1"
    assert isinstance(key.curve, ec.SECP256R1)


def test_save_and_load(tmp_path: Path) -> None:
    identity = _save(tmp_path / "agent", generate_key())
    loaded = Identity.load(tmp_path / "agent")
    assert loaded == identity
    assert (loaded.name, loaded.kind, loaded.server) == ("edge-1", "node", "https://cloud:8443")
    assert stat.S_IMODE(loaded.key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "agent").stat().st_mode) == 0o700
    assert not [p for p in (tmp_path / "agent").iterdir() if p.name.startswith(".")]


def test_new_pair_replaces_the_old(tmp_path: Path) -> None:
    first = _save(tmp_path, generate_key())
    second = _save(tmp_path, generate_key())
    assert not first.key_path.exists()
    assert not first.cert_path.exists()
    assert Identity.load(tmp_path).key_path == second.key_path
    assert len(list(tmp_path.glob("node-*"))) == 2


def test_not_joined(tmp_path: Path) -> None:
    with pytest.raises(NotJoinedError, match="edge-agent join"):
        Identity.load(tmp_path)


def test_expiry_and_renewal_time(tmp_path: Path) -> None:
    identity = _save(tmp_path, generate_key())  # valid NOW .. NOW + 30 days
    assert identity.expires_in(now=NOW) == timedelta(days=30)
    assert not identity.needs_renewal(now=NOW + timedelta(days=19))
    assert identity.needs_renewal(now=NOW + timedelta(days=20))
    assert identity.needs_renewal(fraction=0.5, now=NOW + timedelta(days=15))


def test_pinned_context_trusts_only_the_ca(tmp_path: Path) -> None:
    identity = _save(tmp_path, generate_key())
    context = pinned_ssl_context(ca_pem=identity.ca_pem())
    assert len(context.get_ca_certs()) == 1
    assert context.check_hostname
    client = identity.client_ssl_context()  # loads the key pair: they match
    assert len(client.get_ca_certs()) == 1


def test_validation() -> None:
    assert validate_ca_hash("SHA256:" + "A" * 64) == "sha256:" + "a" * 64
    with pytest.raises(ValueError, match="sha256:<64 hex digits>"):
        validate_ca_hash("sha256:abc")
    assert validate_name("edge-1") == "edge-1"
    with pytest.raises(ValueError, match="--name"):
        validate_name("Not_Valid")
