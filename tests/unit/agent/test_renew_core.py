"""The one renewal path both transports share: fresh key, checked certificate, atomic save.

The transport here is a function that signs with a local CA, as the server's renew endpoint
and tunnel service both do; the HTTPS and tunnel transports run against the real server in
tests/integration/join/test_renew.py and tests/integration/tunnel/test_rotation.py.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edge_agent.identity import Identity, generate_key, make_csr, save_identity, spki_hash
from edge_agent.join import JoinError, renew_certificate
from edge_agent.tunnel_client import renew_over_tunnel

if TYPE_CHECKING:
    from pathlib import Path

    from tunnel_aio import TunnelConnection

NOW = datetime.now(UTC)


class _Authority:
    """A CA that signs CSRs; ``subject`` overrides the name, as a server may (wrongly) do."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - timedelta(days=1))
            .not_valid_after(NOW + timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(self.key, hashes.SHA256())
        )

    def pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def sign(
        self, csr_pem: bytes, *, subject: str | None = None, key: ec.EllipticCurvePrivateKey | None
    ) -> bytes:
        csr = x509.load_pem_x509_csr(csr_pem)
        name = csr.subject
        if subject is not None:
            name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key() if key is not None else csr.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - timedelta(minutes=1))
            .not_valid_after(NOW + timedelta(days=30))
            .sign(self.key, hashes.SHA256())
        )
        return certificate.public_bytes(serialization.Encoding.PEM)


def _joined(data_dir: Path, authority: _Authority) -> Identity:
    key = generate_key()
    return save_identity(
        data_dir,
        server="https://cloud:8443",
        kind="node",
        ca_hash=spki_hash(authority.certificate),
        key=key,
        certificate_pem=authority.sign(make_csr(key, "edge-1"), key=None),
        ca_pem=authority.pem(),
    )


async def test_renewal_saves_a_new_key_and_certificate_under_the_same_name(
    tmp_path: Path,
) -> None:
    authority = _Authority()
    before = _joined(tmp_path, authority)
    old_key = before.key_path.read_bytes()

    async def send_csr(csr: bytes) -> dict[str, Any]:
        return {"status": "issued", "certificate": authority.sign(csr, key=None).decode()}

    after = await renew_certificate(before, send_csr, via="in a test")
    assert after.name == before.name == "edge-1"
    assert (after.server, after.kind, after.ca_hash) == (before.server, before.kind, before.ca_hash)
    assert after.certificate.serial_number != before.certificate.serial_number
    assert after.key_path.read_bytes() != old_key
    assert not before.key_path.exists()  # the old pair is gone
    assert Identity.load(tmp_path) == after


@pytest.mark.parametrize("wrong", ["another key", "another name", "another CA", "no certificate"])
async def test_a_certificate_that_is_not_ours_is_refused_and_nothing_changes(
    tmp_path: Path, wrong: str
) -> None:
    authority = _Authority()
    before = _joined(tmp_path, authority)

    async def send_csr(csr: bytes) -> dict[str, Any]:
        if wrong == "another key":
            pem = authority.sign(csr, key=generate_key())
        elif wrong == "another name":
            pem = authority.sign(csr, subject="edge-2", key=None)
        elif wrong == "another CA":
            pem = _Authority().sign(csr, key=None)
        else:
            pem = b""
        return {"status": "issued", "certificate": pem.decode()}

    with pytest.raises(JoinError, match="certificate"):
        await renew_certificate(before, send_csr, via="in a test")
    assert Identity.load(tmp_path) == before
    assert before.key_path.exists()


async def test_an_unreadable_ca_stops_the_renewal_before_anything_is_sent(
    tmp_path: Path,
) -> None:
    identity = _joined(tmp_path, _Authority())
    identity.ca_path.unlink()
    sent: list[bytes] = []

    async def send_csr(csr: bytes) -> dict[str, Any]:
        sent.append(csr)
        return {}

    with pytest.raises(FileNotFoundError):
        await renew_certificate(identity, send_csr, via="in a test")
    assert sent == []


class _AnsweringStream:
    """A renew stream whose peer answers ``answer`` (a fault: the real server sends objects)."""

    def __init__(self, answer: bytes) -> None:
        self._chunks = [answer, b""]

    async def write(self, data: bytes) -> None:
        del data

    def end(self) -> None:
        pass

    def reset(self, code: object, text: str) -> None:
        del code, text

    async def read(self) -> bytes:
        return self._chunks.pop(0)


class _Connection:
    def __init__(self, answer: bytes) -> None:
        self.answer = answer

    async def open_stream(self, target: str) -> _AnsweringStream:
        assert target == "renew"
        return _AnsweringStream(self.answer)


@pytest.mark.parametrize("answer", [b"[]", b'"issued"', b"7", b"null"])
async def test_a_tunnel_answer_that_is_not_an_object_is_a_join_error(
    tmp_path: Path, answer: bytes
) -> None:
    # Anything but a JoinError (or ValueError) would escape the renewer and end the session.
    before = _joined(tmp_path, _Authority())
    connection = cast("TunnelConnection", _Connection(answer))
    with pytest.raises(JoinError, match="not a JSON object"):
        await renew_over_tunnel(before, connection)
    assert Identity.load(tmp_path) == before
