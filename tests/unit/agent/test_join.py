"""Join helpers that need no server: URL rules, CA pinning, and error mapping."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edge_agent.identity import spki_hash
from edge_agent.join import (
    JoinRejectedError,
    NameConflictError,
    TokenRejectedError,
    TrustError,
    UsageError,
    _raise_for,
    normalize_server,
    verify_ca,
)


def _certificate(*, ca: bool) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "c")])
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )


def test_normalize_server() -> None:
    assert normalize_server("https://cloud:8443/") == "https://cloud:8443"
    assert normalize_server("cloud.example.com") == "https://cloud.example.com"
    with pytest.raises(UsageError, match="https://"):
        normalize_server("http://cloud:8443")
    with pytest.raises(UsageError, match="no path"):
        normalize_server("https://cloud:8443/api")


@pytest.mark.parametrize(
    "url", ["https://cloud:99999", "https://cloud:abc", "https://[::1", "https://user@cloud:8443"]
)
def test_normalize_server_refuses_what_cannot_be_dialled(url: str) -> None:
    """A bad port or IPv6 literal was a ValueError traceback or 'unreachable' (exit 6)."""
    with pytest.raises(UsageError, match="must be an https:// URL"):
        normalize_server(url)


def test_verify_ca_pins_by_hash() -> None:
    certificate = _certificate(ca=True)
    pem = certificate.public_bytes(serialization.Encoding.PEM)
    assert verify_ca(pem, spki_hash(certificate)) == certificate
    with pytest.raises(TrustError, match="does not match --ca-hash"):
        verify_ca(pem, "sha256:" + "0" * 64)
    with pytest.raises(TrustError, match="not a PEM"):
        verify_ca(b"<html>", spki_hash(certificate))


def test_verify_ca_needs_a_ca_certificate() -> None:
    leaf = _certificate(ca=False)
    with pytest.raises(TrustError, match="not a CA"):
        verify_ca(leaf.public_bytes(serialization.Encoding.PEM), spki_hash(leaf))


@pytest.mark.parametrize(
    ("status", "code", "error"),
    [
        (401, "invalid_token", TokenRejectedError),
        (401, "token_expired", TokenRejectedError),
        (403, "token_used", TokenRejectedError),
        (409, "name_taken", NameConflictError),
        (409, "name_mismatch", NameConflictError),
        (403, "join_rejected", JoinRejectedError),
        (403, "certificate_not_valid", TrustError),
    ],
)
def test_errors_map_to_exit_codes(status: int, code: str, error: type[Exception]) -> None:
    with pytest.raises(error, match="what to do"):
        _raise_for(status, {"reason": code, "detail": "what to do"})
