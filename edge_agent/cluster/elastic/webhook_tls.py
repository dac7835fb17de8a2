"""The admission webhook's TLS: a self-made CA and the serving certificate it signs.

The API server calls the webhook over HTTPS and trusts exactly the ``caBundle`` of the
MutatingWebhookConfiguration, so the agent needs no outside PKI: it makes its own CA, signs its
serving certificate with it and publishes the CA in the configuration (``webhook_config``).

Rules:

* Files in the agent's state folder, PEM, each mode 0600, written atomically (a crash leaves
  the old file or the new one): ``webhook-ca.crt`` / ``webhook-ca.key`` (the CA),
  ``webhook.crt`` / ``webhook.key`` (the serving certificate and its key) and, during a
  rotation, ``webhook-ca-previous.crt`` (the CA before the current one, while it is valid).
  Keys are EC P-256. The CA key is written before its certificate, so a crash in between never
  leaves a CA certificate without its key.
* ``ensure_certificates`` loads what is there and keeps it while it is sound: the files parse,
  each key matches its certificate, the serving certificate was issued by the CA and names
  every host the API server may dial (``serving_names``), and ``now`` is before its renewal
  time. A serving certificate that fails only the names check is issued again by the same CA
  (the caBundle stays); anything wrong with the CA, or the CA reaching its renewal time, makes
  a new CA and a new serving certificate.
* Renewal time: ``renew_before`` before expiry (at most half the lifetime, so a setting of
  ``certificate_renew_days >= certificate_days`` cannot renew on every start). The serving
  certificate never outlives its CA, so both reach their renewal time together.
* A rotation keeps the old CA in the bundle (``ca_bundle``: the current CA, then the previous
  one) until it expires, so the API server keeps trusting the certificate being served while
  it learns the new CA; the caller publishes the new bundle before it serves the new
  certificate (``AdmissionWebhook``).
* Time is passed in (``now``): tests drive rotations with a fake clock.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import secrets
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from daemon_support.files import write_atomic

__all__ = [
    "CA_CERT",
    "CA_KEY",
    "CLOCK_SKEW",
    "PREVIOUS_CA_CERT",
    "SERVING_CERT",
    "SERVING_KEY",
    "WebhookTls",
    "ensure_certificates",
    "reload_context",
    "server_context",
    "serving_names",
]

log = logging.getLogger("edge_agent.cluster.elastic.webhook")

CA_CERT = "webhook-ca.crt"
CA_KEY = "webhook-ca.key"
PREVIOUS_CA_CERT = "webhook-ca-previous.crt"
SERVING_CERT = "webhook.crt"
SERVING_KEY = "webhook.key"
CLOCK_SKEW = timedelta(minutes=5)
"""How far back ``notBefore`` is set: an API server whose clock is a little behind the agent's
still accepts a certificate made a moment ago."""
_MODE = 0o600
_MAX_PEM_BYTES = 64 * 1024
"""A PEM file of ours is under 2 KB; a bigger one is not ours (read no further)."""

Action = Literal["kept", "created", "renewed", "reissued"]
"""What ``ensure_certificates`` did: nothing; a first CA; a new CA (the old one is kept in the
bundle); a new serving certificate from the same CA (the names changed)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class WebhookTls:
    """The certificates on disk, as the server and the configuration need them."""

    cert_path: Path
    key_path: Path
    ca_bundle: bytes
    """PEM: the current CA, then the previous one while it is valid (the configuration's
    ``caBundle``)."""
    ca_fingerprint: str
    """SHA-256 of the current CA certificate (hex): a change means a new CA."""
    serving_fingerprint: str
    """SHA-256 of the serving certificate (hex): a change means a new certificate to serve."""
    not_after: datetime
    """Expiry of the serving certificate (UTC)."""
    renew_at: datetime
    """When ``ensure_certificates`` will renew (UTC): ``renew_before`` before ``not_after``."""
    names: tuple[str, ...]


def serving_names(*, service_namespace: str, service_name: str, url_host: str | None) -> list[str]:
    """The hosts the API server may dial: the Service's DNS names and the URL's host."""
    names = [
        f"{service_name}.{service_namespace}.svc",
        f"{service_name}.{service_namespace}.svc.cluster.local",
    ]
    if url_host:
        names.append(url_host)
    return list(dict.fromkeys(names))


def _san_entry(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _san_set(names: Sequence[str]) -> set[x509.GeneralName]:
    return {_san_entry(name) for name in names}


def _fingerprint(certificate: x509.Certificate) -> str:
    return certificate.fingerprint(hashes.SHA256()).hex()


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert_pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def _read(path: Path) -> bytes | None:
    try:
        with path.open("rb") as source:
            data = source.read(_MAX_PEM_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as error:
        log.warning("cannot read %s: %s; making new webhook certificates", path, error)
        return None
    if len(data) > _MAX_PEM_BYTES:
        log.warning("%s is larger than %d bytes: not ours; replacing it", path, _MAX_PEM_BYTES)
        return None
    return data


def _load_cert(path: Path) -> x509.Certificate | None:
    data = _read(path)
    if data is None:
        return None
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as error:
        log.warning("%s is not a PEM certificate (%s); replacing it", path, error)
        return None


def _load_pair(
    cert_path: Path, key_path: Path
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
    """The certificate and its key, or None when either is missing, broken or they differ."""
    certificate = _load_cert(cert_path)
    data = _read(key_path)
    if certificate is None or data is None:
        return None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as error:
        log.warning("%s is not an unencrypted PEM key (%s); replacing it", key_path, error)
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        log.warning("%s is not an EC key; replacing it", key_path)
        return None
    if key.public_key() != certificate.public_key():
        log.warning("%s does not belong to %s; replacing both", key_path, cert_path)
        return None
    return certificate, key


def _renew_at(certificate: x509.Certificate, renew_before: timedelta) -> datetime:
    start, end = certificate.not_valid_before_utc, certificate.not_valid_after_utc
    return end - min(renew_before, (end - start) / 2)


def _fresh(certificate: x509.Certificate, renew_before: timedelta, now: datetime) -> bool:
    return certificate.not_valid_before_utc <= now < _renew_at(certificate, renew_before)


def _issued_by(certificate: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        certificate.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _names_of(certificate: x509.Certificate) -> set[x509.GeneralName]:
    try:
        extension = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return set()
    return set(extension.value)


def _new_ca(
    now: datetime, lifetime: timedelta
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    # A random part in the name: two CAs of the same agent (a rotation) are told apart in logs
    # and by the API server's verifier (the issuer name picks the CA in the bundle).
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edgefleet"),
            x509.NameAttribute(
                NameOID.COMMON_NAME, f"EdgeFleet elastic webhook CA {secrets.token_hex(4)}"
            ),
        ]
    )
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + lifetime)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return certificate, key


def _issue(
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    names: Sequence[str],
    now: datetime,
    lifetime: timedelta,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0][:64])]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        # Never beyond the CA: both then reach their renewal time together.
        .not_valid_after(min(now + lifetime, ca.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName([_san_entry(n) for n in names]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return certificate, key


def _write_pair(
    folder: Path,
    cert_name: str,
    key_name: str,
    certificate: x509.Certificate,
    key: ec.EllipticCurvePrivateKey,
) -> None:
    # Key first: a crash in between leaves a key without its certificate (replaced next
    # start, as the pair does not match), never a certificate whose key is missing.
    write_atomic(folder / key_name, _key_pem(key), mode=_MODE)
    write_atomic(folder / cert_name, _cert_pem(certificate), mode=_MODE)


def ensure_certificates(
    folder: Path,
    *,
    names: Sequence[str],
    lifetime: timedelta,
    renew_before: timedelta,
    now: datetime,
) -> tuple[WebhookTls, Action]:
    """The webhook's certificates in ``folder``, made or renewed as the module's rules say.

    ``names``: hosts the serving certificate must name (the first is its common name);
    ``lifetime``: validity of a new CA and certificate; ``now``: an aware UTC time.
    """
    if not names:
        raise ValueError("the serving certificate needs at least one name")
    if lifetime <= timedelta(0):
        raise ValueError(f"lifetime must be positive, got {lifetime}")
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    action: Action = "kept"
    ca_pair = _load_pair(folder / CA_CERT, folder / CA_KEY)
    previous = _load_cert(folder / PREVIOUS_CA_CERT)
    if ca_pair is None or not _fresh(ca_pair[0], renew_before, now):
        old = ca_pair[0] if ca_pair is not None else None
        # The old CA goes to its own file first: a crash before the new CA is written then
        # loses nothing the API server may still need.
        if old is not None and now < old.not_valid_after_utc:
            write_atomic(folder / PREVIOUS_CA_CERT, _cert_pem(old), mode=_MODE)
            previous = old
        else:
            (folder / PREVIOUS_CA_CERT).unlink(missing_ok=True)
            previous = None
        ca_pair = _new_ca(now, lifetime)
        _write_pair(folder, CA_CERT, CA_KEY, *ca_pair)
        action = "created" if old is None else "renewed"
        log.info(
            "elastic webhook: %s CA %s, valid until %s",
            "made a" if old is None else "renewed the CA: new",
            _fingerprint(ca_pair[0])[:16],
            ca_pair[0].not_valid_after_utc.isoformat(),
        )
    if previous is not None and now >= previous.not_valid_after_utc:
        (folder / PREVIOUS_CA_CERT).unlink(missing_ok=True)
        previous = None
    ca, ca_key = ca_pair
    serving = _load_pair(folder / SERVING_CERT, folder / SERVING_KEY)
    wanted = _san_set(names)
    if (
        serving is None
        or not _issued_by(serving[0], ca)
        or not _fresh(serving[0], renew_before, now)
        or not wanted <= _names_of(serving[0])
    ):
        serving = _issue(ca, ca_key, names, now, lifetime)
        _write_pair(folder, SERVING_CERT, SERVING_KEY, *serving)
        if action == "kept":
            action = "reissued"
        log.info(
            "elastic webhook: issued the serving certificate for %s, valid until %s",
            ", ".join(names),
            serving[0].not_valid_after_utc.isoformat(),
        )
    certificate = serving[0]
    bundle = _cert_pem(ca) + (b"" if previous is None else _cert_pem(previous))
    tls = WebhookTls(
        cert_path=folder / SERVING_CERT,
        key_path=folder / SERVING_KEY,
        ca_bundle=bundle,
        ca_fingerprint=_fingerprint(ca),
        serving_fingerprint=_fingerprint(certificate),
        not_after=certificate.not_valid_after_utc,
        renew_at=_renew_at(certificate, renew_before),
        names=tuple(names),
    )
    return tls, action


def server_context(tls: WebhookTls) -> ssl.SSLContext:
    """A TLS 1.2+ server context serving ``tls``'s certificate (no client certificates)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(os.fspath(tls.cert_path), os.fspath(tls.key_path))
    return context


def reload_context(context: ssl.SSLContext, tls: WebhookTls) -> None:
    """Serve ``tls``'s certificate on ``context`` from the next handshake on.

    The listening server keeps its context; loading a new chain into it replaces the one
    OpenSSL hands to new connections (the API server's Go client sends no SNI for an IP
    address, so switching contexts in an SNI callback would not cover every caller).
    """
    context.load_cert_chain(os.fspath(tls.cert_path), os.fspath(tls.key_path))
