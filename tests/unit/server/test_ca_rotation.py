"""CA rotation on the server's data dir: rotate, promote, retire, and who is trusted when."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tunnel_server.identity.pki import (
    CA_CERT,
    CA_KEY,
    CA_NEXT_CERT,
    CA_NEXT_KEY,
    CertificateAuthority,
    RotationError,
    spki_hash,
)
from tunnel_server.identity.rotation import nodes_on_previous_ca
from tunnel_server.settings import PkiSettings
from tunnel_server.store import NodeRecord, SqliteStore, TokenRecord

if TYPE_CHECKING:
    from pathlib import Path


def _csr() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "x")])
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM)


def _token(name: str) -> TokenRecord:
    now = time.time()
    return TokenRecord(
        id=name,
        secret_hash="0" * 64,
        kind="node",
        name=name,
        created_at=now,
        expires_at=now + 60,
        require_approval=False,
    )


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    CertificateAuthority.load_or_create(tmp_path / "data", settings=PkiSettings())
    return tmp_path / "data"


def test_rotate_adds_a_next_ca_the_current_one_endorses(data_dir: Path) -> None:
    authority = CertificateAuthority.load(data_dir)
    before = authority.ca_hash()
    next_ca = authority.rotate()
    loaded = CertificateAuthority.load(data_dir)
    assert loaded.ca_hash() == before  # still signing with the current CA
    assert loaded.next_certificate is not None
    assert spki_hash(loaded.next_certificate) == spki_hash(next_ca) != before
    assert loaded.next_cross is not None
    loaded.next_cross.verify_directly_issued_by(loaded.certificate)
    assert loaded.next_cross.public_key() == next_ca.public_key()
    assert [spki_hash(c) for c in loaded.trusted()] == [before, spki_hash(next_ca)]
    assert (data_dir / CA_NEXT_KEY).stat().st_mode & 0o777 == 0o600
    with pytest.raises(RotationError, match="next CA exists already"):
        loaded.rotate()


def test_promote_swaps_and_keeps_the_old_ca_trusted_until_retired(data_dir: Path) -> None:
    authority = CertificateAuthority.load(data_dir)
    old_client = authority.sign_csr(_csr(), subject_name="edge-1", kind="node")
    with pytest.raises(RotationError, match="no next CA"):
        authority.promote()
    next_hash = spki_hash(authority.rotate())
    old_hash = authority.ca_hash()
    authority.promote(now=1000.0)
    loaded = CertificateAuthority.load(data_dir)
    assert loaded.ca_hash() == next_hash
    assert loaded.next_certificate is None
    assert not (data_dir / CA_NEXT_CERT).exists()
    assert loaded.previous_certificate is not None
    assert spki_hash(loaded.previous_certificate) == old_hash
    assert loaded.promoted_at == 1000.0
    old_cert = x509.load_pem_x509_certificate(old_client.pem.encode())
    assert loaded.issuer_of(old_cert) == loaded.previous_certificate
    new_client = loaded.sign_csr(_csr(), subject_name="edge-1", kind="node")
    new_cert = x509.load_pem_x509_certificate(new_client.pem.encode())
    assert loaded.issuer_of(new_cert) == loaded.certificate
    with pytest.raises(RotationError, match="retire it"):
        loaded.rotate()
    loaded.retire()
    again = CertificateAuthority.load(data_dir)
    assert again.issuer_of(old_cert) is None
    assert again.issuer_of(new_cert) == again.certificate
    with pytest.raises(RotationError, match="no previous CA"):
        again.retire()


def test_a_promote_cut_short_after_the_key_is_finished_on_load(data_dir: Path) -> None:
    authority = CertificateAuthority.load(data_dir)
    next_hash = spki_hash(authority.rotate())
    # The crash: ca.key is the next CA's already, ca.crt still the old one.
    (data_dir / CA_KEY).write_bytes((data_dir / CA_NEXT_KEY).read_bytes())
    loaded = CertificateAuthority.load(data_dir)
    assert loaded.ca_hash() == next_hash
    assert spki_hash(x509.load_pem_x509_certificate((data_dir / CA_CERT).read_bytes())) == next_hash
    assert not (data_dir / CA_NEXT_KEY).exists()


def test_retire_counts_nodes_whose_certificate_predates_the_promote(data_dir: Path) -> None:
    authority = CertificateAuthority.load(data_dir)
    store = SqliteStore.open(data_dir)
    try:
        for name in ("edge-1", "edge-2"):
            issued = authority.sign_csr(_csr(), subject_name=name, kind="node")
            node = NodeRecord(name=name, kind="node", state="approved", created_at=0.0)
            store.add_token(_token(name))
            store.redeem_token(name, now=time.time(), node=node, certificate=issued.record())
        authority.rotate()
        authority.promote()
        assert authority.promoted_at is not None
        now = authority.promoted_at + 1
        assert nodes_on_previous_ca(store, promoted_at=authority.promoted_at, now=now) == [
            "edge-1",
            "edge-2",
        ]
        renewed = authority.sign_csr(_csr(), subject_name="edge-2", kind="node")
        store.record_certificate(renewed.record())
        assert nodes_on_previous_ca(store, promoted_at=authority.promoted_at, now=now) == ["edge-1"]
    finally:
        store.close()
