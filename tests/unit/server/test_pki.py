"""The CA: stable hash, safe files, serving certificate refresh, and CSR signing rules."""

from __future__ import annotations

import base64
import hashlib
import stat
from typing import TYPE_CHECKING

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tunnel_server.identity.pki import CertificateAuthority, CSRError, MissingCAError
from tunnel_server.settings import PkiSettings

if TYPE_CHECKING:
    from pathlib import Path

    from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes


@pytest.fixture
def authority(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.load_or_create(tmp_path / "data", settings=PkiSettings())


def _csr(
    key: CertificateIssuerPrivateKeyTypes | None = None,
    *,
    common_name: str = "someone-else",
    organization: str = "system:masters",
) -> bytes:
    key = key or ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
                ]
            )
        )
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("evil.example")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    )
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm).public_bytes(serialization.Encoding.PEM)


def test_hash_is_sha256_of_spki_and_stable(authority: CertificateAuthority) -> None:
    spki = authority.certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert authority.ca_hash() == "sha256:" + hashlib.sha256(spki).hexdigest()
    again = CertificateAuthority.load_or_create(authority.data_dir, settings=PkiSettings())
    assert again.ca_hash() == authority.ca_hash()
    assert CertificateAuthority.load(authority.data_dir).ca_hash() == authority.ca_hash()


def test_files_and_modes(authority: CertificateAuthority) -> None:
    authority.ensure_serving_certificate(public_name="tunnel.example.com")
    data = authority.data_dir
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert stat.S_IMODE((data / "ca.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((data / "server.key").stat().st_mode) == 0o600
    assert not [p for p in data.iterdir() if p.name.startswith(".")]  # no temp file left
    constraints = authority.certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.value.ca


def test_missing_ca_explains(tmp_path: Path) -> None:
    with pytest.raises(MissingCAError, match="has no CA: run `tunnel-server run"):
        CertificateAuthority.load(tmp_path)


def test_serving_certificate_names_and_refresh(authority: CertificateAuthority) -> None:
    assert authority.ensure_serving_certificate(public_name="tunnel.example.com")
    assert not authority.ensure_serving_certificate(public_name="tunnel.example.com")
    certificate = x509.load_pem_x509_certificate(authority.serving_cert_path.read_bytes())
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"tunnel.example.com", "localhost"}
    assert {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1"}
    certificate.verify_directly_issued_by(authority.certificate)
    # A new public name re-issues it.
    assert authority.ensure_serving_certificate(public_name="10.0.0.5")


def test_serving_certificate_reissued_near_expiry(tmp_path: Path) -> None:
    settings = PkiSettings(serving_lifetime=20 * 86400, serving_renew_before=30 * 86400)
    authority = CertificateAuthority.load_or_create(tmp_path, settings=settings)
    assert authority.ensure_serving_certificate(public_name="localhost")
    assert authority.ensure_serving_certificate(public_name="localhost")  # < 30 days left


def test_csr_subject_and_extensions_are_ignored(authority: CertificateAuthority) -> None:
    issued = authority.sign_csr(_csr(), subject_name="edge-1", kind="cluster")
    certificate = x509.load_pem_x509_certificate(issued.pem.encode())
    assert {a.oid: a.value for a in certificate.subject} == {
        NameOID.COMMON_NAME: "edge-1",
        NameOID.ORGANIZATION_NAME: "edgefleet:cluster",
    }
    extensions = {e.oid for e in certificate.extensions}
    assert x509.SubjectAlternativeName.oid not in extensions
    assert not certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    eku = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    certificate.verify_directly_issued_by(authority.certificate)
    assert issued.serial == format(certificate.serial_number, "x")


def test_client_lifetime(authority: CertificateAuthority) -> None:
    issued = authority.sign_csr(_csr(), subject_name="edge-1", kind="node")
    lifetime = issued.not_after - issued.not_before
    expected = PkiSettings().client_lifetime + PkiSettings().clock_skew
    assert abs(lifetime.total_seconds() - expected) < 5
    short = authority.sign_csr(_csr(), subject_name="edge-1", kind="node", lifetime=60)
    assert (short.not_after - short.not_before).total_seconds() < 60 + 301


@pytest.mark.parametrize(
    ("csr", "message"),
    [
        (b"garbage", "not a PEM certificate signing request"),
        (b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n", "PEM"),
        (b"x" * 20_000, "more than the"),
    ],
)
def test_malformed_csr_rejected(authority: CertificateAuthority, csr: bytes, message: str) -> None:
    with pytest.raises(CSRError, match=message):
        authority.sign_csr(csr, subject_name="edge-1", kind="node")


def test_weak_or_odd_keys_rejected(authority: CertificateAuthority) -> None:
    weak_rsa = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - the weak key this test must refuse
    with pytest.raises(CSRError, match="RSA key of 1024 bits"):
        authority.sign_csr(_csr(weak_rsa), subject_name="edge-1", kind="node")
    with pytest.raises(CSRError, match="secp521r1 not accepted"):
        authority.sign_csr(
            _csr(ec.generate_private_key(ec.SECP521R1())), subject_name="e", kind="node"
        )
    with pytest.raises(CSRError, match="not accepted"):
        authority.sign_csr(
            _csr(ed25519.Ed25519PrivateKey.generate()), subject_name="e", kind="node"
        )
    p384 = ec.generate_private_key(ec.SECP384R1())
    assert authority.sign_csr(_csr(p384), subject_name="edge-1", kind="node").serial


def test_tampered_csr_rejected(authority: CertificateAuthority) -> None:
    """A CSR whose public key was swapped no longer matches its signature."""
    good = x509.load_pem_x509_csr(_csr())
    der = bytearray(good.public_bytes(serialization.Encoding.DER))
    der[-10] ^= 0x01  # flip a bit inside the signature
    body = base64.encodebytes(bytes(der)).decode()
    pem = f"-----BEGIN CERTIFICATE REQUEST-----\n{body}-----END CERTIFICATE REQUEST-----\n"
    with pytest.raises(CSRError):
        authority.sign_csr(pem.encode(), subject_name="edge-1", kind="node")
