"""Peer identity: only our certificates, for approved nodes, with a serial the store issued."""

from __future__ import annotations

import ssl
import time
from typing import TYPE_CHECKING

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tunnel_server.identity.pki import CertificateAuthority
from tunnel_server.identity.tls import identity_from_certificate, is_current, server_ssl_context
from tunnel_server.settings import PkiSettings
from tunnel_server.store import NodeRecord, SqliteStore, TokenRecord

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


@pytest.fixture
def authority(tmp_path: Path) -> CertificateAuthority:
    authority = CertificateAuthority.load_or_create(tmp_path / "ca", settings=PkiSettings())
    authority.ensure_serving_certificate(public_name="localhost")
    return authority


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    store = SqliteStore.open(tmp_path)
    yield store
    store.close()


def _csr() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")])
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM)


def _joined(authority: CertificateAuthority, store: SqliteStore, name: str) -> x509.Certificate:
    issued = authority.sign_csr(_csr(), subject_name=name, kind="node")
    now = time.time()
    store.add_token(
        TokenRecord(
            id=name[:6],
            secret_hash="0",
            kind="node",
            name=name,
            created_at=now,
            expires_at=now + 60,
            require_approval=False,
        )
    )
    node = NodeRecord(name=name, kind="node", state="approved", created_at=now)
    store.redeem_token(name[:6], now=now, node=node, certificate=issued.record())
    return x509.load_pem_x509_certificate(issued.pem.encode())


def test_server_context(authority: CertificateAuthority) -> None:
    context = server_ssl_context(authority)
    assert context.verify_mode == ssl.CERT_OPTIONAL
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert len(context.get_ca_certs()) == 1  # our CA, not the system store


def test_identity_of_an_approved_node(authority: CertificateAuthority, store: SqliteStore) -> None:
    certificate = _joined(authority, store, "edge-1")
    identity = identity_from_certificate(certificate, authority=authority, store=store)
    assert identity is not None
    assert (identity.name, identity.kind) == ("edge-1", "node")
    store.set_node_state("edge-1", "revoked")
    assert not is_current(store, identity)
    assert identity_from_certificate(certificate, authority=authority, store=store) is None


def test_unknown_serial_is_refused(authority: CertificateAuthority, store: SqliteStore) -> None:
    _joined(authority, store, "edge-1")
    stray = authority.sign_csr(_csr(), subject_name="edge-1", kind="node")  # never recorded
    certificate = x509.load_pem_x509_certificate(stray.pem.encode())
    assert identity_from_certificate(certificate, authority=authority, store=store) is None


def test_other_ca_is_refused(
    authority: CertificateAuthority, store: SqliteStore, tmp_path: Path
) -> None:
    other = CertificateAuthority.load_or_create(tmp_path / "other", settings=PkiSettings())
    certificate = _joined(other, store, "edge-1")
    assert identity_from_certificate(certificate, authority=authority, store=store) is None


def test_expired_identity_is_not_current(
    authority: CertificateAuthority, store: SqliteStore
) -> None:
    certificate = _joined(authority, store, "edge-1")
    identity = identity_from_certificate(certificate, authority=authority, store=store)
    assert identity is not None
    assert not is_current(store, identity, now=identity.not_after.timestamp() + 1)
