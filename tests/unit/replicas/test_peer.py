"""Replica certificates and the opener's choices, without a Kubernetes API.

A replica certificate proves a replica and nothing else: never an agent (``tls``), and an
agent's certificate never a replica (``replica_of``), even one whose CN looks like one.
The opener opens locally, refuses a node nobody holds or that our own stale record names,
and says which replica could not be reached when the dial fails.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import prometheus_client
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.harness.procs import free_port
from tunnel_protocol import ErrorCode
from tunnel_server.app_keys import SESSIONS_KEY
from tunnel_server.identity.pki import CertificateAuthority, serial_hex
from tunnel_server.identity.tls import identity_from_certificate
from tunnel_server.replicas import opener
from tunnel_server.replicas.keys import HOLDER_KEY, PEERS_KEY
from tunnel_server.replicas.peer_client import PeerLinks, PeerSettings, PeerUnreachableError
from tunnel_server.settings import PkiSettings
from tunnel_server.store import (
    CertificateRecord,
    NodeKind,
    NodeRecord,
    SqliteStore,
    TokenRecord,
)
from tunnel_server.tunnel.sessions import SessionRegistry

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path


@pytest.fixture
def authority(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.load_or_create(tmp_path / "ca", settings=PkiSettings())


def _csr() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")])
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM)


def test_a_replica_certificate_names_its_replica(authority: CertificateAuthority) -> None:
    issued = authority.issue_replica_certificate("replica-a", lifetime=3600)
    certificate = x509.load_pem_x509_certificate(issued.cert_pem)
    assert authority.replica_of(certificate) == "replica-a"
    subject = certificate.subject.rfc4514_string()
    assert subject == "CN=replica:replica-a,O=edgefleet:replica"
    assert 3500 <= (issued.not_after - issued.not_before).total_seconds() <= 3700
    key = serialization.load_pem_private_key(issued.key_pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    assert key.public_key().public_bytes(der, spki) == certificate.public_key().public_bytes(
        der, spki
    )


def test_an_agent_certificate_is_never_a_replica(authority: CertificateAuthority) -> None:
    # A node whose name looks like a replica's CN is still a node: O decides, not the CN.
    kinds: tuple[NodeKind, ...] = ("node", "cluster")
    for kind in kinds:
        issued = authority.sign_csr(_csr(), subject_name="replica:replica-a", kind=kind)
        certificate = x509.load_pem_x509_certificate(issued.pem.encode())
        assert authority.replica_of(certificate) is None


def test_another_cas_replica_certificate_is_refused(
    authority: CertificateAuthority, tmp_path: Path
) -> None:
    other = CertificateAuthority.load_or_create(tmp_path / "other", settings=PkiSettings())
    issued = other.issue_replica_certificate("replica-a", lifetime=3600)
    assert authority.replica_of(x509.load_pem_x509_certificate(issued.cert_pem)) is None


def test_a_replica_certificate_is_no_agent_identity(
    authority: CertificateAuthority, tmp_path: Path
) -> None:
    store = SqliteStore.open(tmp_path)
    try:
        issued = authority.issue_replica_certificate("replica-a", lifetime=3600)
        certificate = x509.load_pem_x509_certificate(issued.cert_pem)
        # Even with an approved node of the CN's very name holding that very serial: the O
        # (edgefleet:replica, no node kind) alone refuses it.
        name, now = "replica:replica-a", time.time()
        store.add_token(
            TokenRecord(
                id="tok001",
                secret_hash="0",
                kind="node",
                name=name,
                created_at=now,
                expires_at=now + 60,
                require_approval=False,
            )
        )
        record = CertificateRecord(
            serial=serial_hex(certificate), name=name, not_after=now + 3600, issued_at=now
        )
        node = NodeRecord(name=name, kind="node", state="approved", created_at=now)
        store.redeem_token("tok001", now=now, node=node, certificate=record)
        assert store.get_certificate(serial_hex(certificate)) is not None
        assert identity_from_certificate(certificate, authority=authority, store=store) is None
    finally:
        store.close()


@pytest.fixture
async def app(authority: CertificateAuthority) -> AsyncIterator[web.Application]:
    app = web.Application()
    app[SESSIONS_KEY] = SessionRegistry()
    links = PeerLinks(
        name="replica-a",
        issue=lambda: authority.issue_replica_certificate("replica-a", lifetime=3600),
        trusted_pem=authority.trusted_pem,
        settings=PeerSettings(),
        registry=prometheus_client.CollectorRegistry(),
    )
    app[PEERS_KEY] = links
    task = asyncio.create_task(links.run(), name="test.peer-links")  # noqa: TID251 - a test's own
    await asyncio.sleep(0)  # the links' group is up
    try:
        yield app
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_nobody_holds_the_node(app: web.Application) -> None:
    with pytest.raises(opener.AgentNotConnectedError) as refused:
        await opener.open_agent_stream(app, "edge-1", "web", timeout=5)
    assert refused.value.code is ErrorCode.REFUSED_STREAM
    assert not opener.connected(app, "edge-1")


async def test_our_own_stale_record_is_not_dialled(app: web.Application) -> None:
    app[HOLDER_KEY] = lambda _node: ("replica-a", "127.0.0.1:1")
    assert opener.connected(app, "edge-1")  # the record says so...
    with pytest.raises(opener.AgentNotConnectedError):  # ...but we never dial ourselves
        await opener.open_agent_stream(app, "edge-1", "web", timeout=5)


async def test_an_unreachable_holder_is_named_at_once(app: web.Application) -> None:
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    app[HOLDER_KEY] = lambda _node: ("replica-b", address)
    began = time.monotonic()
    with pytest.raises(PeerUnreachableError) as failed:
        await opener.open_agent_stream(app, "edge-1", "web", timeout=10)
    assert time.monotonic() - began < 5  # a refused connect, not the timeout
    assert f"replica replica-b (holding the agent) is unreachable at {address}" in str(failed.value)
    metrics = app[PEERS_KEY].metrics.streams
    assert metrics.labels("out", "unreachable")._value.get() == 1
