"""The server's certificate authority: CA, serving certificate and CSR signing.

Files in the data dir: ``ca.crt``/``ca.key`` (EC P-256, 10 years) and ``server.crt``/``server.key``
(the HTTPS serving certificate, re-issued at start when it is close to expiry or its names
changed). Keys are written 0600, atomically (temp file, fsync, rename, fsync of the folder).

Agents pin the CA by ``ca_hash()``: ``sha256:<hex>`` of the CA certificate's
SubjectPublicKeyInfo DER, the kubeadm ``--discovery-token-ca-cert-hash`` convention.

``sign_csr`` trusts nothing in a CSR but its public key (after checking the CSR's signature
proves possession): subject, extensions and SANs are ignored and set by us.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import secrets
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
ORGANIZATIONS: dict[NodeKind, str] = {"node": "edgefleet:node", "cluster": "edgefleet:cluster"}
_EC_CURVES = (ec.SECP256R1, ec.SECP384R1)
_RSA_MIN_BITS = 2048
_RSA_MAX_BITS = 8192  # bigger keys only cost the server CPU on every handshake
_LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")

PrivateKey: TypeAlias = ec.EllipticCurvePrivateKey


class MissingCAError(FileNotFoundError):
    """The data dir holds no CA yet."""


class CSRError(ValueError):
    """A certificate signing request was malformed, badly signed or used a weak key."""


@dataclass(frozen=True, kw_only=True)
class IssuedCertificate:
    pem: str
    serial: str
    """Hex serial, as stored in the ``certificates`` table and matched by ``tls.peer_identity``."""
    name: str
    kind: NodeKind
    not_before: datetime
    not_after: datetime

    def record(self) -> CertificateRecord:
        return CertificateRecord(
            serial=self.serial,
            name=self.name,
            not_after=self.not_after.timestamp(),
            issued_at=self.not_before.timestamp(),
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
        certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise MissingCAError(f"{key_path} is not an EC private key")
        return cls(
            certificate=certificate, key=key, data_dir=data_dir, settings=settings or PkiSettings()
        )

    @classmethod
    def load_or_create(cls, data_dir: Path, *, settings: PkiSettings) -> CertificateAuthority:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if (data_dir / CA_CERT).exists():
            return cls.load(data_dir, settings=settings)
        now = _now()
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edgefleet"),
                x509.NameAttribute(NameOID.COMMON_NAME, f"EdgeFleet CA {secrets.token_hex(4)}"),
            ]
        )
        certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(seconds=settings.clock_skew))
            .not_valid_after(now + timedelta(seconds=settings.ca_lifetime))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(cert_sign=True), critical=True)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .sign(key, hashes.SHA256())
        )
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
        )

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
