"""The agent's side of a CA rotation: which announcements it stores, and which it refuses."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from edge_agent.ca_rotation import (
    MAX_ANNOUNCEMENT_BYTES,
    AnnouncementError,
    Outcome,
    apply_announcement,
)
from edge_agent.identity import NEXT_CA_FILE
from tunnel_server.identity.pki import CertificateAuthority, cross_sign, new_ca, spki_hash
from tunnel_server.settings import PkiSettings

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path


def _pem(certificate: x509.Certificate) -> str:
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


@pytest.fixture
def authority(tmp_path: Path) -> CertificateAuthority:
    authority = CertificateAuthority.load_or_create(tmp_path / "server", settings=PkiSettings())
    authority.rotate()
    return authority


@pytest.fixture
def agent_dir(tmp_path: Path) -> Path:
    (tmp_path / "agent").mkdir()
    return tmp_path / "agent"


def _apply(
    raw: bytes | Mapping[str, str | None], pinned: x509.Certificate, agent_dir: Path
) -> Outcome:
    body = raw if isinstance(raw, bytes) else json.dumps(raw).encode()
    return apply_announcement(body, pinned=pinned, data_dir=agent_dir)[0]


def test_the_endorsed_next_ca_is_stored_once(
    authority: CertificateAuthority, agent_dir: Path
) -> None:
    announcement = authority.announcement()
    assert _apply(announcement, authority.certificate, agent_dir) is Outcome.STORED
    stored = x509.load_pem_x509_certificate((agent_dir / NEXT_CA_FILE).read_bytes())
    assert authority.next_certificate is not None
    assert spki_hash(stored) == spki_hash(authority.next_certificate)
    assert _apply(announcement, authority.certificate, agent_dir) is Outcome.UNCHANGED


def test_a_promoted_next_ca_asks_for_a_renewal(
    authority: CertificateAuthority, agent_dir: Path
) -> None:
    pinned = authority.certificate
    assert _apply(authority.announcement(), pinned, agent_dir) is Outcome.STORED
    authority.promote()
    assert _apply(authority.announcement(), pinned, agent_dir) is Outcome.PROMOTED


def test_a_next_ca_not_signed_by_the_pinned_one_is_refused(
    authority: CertificateAuthority, agent_dir: Path
) -> None:
    """What someone who can open streams to the node (not holding the CA key) could send."""
    forged_key, forged = new_ca(PkiSettings())
    other_key, other = new_ca(PkiSettings())
    cross = cross_sign(forged, forged_key, issuer=other, issuer_key=other_key)
    announcement = {
        "current": _pem(authority.certificate),
        "next": _pem(forged),
        "next_cross": _pem(cross),
    }
    with pytest.raises(AnnouncementError, match="not endorsed"):
        _apply(announcement, authority.certificate, agent_dir)
    without_cross = {**announcement, "next_cross": None}
    with pytest.raises(AnnouncementError, match="next_cross"):
        _apply(without_cross, authority.certificate, agent_dir)
    # A genuine cross-signature of another key does not vouch for this one.
    assert authority.next_cross is not None
    swapped = {**announcement, "next_cross": _pem(authority.next_cross)}
    with pytest.raises(AnnouncementError, match="another key"):
        _apply(swapped, authority.certificate, agent_dir)
    assert not (agent_dir / NEXT_CA_FILE).exists()


@pytest.mark.parametrize(
    "raw",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"[]",
        b'{"current": 1}',
        b'{"current": "-----BEGIN CERTIFICATE-----\\nAAAA\\n-----END CERTIFICATE-----\\n"}',
        json.dumps({"current": "x" * (17 * 1024)}).encode(),
        b"{" + b" " * MAX_ANNOUNCEMENT_BYTES + b"}",
    ],
    ids=["http", "list", "number", "bad-pem", "long-field", "oversized"],
)
def test_malformed_announcements_are_refused(
    raw: bytes, authority: CertificateAuthority, agent_dir: Path
) -> None:
    with pytest.raises(AnnouncementError):
        _apply(raw, authority.certificate, agent_dir)
    assert list(agent_dir.iterdir()) == []


def test_an_unknown_current_ca_is_refused(authority: CertificateAuthority, agent_dir: Path) -> None:
    _key, stranger = new_ca(PkiSettings())
    with pytest.raises(AnnouncementError, match="join again"):
        _apply({"current": _pem(stranger)}, authority.certificate, agent_dir)
