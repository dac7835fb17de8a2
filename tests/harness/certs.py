"""Throw-away PKI for test services: a CA and serving certificates for loopback."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_PEM = serialization.Encoding.PEM
_VALIDITY = dt.timedelta(days=2)  # a test run never lasts longer


@dataclass(frozen=True, kw_only=True)
class KeyPair:
    cert_path: Path
    key_path: Path


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(_PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    path.chmod(0o600)


def _builder(
    name: x509.Name, issuer: x509.Name | None, public_key: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
    )


class TestCA:
    """A CA that signs serving and client certificates into a folder."""

    __test__ = False  # not a pytest class

    def __init__(self, folder: Path, name: str = "edgefleet-test-ca") -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self._key = ec.generate_private_key(ec.SECP256R1())
        self.cert = (
            _builder(_name(name), None, self._key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
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
            .sign(self._key, hashes.SHA256())
        )
        self.cert_path = folder / f"{name}.crt"
        self.cert_path.write_bytes(self.cert.public_bytes(_PEM))

    def issue(
        self, name: str, *, server: bool, hosts: tuple[str, ...] = (), groups: tuple[str, ...] = ()
    ) -> KeyPair:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = [x509.NameAttribute(NameOID.COMMON_NAME, name)]
        subject += [x509.NameAttribute(NameOID.ORGANIZATION_NAME, g) for g in groups]
        builder = _builder(x509.Name(subject), self.cert.subject, key.public_key())
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        if hosts:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(_sans(hosts)), critical=False
            )
        cert = builder.sign(self._key, hashes.SHA256())
        pair = KeyPair(cert_path=self.folder / f"{name}.crt", key_path=self.folder / f"{name}.key")
        pair.cert_path.write_bytes(cert.public_bytes(_PEM))
        _write_key(key, pair.key_path)
        return pair


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _sans(hosts: tuple[str, ...]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def signing_key(path: Path) -> tuple[Path, Path]:
    """An EC key pair for service-account tokens: (private key file, public key file).

    kube-apiserver reads the private key as SEC1 ("EC PRIVATE KEY") and the verification key
    as SubjectPublicKeyInfo ("PUBLIC KEY"); it rejects a PKCS#8 file as a public key file.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(
        key.private_bytes(
            _PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        )
    )
    path.chmod(0o600)
    public = path.with_suffix(".pub")
    public.write_bytes(
        key.public_key().public_bytes(_PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return path, public
