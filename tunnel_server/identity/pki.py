"""The server's certificate authority: CA, serving certificate and CSR signing.

Files in the data dir: ``ca.crt``/``ca.key`` (EC P-256, 10 years) and ``server.crt``/``server.key``
(the HTTPS serving certificate, re-issued at start when it is close to expiry or its names
changed). Keys are written 0600, atomically (temp file, fsync, rename, fsync of the folder).

Agents pin the CA by ``ca_hash()``: ``sha256:<hex>`` of the CA certificate's
SubjectPublicKeyInfo DER, the kubeadm ``--discovery-token-ca-cert-hash`` convention.

CA rotation (``tunnel-server ca rotate|promote|retire``, docs/security.md "Rotating the CA")
keeps up to three CAs in the data dir, each a file pair written key first:

``ca-next.crt``/``ca-next.key``  the NEXT CA (``rotate``), plus ``ca-next.cross.crt``: the same
                                 subject and key signed by the current CA, so an agent can check
                                 that the holder of the CA key it pins endorsed the next one
                                 (stealing ``server.key`` is not enough to move a fleet's pin)
``ca-previous.crt``              the CA ``promote`` replaced: still trusted for client
                                 certificates until ``retire`` (no key: it signs nothing more)
``ca-rotation.json``             ``promoted_at`` (Unix s): certificates issued before it come from
                                 the previous CA (``retire`` counts who still holds one)

``promote`` is re-runnable after a crash at any step: ``ca-next.*`` goes last. The server
trusts client certificates from every CA present, signs only with ``ca.key``.

``sign_csr`` trusts nothing in a CSR but its public key (after checking the CSR's signature
proves possession): subject, extensions and SANs are ignored and set by us.

Replica certificates (``issue_replica_certificate``, docs/ha.md "Forwarding"): O
``edgefleet:replica``, CN ``replica:<name>``, client auth, made by each replica for itself
from the shared CA key, never stored; ``replica_of`` is the only check that accepts one, and
it accepts nothing else (the O is no node kind, so ``tls`` never takes one for an agent).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeAlias

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from daemon_support.files import write_atomic
from tunnel_server.settings import PkiSettings
from tunnel_server.store import CertificateRecord, NodeKind

log = logging.getLogger("tunnel_server.pki")

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
SERVING_CERT = "server.crt"
SERVING_KEY = "server.key"
CA_NEXT_CERT = "ca-next.crt"
CA_NEXT_KEY = "ca-next.key"
CA_NEXT_CROSS = "ca-next.cross.crt"
CA_PREVIOUS_CERT = "ca-previous.crt"
ROTATION_FILE = "ca-rotation.json"
MAX_CA_FILE_BYTES = 64 * 1024
"""Largest CA certificate or key file read, in bytes: ours are under 1 KB."""
ORGANIZATIONS: dict[NodeKind, str] = {"node": "edgefleet:node", "cluster": "edgefleet:cluster"}
REPLICA_ORGANIZATION = "edgefleet:replica"
"""The O of a replica's peer certificate (``issue_replica_certificate``): never a NodeKind's,
so ``tls.identity_from_certificate`` (agents, renewals) never accepts one."""
REPLICA_CN_PREFIX = "replica:"
"""A replica's peer certificate's CN is ``replica:<name>``; ``:`` is in no node name either."""
_EC_CURVES = (ec.SECP256R1, ec.SECP384R1)
_RSA_MIN_BITS = 2048
_RSA_MAX_BITS = 8192  # bigger keys only cost the server CPU on every handshake
_LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")

PrivateKey: TypeAlias = ec.EllipticCurvePrivateKey


class MissingCAError(FileNotFoundError):
    """The data dir holds no CA yet."""


class CSRError(ValueError):
    """A certificate signing request was malformed, badly signed or used a weak key."""


class RotationError(ValueError):
    """A CA rotation step that does not fit the data dir's state (no next CA, one already)."""


@dataclass(frozen=True, kw_only=True)
class IssuedCertificate:
    pem: str
    serial: str
    """Hex serial, as stored in the ``certificates`` table and matched by ``tls.peer_identity``."""
    name: str
    kind: NodeKind
    not_before: datetime
    not_after: datetime
    issued_at: datetime | None = None
    """When it was signed (``not_before`` is back-dated for clock skew); ``ca retire``
    compares it with ``promoted_at``. None: ``not_before`` stands in."""

    def record(self) -> CertificateRecord:
        issued = self.not_before if self.issued_at is None else self.issued_at
        return CertificateRecord(
            serial=self.serial,
            name=self.name,
            not_after=self.not_after.timestamp(),
            issued_at=issued.timestamp(),
        )


def spki_hash(certificate: x509.Certificate) -> str:
    """``sha256:<hex>`` of the certificate's SubjectPublicKeyInfo DER."""
    spki = certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256:" + hashlib.sha256(spki).hexdigest()


def serial_hex(certificate: x509.Certificate) -> str:
    return format(certificate.serial_number, "x")


def _now() -> datetime:
    return datetime.now(UTC)


def _key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def _read_bounded(path: Path) -> bytes:
    with path.open("rb") as file:
        data = file.read(MAX_CA_FILE_BYTES + 1)
    if len(data) > MAX_CA_FILE_BYTES:
        raise ValueError(f"{path} is over {MAX_CA_FILE_BYTES} bytes: not one of our CA files")
    return data


def _load_cert(path: Path) -> x509.Certificate | None:
    """The certificate in ``path``, None when there is no such file."""
    try:
        return x509.load_pem_x509_certificate(_read_bounded(path))
    except FileNotFoundError:
        return None


def _load_key(path: Path) -> PrivateKey:
    key = serialization.load_pem_private_key(_read_bounded(path), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise MissingCAError(f"{path} is not an EC private key")
    return key


def _same_key(certificate: x509.Certificate, key: PrivateKey) -> bool:
    der = serialization.Encoding.DER
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    return certificate.public_key().public_bytes(der, spki) == key.public_key().public_bytes(
        der, spki
    )


def _finish_promote(data_dir: Path, key: PrivateKey) -> x509.Certificate:
    """``ca.key`` is the next CA's but ``ca.crt`` is not: a promote stopped half-way; finish it."""
    pending = _load_cert(data_dir / CA_NEXT_CERT)
    if pending is None or not _same_key(pending, key):
        raise MissingCAError(
            f"{data_dir / CA_KEY} does not belong to {data_dir / CA_CERT}: restore both from a"
            " backup"
        )
    write_atomic(data_dir / CA_CERT, _cert_pem(pending))
    for name in (CA_NEXT_CROSS, CA_NEXT_CERT, CA_NEXT_KEY):
        (data_dir / name).unlink(missing_ok=True)
    log.warning("finished an interrupted CA promote", extra={"kv": {"ca_hash": spki_hash(pending)}})
    return pending


def new_ca(settings: PkiSettings) -> tuple[PrivateKey, x509.Certificate]:
    """A fresh self-signed CA: EC P-256, ``settings.ca_lifetime``, path length 0."""
    now = _now()
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edgefleet"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"EdgeFleet CA {secrets.token_hex(4)}"),
        ]
    )
    certificate = (
        _ca_builder(subject, key, not_before=now - timedelta(seconds=settings.clock_skew))
        .issuer_name(subject)
        .not_valid_after(now + timedelta(seconds=settings.ca_lifetime))
        .sign(key, hashes.SHA256())
    )
    return key, certificate


def _ca_builder(
    subject: x509.Name, key: PrivateKey, *, not_before: datetime
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )


def cross_sign(
    next_ca: x509.Certificate,
    next_key: PrivateKey,
    *,
    issuer: x509.Certificate,
    issuer_key: PrivateKey,
) -> x509.Certificate:
    """``next_ca``'s subject and key, signed by ``issuer``: the current CA's endorsement."""
    return (
        _ca_builder(next_ca.subject, next_key, not_before=next_ca.not_valid_before_utc)
        .issuer_name(issuer.subject)
        .not_valid_after(min(next_ca.not_valid_after_utc, issuer.not_valid_after_utc))
        .sign(issuer_key, hashes.SHA256())
    )


def _san_entry(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


class CertificateAuthority:
    """The CA of one server: loads or creates its files, issues serving and client certificates."""

    def __init__(
        self,
        *,
        certificate: x509.Certificate,
        key: PrivateKey,
        data_dir: Path,
        settings: PkiSettings,
    ) -> None:
        self.certificate = certificate
        self._key = key
        self.data_dir = data_dir
        self.settings = settings
        self.next_certificate: x509.Certificate | None = None
        """The NEXT CA (``ca rotate``), announced to agents; signs nothing until promoted."""
        self.next_cross: x509.Certificate | None = None
        """The next CA's key signed by the current CA (what agents check before storing it)."""
        self.previous_certificate: x509.Certificate | None = None
        """The CA ``ca promote`` replaced: client certificates it signed verify until retired."""
        self.promoted_at: float | None = None
        """Unix s of the last ``ca promote``: certificates issued before it are the old CA's."""

    def trusted(self) -> list[x509.Certificate]:
        """Every CA whose client certificates verify: current, next, previous."""
        extra = (self.next_certificate, self.previous_certificate)
        return [self.certificate, *(c for c in extra if c is not None)]

    def trusted_pem(self) -> bytes:
        return b"".join(_cert_pem(c) for c in self.trusted())

    def reload_rotation(self) -> bool:
        """Re-read the next and previous CA files (the CLI writes them); True if they changed."""
        before = (self.next_certificate, self.next_cross, self.previous_certificate)
        self.next_certificate = _load_cert(self.data_dir / CA_NEXT_CERT)
        self.next_cross = _load_cert(self.data_dir / CA_NEXT_CROSS)
        if self.next_certificate is None or self.next_cross is None:
            self.next_certificate = self.next_cross = None
        self.previous_certificate = _load_cert(self.data_dir / CA_PREVIOUS_CERT)
        try:
            state = json.loads(_read_bounded(self.data_dir / ROTATION_FILE))
            promoted = state.get("promoted_at") if isinstance(state, dict) else None
            self.promoted_at = float(promoted) if isinstance(promoted, int | float) else None
        except (FileNotFoundError, ValueError):
            self.promoted_at = None
        return before != (self.next_certificate, self.next_cross, self.previous_certificate)

    def announcement(self) -> dict[str, str | None]:
        """What agents are told over their session (docs/tunnel-protocol.md, ``ca-announce``)."""
        return {
            "current": _cert_pem(self.certificate).decode(),
            "next": None
            if self.next_certificate is None
            else _cert_pem(self.next_certificate).decode(),
            "next_cross": None if self.next_cross is None else _cert_pem(self.next_cross).decode(),
        }

    def rotating(self) -> bool:
        """True while agents have something to learn: a next CA, or a previous one not retired."""
        return self.next_certificate is not None or self.previous_certificate is not None

    def state(self) -> dict[str, dict[str, str] | None]:
        """For ``ca status``: each CA's hash, subject and expiry (ISO 8601), or None."""

        def describe(certificate: x509.Certificate | None) -> dict[str, str] | None:
            if certificate is None:
                return None
            return {
                "hash": spki_hash(certificate),
                "subject": certificate.subject.rfc4514_string(),
                "expires": certificate.not_valid_after_utc.isoformat(),
            }

        return {
            "current": describe(self.certificate),
            "next": describe(self.next_certificate),
            "previous": describe(self.previous_certificate),
        }

    def issuer_of(self, certificate: x509.Certificate) -> x509.Certificate | None:
        """The trusted CA that signed ``certificate`` directly, or None."""
        for candidate in self.trusted():
            try:
                certificate.verify_directly_issued_by(candidate)
            except (ValueError, TypeError, InvalidSignature):
                continue
            return candidate
        return None

    @property
    def cert_path(self) -> Path:
        return self.data_dir / CA_CERT

    @property
    def serving_cert_path(self) -> Path:
        return self.data_dir / SERVING_CERT

    @property
    def serving_key_path(self) -> Path:
        return self.data_dir / SERVING_KEY

    @classmethod
    def load(cls, data_dir: Path, *, settings: PkiSettings | None = None) -> CertificateAuthority:
        cert_path, key_path = data_dir / CA_CERT, data_dir / CA_KEY
        if not cert_path.exists() or not key_path.exists():
            raise MissingCAError(
                f"data dir {data_dir} has no CA: run `tunnel-server run --data-dir {data_dir}`"
                f" once or `tunnel-server init --data-dir {data_dir}`, or pass the right --data-dir"
            )
        certificate = x509.load_pem_x509_certificate(_read_bounded(cert_path))
        key = _load_key(key_path)
        if not _same_key(certificate, key):
            certificate = _finish_promote(data_dir, key)
        authority = cls(
            certificate=certificate, key=key, data_dir=data_dir, settings=settings or PkiSettings()
        )
        authority.reload_rotation()
        return authority

    @classmethod
    def load_or_create(cls, data_dir: Path, *, settings: PkiSettings) -> CertificateAuthority:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if (data_dir / CA_CERT).exists():
            return cls.load(data_dir, settings=settings)
        key, certificate = new_ca(settings)
        # Key first: a crash in between leaves no CA certificate without its key.
        write_atomic(data_dir / CA_KEY, _key_pem(key), mode=0o600)
        write_atomic(data_dir / CA_CERT, _cert_pem(certificate))
        authority = cls(certificate=certificate, key=key, data_dir=data_dir, settings=settings)
        log.info("created CA", extra={"kv": {"ca_hash": authority.ca_hash()}})
        return authority

    def ca_hash(self) -> str:
        return spki_hash(self.certificate)

    def ca_pem(self) -> bytes:
        return _cert_pem(self.certificate)

    def rotate(self) -> x509.Certificate:
        """Create the NEXT CA and its cross-signature; refuse while one exists already."""
        if self.next_certificate is not None:
            raise RotationError(
                "a next CA exists already (ca-next.crt): promote it with `tunnel-server ca"
                " promote` first"
            )
        if self.previous_certificate is not None:
            raise RotationError(
                "the previous CA is still trusted (ca-previous.crt): retire it with"
                " `tunnel-server ca retire` before rotating again"
            )
        key, certificate = new_ca(self.settings)
        cross = cross_sign(certificate, key, issuer=self.certificate, issuer_key=self._key)
        # Key first, the cross-signature last: only a complete set counts (reload_rotation).
        write_atomic(self.data_dir / CA_NEXT_KEY, _key_pem(key), mode=0o600)
        write_atomic(self.data_dir / CA_NEXT_CERT, _cert_pem(certificate))
        write_atomic(self.data_dir / CA_NEXT_CROSS, _cert_pem(cross))
        self.reload_rotation()
        log.info("created next CA", extra={"kv": {"ca_hash": spki_hash(certificate)}})
        return certificate

    def promote(self, *, now: float | None = None) -> x509.Certificate:
        """Make the next CA current; the current one becomes the previous (see module docs)."""
        if self.next_certificate is None:
            raise RotationError("there is no next CA to promote: run `tunnel-server ca rotate`")
        next_key = _load_key(self.data_dir / CA_NEXT_KEY)
        next_certificate = self.next_certificate
        now = time.time() if now is None else now
        write_atomic(self.data_dir / CA_PREVIOUS_CERT, _cert_pem(self.certificate))
        write_atomic(self.data_dir / ROTATION_FILE, json.dumps({"promoted_at": now}).encode())
        write_atomic(self.data_dir / CA_KEY, _key_pem(next_key), mode=0o600)
        write_atomic(self.data_dir / CA_CERT, _cert_pem(next_certificate))
        for name in (CA_NEXT_CROSS, CA_NEXT_CERT, CA_NEXT_KEY):
            (self.data_dir / name).unlink(missing_ok=True)
        self.certificate, self._key = next_certificate, next_key
        self.reload_rotation()
        log.info("promoted next CA", extra={"kv": {"ca_hash": self.ca_hash()}})
        return next_certificate

    def retire(self) -> x509.Certificate:
        """Stop trusting the previous CA; its client certificates fail from now on."""
        previous = self.previous_certificate
        if previous is None:
            raise RotationError("there is no previous CA to retire")
        (self.data_dir / CA_PREVIOUS_CERT).unlink(missing_ok=True)
        self.reload_rotation()
        log.info("retired previous CA", extra={"kv": {"ca_hash": spki_hash(previous)}})
        return previous

    def ensure_serving_certificate(self, *, public_name: str) -> bool:
        """Issue ``server.crt`` unless a valid one covers ``public_name``; True if issued."""
        names = list(dict.fromkeys([public_name, *_LOCAL_NAMES]))
        settings = self.settings
        if self._serving_is_current(names):
            return False
        now = _now()
        key = ec.generate_private_key(ec.SECP256R1())
        certificate = (
            self._builder(key.public_key(), now=now, lifetime=settings.serving_lifetime, skew=0)
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, public_name)]))
            .add_extension(
                x509.SubjectAlternativeName([_san_entry(n) for n in names]), critical=False
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        write_atomic(self.serving_key_path, _key_pem(key), mode=0o600)
        write_atomic(self.serving_cert_path, _cert_pem(certificate))
        log.info(
            "issued serving certificate",
            extra={"kv": {"names": ",".join(names), "not_after": certificate.not_valid_after_utc}},
        )
        return True

    def _serving_is_current(self, names: list[str]) -> bool:
        if not self.serving_cert_path.exists() or not self.serving_key_path.exists():
            return False
        certificate = x509.load_pem_x509_certificate(self.serving_cert_path.read_bytes())
        try:
            certificate.verify_directly_issued_by(self.certificate)
            san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
            return False
        have = {str(v) for v in san.value.get_values_for_type(x509.DNSName)}
        have |= {str(v) for v in san.value.get_values_for_type(x509.IPAddress)}
        wanted = {str(ipaddress.ip_address(n)) if _is_ip(n) else n for n in names}
        left = certificate.not_valid_after_utc - _now()
        return wanted <= have and left > timedelta(seconds=self.settings.serving_renew_before)

    def sign_csr(
        self,
        csr_pem: bytes,
        *,
        subject_name: str,
        kind: NodeKind,
        lifetime: float | None = None,
    ) -> IssuedCertificate:
        """Issue a client certificate for ``subject_name`` on the CSR's key; see module docs.

        ``lifetime`` is in seconds, ``settings.client_lifetime`` by default.
        """
        public_key = check_csr(csr_pem, max_bytes=self.settings.max_csr_bytes)
        lifetime = self.settings.client_lifetime if lifetime is None else lifetime
        now = _now()
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATIONS[kind]),
                x509.NameAttribute(NameOID.COMMON_NAME, subject_name),
            ]
        )
        # Backdate for clocks behind ours, but by at most a tenth of the lifetime: agents renew
        # at two thirds of (not_after - not_before), which a large backdate would distort.
        skew = min(self.settings.clock_skew, lifetime / 10)
        certificate = (
            self._builder(public_key, now=now, lifetime=lifetime, skew=skew)
            .subject_name(subject)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        log.info(
            "signed client certificate",
            extra={"kv": {"name": subject_name, "kind": kind, "serial": serial_hex(certificate)}},
        )
        return IssuedCertificate(
            pem=_cert_pem(certificate).decode(),
            serial=serial_hex(certificate),
            name=subject_name,
            kind=kind,
            not_before=certificate.not_valid_before_utc,
            not_after=certificate.not_valid_after_utc,
            issued_at=now,
        )

    def issue_replica_certificate(self, name: str, *, lifetime: float) -> ReplicaCertificate:
        """A fresh key and client certificate naming replica ``name`` (peer forwarding, docs/ha.md).

        Signed by this CA's key, which every replica holds (the Kubernetes store's Secret);
        ``lifetime`` in seconds. Never stored: a replica makes a new one as it nears expiry.
        """
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, REPLICA_ORGANIZATION),
                x509.NameAttribute(NameOID.COMMON_NAME, REPLICA_CN_PREFIX + name),
            ]
        )
        certificate = (
            self._builder(key.public_key(), now=now, lifetime=lifetime, skew=min(60, lifetime / 10))
            .subject_name(subject)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        return ReplicaCertificate(
            cert_pem=_cert_pem(certificate),
            key_pem=_key_pem(key),
            not_before=certificate.not_valid_before_utc,
            not_after=certificate.not_valid_after_utc,
        )

    def replica_of(self, certificate: x509.Certificate) -> str | None:
        """``replica_of(self, certificate)``: for parts that see the CA only through the app."""
        return replica_of(self, certificate)

    def _builder(
        self,
        public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
        *,
        now: datetime,
        lifetime: float,
        skew: float,
    ) -> x509.CertificateBuilder:
        # A leaf never outlives its CA.
        not_after = min(now + timedelta(seconds=lifetime), self.certificate.not_valid_after_utc)
        return (
            x509.CertificateBuilder()
            .issuer_name(self.certificate.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(seconds=skew))
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                _key_usage(key_encipherment=isinstance(public_key, rsa.RSAPublicKey)),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
        )


@dataclass(frozen=True, kw_only=True)
class ReplicaCertificate:
    """A replica's peer client certificate and key (PEM): ``issue_replica_certificate``."""

    cert_pem: bytes
    key_pem: bytes
    not_before: datetime
    not_after: datetime


def replica_of(authority: CertificateAuthority, certificate: x509.Certificate) -> str | None:
    """The replica name a peer certificate proves, or None (not ours, not a replica's, expired).

    Only a certificate signed by a CA trusted now, with client-auth usage, exactly one O equal
    to ``REPLICA_ORGANIZATION`` and one CN ``replica:<name>`` passes: an agent's certificate
    (O ``edgefleet:node``/``edgefleet:cluster``) never does.
    """
    try:
        if authority.issuer_of(certificate) is None:
            return None
        eku = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
        return None
    now = _now()
    if not certificate.not_valid_before_utc <= now < certificate.not_valid_after_utc:
        return None
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    orgs = certificate.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    if ExtendedKeyUsageOID.CLIENT_AUTH not in eku or len(names) != 1 or len(orgs) != 1:
        return None
    name, org = str(names[0].value), str(orgs[0].value)
    if org != REPLICA_ORGANIZATION or not name.startswith(REPLICA_CN_PREFIX):
        return None
    return name.removeprefix(REPLICA_CN_PREFIX) or None


def check_csr(
    csr_pem: bytes, *, max_bytes: int = PkiSettings.max_csr_bytes
) -> ec.EllipticCurvePublicKey | rsa.RSAPublicKey:
    """Parse a PEM CSR, check its size, signature and key; return its public key."""
    if len(csr_pem) > max_bytes:
        raise CSRError(f"CSR is {len(csr_pem)} bytes, more than the {max_bytes} allowed")
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
        public_key = csr.public_key()
        signature_ok = csr.is_signature_valid
    except (ValueError, TypeError) as exc:
        raise CSRError(f"not a PEM certificate signing request ({exc})") from None
    if not signature_ok:
        raise CSRError("the CSR's signature does not match its public key")
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        if not isinstance(public_key.curve, _EC_CURVES):
            raise CSRError(f"EC curve {public_key.curve.name} not accepted: use P-256 or P-384")
        return public_key
    if isinstance(public_key, rsa.RSAPublicKey):
        if not _RSA_MIN_BITS <= public_key.key_size <= _RSA_MAX_BITS:
            raise CSRError(
                f"RSA key of {public_key.key_size} bits not accepted:"
                f" use {_RSA_MIN_BITS} to {_RSA_MAX_BITS} bits, or EC P-256"
            )
        return public_key
    raise CSRError(f"key type {type(public_key).__name__} not accepted: use EC P-256/P-384 or RSA")


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _key_usage(*, cert_sign: bool = False, key_encipherment: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )
