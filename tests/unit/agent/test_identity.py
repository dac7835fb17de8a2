"""The agent's identity files: key stays 0600, pairs switch atomically, renewal timing."""

from __future__ import annotations

import hashlib
import json
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
    Validity,
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


def _save(data_dir: Path, key: ec.EllipticCurvePrivateKey, *, days: int = 30) -> Identity:
    certificate_pem, ca_pem = _issue(make_csr(key, "edge-1"), days=days)
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


def _meta(data_dir: Path) -> dict[str, object]:
    meta: dict[str, object] = json.loads((data_dir / "identity.json").read_text())
    return meta


def _forget_validity(data_dir: Path) -> None:
    """identity.json as a release before the recorded validity wrote it."""
    meta = _meta(data_dir)
    del meta["certificate"]
    (data_dir / "identity.json").write_text(json.dumps(meta))


def test_the_validity_is_recorded_for_the_bytes_of_the_certificate_file(tmp_path: Path) -> None:
    identity = _save(tmp_path, generate_key())
    parsed = x509.load_pem_x509_certificate(identity.cert_path.read_bytes())
    assert identity.recorded_validity == Validity.of(parsed)
    assert identity.not_before == NOW
    assert identity.not_after == NOW + timedelta(days=30)
    assert "certificate" not in identity.__dict__  # read from the record, not parsed
    record = _meta(tmp_path)["certificate"]
    assert isinstance(record, dict)
    assert record["not_after"] == "2030-01-31T00:00:00+00:00"


def test_a_changed_certificate_file_is_parsed_not_read_from_the_record(tmp_path: Path) -> None:
    identity = _save(tmp_path, generate_key())
    other, _ = _issue(make_csr(generate_key(), "edge-1"), days=90)
    identity.cert_path.write_bytes(other)  # replaced by hand: the record is not its
    assert Identity.load(tmp_path).expires_in(now=NOW) == timedelta(days=90)
    assert Identity.load(tmp_path).recorded_validity is not None  # recorded now
    identity.cert_path.write_bytes(other[:200])  # damaged: refused, as without a record
    with pytest.raises(ValueError, match="PEM"):
        _ = Identity.load(tmp_path).not_after


_DAY = {"not_before": "2030-01-01T00:00:00+00:00", "not_after": "2030-01-02T00:00:00+00:00"}


@pytest.mark.parametrize(
    ("record", "hashed"),
    [
        ("2030-01-31", False),
        (_DAY, False),  # whose certificate?
        ({**_DAY, "sha256": "0" * 64}, False),  # another one's
        ({"not_before": _DAY["not_before"]}, True),
        ({"not_before": "2030-01-01T00:00:00", "not_after": "2030-01-02T00:00:00"}, True),
        ({"not_before": 1, "not_after": 2}, True),
        ({"not_before": "yesterday", "not_after": "tomorrow"}, True),
    ],
)
def test_a_record_that_is_not_usable_is_ignored(
    tmp_path: Path, record: object, *, hashed: bool
) -> None:
    identity = _save(tmp_path, generate_key())
    meta = _meta(tmp_path)
    if hashed and isinstance(record, dict):
        record = {**record, "sha256": hashlib.sha256(identity.certificate_pem).hexdigest()}
    meta["certificate"] = record
    (tmp_path / "identity.json").write_text(json.dumps(meta))
    loaded = Identity.load(tmp_path)
    assert loaded.recorded_validity is None
    assert loaded.not_after == NOW + timedelta(days=30)  # parsed
    assert Identity.load(tmp_path) == identity  # and recorded again


def test_an_identity_saved_without_a_record_gets_one_at_first_use(tmp_path: Path) -> None:
    identity = _save(tmp_path, generate_key())
    _forget_validity(tmp_path)
    legacy = Identity.load(tmp_path)
    assert legacy.recorded_validity is None
    assert legacy.needs_renewal(now=NOW + timedelta(days=20))
    assert Identity.load(tmp_path) == identity


def test_the_record_never_replaces_a_newer_identity(tmp_path: Path) -> None:
    """A renewal or re-join between reading an identity and its first use wins."""
    _save(tmp_path, generate_key())
    _forget_validity(tmp_path)
    old = Identity.load(tmp_path)
    renewed = _save(tmp_path, generate_key(), days=60)
    assert old.not_after == NOW + timedelta(days=30)  # parsed from what load read
    assert Identity.load(tmp_path) == renewed
    assert renewed.not_after == NOW + timedelta(days=60)


def test_a_record_that_cannot_be_written_leaves_the_agent_running(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _save(tmp_path, generate_key())
    _forget_validity(tmp_path)
    legacy = Identity.load(tmp_path)
    meta = (tmp_path / "identity.json").read_bytes()
    (tmp_path / "identity.json").unlink()
    (tmp_path / "identity.json").mkdir()  # the fault: identity.json cannot be read back
    assert legacy.not_after == NOW + timedelta(days=30)
    assert "could not record the certificate's validity" in caplog.text
    (tmp_path / "identity.json").rmdir()
    (tmp_path / "identity.json").write_bytes(meta)
    assert Identity.load(tmp_path).recorded_validity is None
