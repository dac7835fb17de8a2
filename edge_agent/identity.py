"""The agent's identity on disk: its private key, its client certificate and the pinned CA.

Layout of the data dir (folder 0700):

``identity.json``       server URL, name, kind, CA hash and the names of the two files below;
                        replaced atomically last, so it always points at a matching pair
``node-<serial>.key``   EC P-256 private key, 0600, generated here and never sent anywhere
``node-<serial>.crt``   client certificate signed by the server's CA
``ca.crt``              the server's CA, pinned by its hash at join time
``ca-next.crt``         during a CA rotation: the next CA the cloud announced over the session
                        and the pinned CA endorsed (``ca_rotation``); replaces ``ca.crt`` once
                        a renewal brings a certificate it signed

Every file is written atomically (temp file, fsync, rename, fsync of the folder). TLS to the
server trusts ``ca.crt`` (and ``ca-next.crt`` when present) only, never the system trust store.

``cryptography`` (about 8 MiB of RSS) is imported only where a key, CSR or certificate is made
or parsed: :meth:`Identity.load` reads the files but parses the certificate on first use of
:attr:`Identity.certificate`, so an agent that has not joined, or whose tunnel
has not connected yet, never loads it (issue 18; ``tests/unit/agent/test_lazy_parts.py``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from daemon_support.files import write_atomic

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

IDENTITY_FILE = "identity.json"
CA_FILE = "ca.crt"
NEXT_CA_FILE = "ca-next.crt"
_NAME_RE = re.compile(r"[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?")
_HASH_RE = re.compile(r"sha256:[0-9a-f]{64}")


class NotJoinedError(FileNotFoundError):
    """The data dir holds no identity: ``edge-agent join`` has not run (or not finished)."""


def validate_name(name: str) -> str:
    if not _NAME_RE.fullmatch(name):
        raise ValueError(
            f"invalid node name {name!r}: use 1-63 lower-case letters, digits, '-' or '.'"
            " (pass --name)"
        )
    return name


def validate_ca_hash(value: str) -> str:
    value = value.strip().lower()
    if not _HASH_RE.fullmatch(value):
        raise ValueError(
            f"--ca-hash must be sha256:<64 hex digits> as printed by `tunnel-server ca-hash`,"
            f" got {value!r}"
        )
    return value


def spki_hash(certificate: x509.Certificate) -> str:
    """``sha256:<hex>`` of the certificate's SubjectPublicKeyInfo DER (kubeadm's CA pin)."""
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415 - see the top

    spki = certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256:" + hashlib.sha256(spki).hexdigest()


def generate_key() -> ec.EllipticCurvePrivateKey:
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415 - see the top

    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415 - see the top

    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415 - see the top
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415

    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise TypeError(f"{path} is not an EC private key")
    return key


def make_csr(key: ec.EllipticCurvePrivateKey, name: str) -> bytes:
    """A CSR proving possession of ``key``; the server sets the subject itself anyway."""
    from cryptography import x509  # noqa: PLC0415 - see the top
    from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415
    from cryptography.x509.oid import NameOID  # noqa: PLC0415

    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM)


def pinned_ssl_context(*, ca_pem: bytes) -> ssl.SSLContext:
    """Client TLS that trusts exactly this CA (no system store) and checks the host name."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED + check_hostname
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_verify_locations(cadata=ca_pem.decode())
    return context


@dataclass(frozen=True, kw_only=True)
class Identity:
    data_dir: Path
    server: str
    """Base URL of the tunnel server, e.g. ``https://cloud.example.com:8443``."""
    name: str
    kind: str
    ca_hash: str
    key_path: Path
    cert_path: Path
    ca_path: Path
    certificate_pem: bytes
    """The client certificate as read by :meth:`load` (a renewal may delete its file since)."""

    @functools.cached_property
    def certificate(self) -> x509.Certificate:
        """The client certificate, parsed on first use (the only reason to load cryptography)."""
        return _load_certificate(self.certificate_pem)

    @classmethod
    def load(cls, data_dir: Path) -> Identity:
        path = data_dir / IDENTITY_FILE
        try:
            meta: dict[str, Any] = json.loads(path.read_text())
        except FileNotFoundError:
            raise NotJoinedError(
                f"{data_dir} holds no identity: run `edge-agent join --data-dir {data_dir} ...`"
            ) from None
        cert_path = data_dir / meta["cert_file"]
        return cls(
            data_dir=data_dir,
            server=meta["server"],
            name=meta["name"],
            kind=meta["kind"],
            ca_hash=meta["ca_hash"],
            key_path=data_dir / meta["key_file"],
            cert_path=cert_path,
            ca_path=data_dir / CA_FILE,
            certificate_pem=cert_path.read_bytes(),
        )

    @property
    def not_after(self) -> datetime:
        return self.certificate.not_valid_after_utc

    def lifetime(self) -> timedelta:
        return self.certificate.not_valid_after_utc - self.certificate.not_valid_before_utc

    def expires_in(self, *, now: datetime | None = None) -> timedelta:
        return self.not_after - (now or datetime.now(UTC))

    def needs_renewal(self, *, fraction: float = 2 / 3, now: datetime | None = None) -> bool:
        """True once ``fraction`` of the certificate's lifetime has passed."""
        elapsed = (now or datetime.now(UTC)) - self.certificate.not_valid_before_utc
        return elapsed >= self.lifetime() * fraction

    def ca_pem(self) -> bytes:
        return self.ca_path.read_bytes()

    def pinned_ca(self) -> x509.Certificate:
        """The pinned CA (``ca.crt``), parsed: what a CA announcement is checked against."""
        return _load_certificate(self.ca_pem())

    def next_ca_pem(self) -> bytes | None:
        """The announced next CA (``ca-next.crt``), None outside a CA rotation."""
        try:
            return (self.data_dir / NEXT_CA_FILE).read_bytes()
        except FileNotFoundError:
            return None

    def trusted_cas(self) -> list[x509.Certificate]:
        """The pinned CA, then the announced next one if any: what the server may chain to."""
        pems = [self.ca_pem(), self.next_ca_pem()]
        return [_load_certificate(pem) for pem in pems if pem is not None]

    def client_ssl_context(self) -> ssl.SSLContext:
        """TLS to the server: trust only the pinned (and next) CA, present our certificate."""
        context = pinned_ssl_context(ca_pem=self.ca_pem() + (self.next_ca_pem() or b""))
        context.load_cert_chain(self.cert_path, self.key_path)
        return context


def save_identity(
    data_dir: Path,
    *,
    server: str,
    kind: str,
    ca_hash: str,
    key: ec.EllipticCurvePrivateKey,
    certificate_pem: bytes,
    ca_pem: bytes,
) -> Identity:
    """Write a new key + certificate pair and switch ``identity.json`` to it atomically."""
    from cryptography.x509.oid import NameOID  # noqa: PLC0415 - see the top

    certificate = _load_certificate(certificate_pem)
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    serial = format(certificate.serial_number, "x")
    key_file, cert_file = f"node-{serial}.key", f"node-{serial}.crt"
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_atomic(data_dir / key_file, key_pem(key), mode=0o600)
    write_atomic(data_dir / cert_file, certificate_pem)
    write_atomic(data_dir / CA_FILE, ca_pem)
    meta = {
        "server": server,
        "name": str(names[0].value),
        "kind": kind,
        "ca_hash": ca_hash,
        "key_file": key_file,
        "cert_file": cert_file,
    }
    write_atomic(data_dir / IDENTITY_FILE, json.dumps(meta, indent=2).encode() + b"\n")
    for old in [*data_dir.glob("node-*.key"), *data_dir.glob("node-*.crt")]:
        if old.name not in (key_file, cert_file):
            old.unlink(missing_ok=True)
    next_ca = data_dir / NEXT_CA_FILE
    if next_ca.exists() and spki_hash(_load_certificate(next_ca.read_bytes())) == ca_hash:
        next_ca.unlink()  # the next CA is the pinned one now: the rotation is over here
    return Identity.load(data_dir)


def _load_certificate(pem: bytes) -> x509.Certificate:
    from cryptography import x509  # noqa: PLC0415 - see the top

    return x509.load_pem_x509_certificate(pem)
