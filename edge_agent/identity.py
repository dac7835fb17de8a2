"""The agent's identity on disk: its private key, its client certificate and the pinned CA.

Layout of the data dir (folder 0700):

``identity.json``       server URL, name, kind, CA hash and the names of the two files below,
                        and the certificate's validity beside the SHA-256 of its file;
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
or parsed: a join, a renewal, a CA announcement. What a running agent reads of its certificate
(its validity: expiry, renewal time) is recorded in ``identity.json`` when the certificate is
saved, tied to the exact bytes of the certificate file by their hash, so a joined agent with
its tunnel up never loads it (issue 18; ``tests/unit/agent/test_lazy_parts.py``). A file that
does not match its record (damaged, replaced) is parsed as if nothing were recorded, and a
damaged one is refused as before. An identity saved by an older release records nothing: its
certificate is parsed on first use, once, and the record written then.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import logging
import os
import re
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from daemon_support.files import write_atomic

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

log = logging.getLogger("edge_agent.identity")

IDENTITY_FILE = "identity.json"
CA_FILE = "ca.crt"
NEXT_CA_FILE = "ca-next.crt"
VALIDITY_KEY = "certificate"
"""The key of the certificate's recorded validity in ``identity.json`` (:class:`Validity`)."""
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
class Validity:
    """When the client certificate is valid: what a running agent reads of it.

    Recorded in ``identity.json`` beside the SHA-256 of the certificate file's bytes, and used
    only while the file still has those bytes, so reading it never needs ``cryptography``.
    """

    not_before: datetime
    not_after: datetime

    @classmethod
    def of(cls, certificate: x509.Certificate) -> Validity:
        return cls(
            not_before=certificate.not_valid_before_utc, not_after=certificate.not_valid_after_utc
        )

    @classmethod
    def recorded(cls, record: object, certificate_pem: bytes) -> Validity | None:
        """The validity ``record`` holds for exactly ``certificate_pem``; None if it holds none."""
        if not isinstance(record, dict) or record.get("sha256") != _digest(certificate_pem):
            return None  # not recorded (an older release), or the file changed since
        try:
            validity = cls(
                not_before=datetime.fromisoformat(record["not_before"]),
                not_after=datetime.fromisoformat(record["not_after"]),
            )
        except (KeyError, TypeError, ValueError):
            return None
        if validity.not_before.tzinfo is None or validity.not_after.tzinfo is None:
            return None
        return validity

    def record(self, certificate_pem: bytes) -> dict[str, str]:
        """What ``identity.json`` holds under :data:`VALIDITY_KEY`."""
        return {
            "sha256": _digest(certificate_pem),
            "not_before": self.not_before.isoformat(),
            "not_after": self.not_after.isoformat(),
        }


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
    recorded_validity: Validity | None = None
    """The certificate's validity as ``identity.json`` records it for these bytes, if it does."""

    @functools.cached_property
    def certificate(self) -> x509.Certificate:
        """The client certificate, parsed on first use (this loads cryptography)."""
        return _load_certificate(self.certificate_pem)

    @functools.cached_property
    def validity(self) -> Validity:
        """As recorded; else parsed (ValueError for a damaged file), then recorded for next time."""
        if self.recorded_validity is not None:
            return self.recorded_validity
        validity = Validity.of(self.certificate)
        self._record(validity)
        return validity

    def _record(self, validity: Validity) -> None:
        """Add ``validity`` to ``identity.json`` while it still names this certificate."""
        path = self.data_dir / IDENTITY_FILE
        try:
            with _locked(self.data_dir):  # not over a re-join's identity.json written meanwhile
                meta = json.loads(path.read_text())
                if meta.get("cert_file") != self.cert_path.name:
                    return  # renewed or joined again since this identity was read
                meta[VALIDITY_KEY] = validity.record(self.certificate_pem)
                write_atomic(path, _meta_json(meta))
        except (OSError, ValueError) as error:
            # The agent runs on; it parses the certificate again at the next read.
            log.warning("could not record the certificate's validity in %s: %s", path, error)

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
        certificate_pem = cert_path.read_bytes()
        return cls(
            data_dir=data_dir,
            server=meta["server"],
            name=meta["name"],
            kind=meta["kind"],
            ca_hash=meta["ca_hash"],
            key_path=data_dir / meta["key_file"],
            cert_path=cert_path,
            ca_path=data_dir / CA_FILE,
            certificate_pem=certificate_pem,
            recorded_validity=Validity.recorded(meta.get(VALIDITY_KEY), certificate_pem),
        )

    @property
    def not_before(self) -> datetime:
        return self.validity.not_before

    @property
    def not_after(self) -> datetime:
        return self.validity.not_after

    def lifetime(self) -> timedelta:
        return self.not_after - self.not_before

    def expires_in(self, *, now: datetime | None = None) -> timedelta:
        return self.not_after - (now or datetime.now(UTC))

    def needs_renewal(self, *, fraction: float = 2 / 3, now: datetime | None = None) -> bool:
        """True once ``fraction`` of the certificate's lifetime has passed."""
        elapsed = (now or datetime.now(UTC)) - self.not_before
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
        VALIDITY_KEY: Validity.of(certificate).record(certificate_pem),
    }
    with _locked(data_dir):
        write_atomic(data_dir / IDENTITY_FILE, _meta_json(meta))
    for old in [*data_dir.glob("node-*.key"), *data_dir.glob("node-*.crt")]:
        if old.name not in (key_file, cert_file):
            old.unlink(missing_ok=True)
    next_ca = data_dir / NEXT_CA_FILE
    if next_ca.exists() and spki_hash(_load_certificate(next_ca.read_bytes())) == ca_hash:
        next_ca.unlink()  # the next CA is the pinned one now: the rotation is over here
    return Identity.load(data_dir)


def _meta_json(meta: dict[str, Any]) -> bytes:
    return json.dumps(meta, indent=2).encode() + b"\n"


def _digest(certificate_pem: bytes) -> str:
    return hashlib.sha256(certificate_pem).hexdigest()


@contextlib.contextmanager
def _locked(data_dir: Path) -> Iterator[None]:
    """The data dir's lock (flock on the folder): who rewrites ``identity.json`` holds it."""
    fd = os.open(data_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # and with it the lock


def _load_certificate(pem: bytes) -> x509.Certificate:
    from cryptography import x509  # noqa: PLC0415 - see the top

    return x509.load_pem_x509_certificate(pem)
