"""TLS for the server, and who is on the other end of a request.

One listener serves both agents and joiners: client certificates are OPTIONAL at the TLS layer
(``/api/v1/join`` and ``/api/v1/ca`` have none yet) but, when presented, verified against our CA
only. Endpoints that need an identity (``/tunnel``, ``/api/v1/renew``) call ``peer_identity``,
which reads the certificate the TLS layer verified, never a header or a claimed name, and checks
its serial against the store so a revoked or replaced node gets ``None``.
"""

from __future__ import annotations

import logging
import ssl
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from aiohttp import web
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tunnel_server.pki import ORGANIZATIONS, CertificateAuthority, serial_hex
from tunnel_server.store import NodeKind, Store

if TYPE_CHECKING:
    from cryptography.x509 import Certificate

log = logging.getLogger("tunnel_server.tls")

STORE_KEY = web.AppKey("store", Store)
AUTHORITY_KEY = web.AppKey("authority", CertificateAuthority)
_KINDS_BY_ORG: dict[str, NodeKind] = {org: kind for kind, org in ORGANIZATIONS.items()}


@dataclass(frozen=True, kw_only=True)
class PeerIdentity:
    """The verified identity of a client: the routing identity of its session."""

    name: str
    kind: NodeKind
    serial: str
    not_after: datetime


def server_ssl_context(authority: CertificateAuthority) -> ssl.SSLContext:
    """TLS >= 1.2 with our serving certificate; client certificates optional, checked by our CA."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_SINGLE_ECDH_USE
    context.load_cert_chain(authority.serving_cert_path, authority.serving_key_path)
    context.load_verify_locations(cafile=authority.cert_path)  # our CA only, no system store
    context.verify_mode = ssl.CERT_OPTIONAL
    return context


def peer_certificate(request: web.BaseRequest) -> Certificate | None:
    """The client certificate the TLS handshake verified, or None (plain HTTP, none sent)."""
    transport = request.transport
    if transport is None:
        return None
    ssl_object = transport.get_extra_info("ssl_object")
    if not isinstance(ssl_object, ssl.SSLObject):
        return None
    der = ssl_object.getpeercert(binary_form=True)
    return None if der is None else x509.load_der_x509_certificate(der)


def peer_identity(request: web.Request) -> PeerIdentity | None:
    """Verified ``PeerIdentity`` of the request's client certificate, or None.

    None when it has none, the certificate is not ours, or its node is unknown, not approved,
    or the serial is not one the store issued to that node.
    """
    certificate = peer_certificate(request)
    if certificate is None:
        return None
    return identity_from_certificate(
        certificate, authority=request.app[AUTHORITY_KEY], store=request.app[STORE_KEY]
    )


def identity_from_certificate(
    certificate: Certificate,
    *,
    authority: CertificateAuthority,
    store: Store,
    now: float | None = None,
) -> PeerIdentity | None:
    try:
        # Defence in depth: the TLS layer checked the chain; check the issuer again here.
        certificate.verify_directly_issued_by(authority.certificate)
        eku = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
        return None
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    orgs = certificate.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    if ExtendedKeyUsageOID.CLIENT_AUTH not in eku or len(names) != 1 or len(orgs) != 1:
        return None
    kind = _KINDS_BY_ORG.get(str(orgs[0].value))
    if kind is None:
        return None
    identity = PeerIdentity(
        name=str(names[0].value),
        kind=kind,
        serial=serial_hex(certificate),
        not_after=certificate.not_valid_after_utc,
    )
    return identity if is_current(store, identity, now=now) else None


def is_current(store: Store, identity: PeerIdentity, *, now: float | None = None) -> bool:
    """True while the identity may still be used: call again when ``store.revision()`` moves.

    False once the certificate expired, the node was revoked or deleted, or the node re-joined
    with a new key (its old certificates are forgotten then).
    """
    now = time.time() if now is None else now
    if identity.not_after <= datetime.fromtimestamp(now, UTC):
        return False
    record = store.get_certificate(identity.serial)
    if record is None or record.name != identity.name:
        return False
    node = store.get_node(identity.name)
    current = node is not None and node.state == "approved" and node.kind == identity.kind
    if not current:
        log.info(
            "refused certificate",
            extra={"kv": {"name": identity.name, "serial": identity.serial}},
        )
    return current
