"""The webhook's self-made CA and serving certificate: made, kept, re-issued, renewed.

Time is passed in, so renewals are driven with a fake clock and short lifetimes. The TLS
checks are real handshakes between ``server_context`` and a client that trusts only the
bundle, over memory BIOs (no sockets): what the API server does with the ``caBundle``.
"""

from __future__ import annotations

import ssl
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from edge_agent.cluster.elastic import webhook_tls
from edge_agent.cluster.elastic.webhook_tls import (
    CA_CERT,
    CA_KEY,
    PREVIOUS_CA_CERT,
    SERVING_CERT,
    SERVING_KEY,
    ensure_certificates,
)

LIFETIME = timedelta(hours=10)
RENEW = timedelta(hours=2)
T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=9)
"""The fake clock's start: the first certificates and those renewed at T0 + 8 h are both valid
on the real clock, which the handshakes check."""
NAMES = ["hook.edgefleet-system.svc", "hook.edgefleet-system.svc.cluster.local", "127.0.0.1"]


def ensure(folder: Path, now: datetime, names: list[str] = NAMES) -> webhook_tls.WebhookTls:
    tls, _ = ensure_certificates(
        folder, names=names, lifetime=LIFETIME, renew_before=RENEW, now=now
    )
    return tls


def certificates(bundle: bytes) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(bundle)


def served_fingerprint(context: ssl.SSLContext, bundle: bytes, host: str) -> str:
    """Handshake a client trusting only ``bundle`` with ``context``; the served cert's hash."""
    client = ssl.create_default_context(cadata=bundle.decode())
    server_in, server_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    client_in, client_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    server = context.wrap_bio(server_in, server_out, server_side=True)
    peer = client.wrap_bio(client_in, client_out, server_hostname=host)
    done = {"client": False, "server": False}
    for _ in range(10):
        for name, side in (("client", peer), ("server", server)):
            if not done[name]:
                try:
                    side.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        server_in.write(client_out.read())
        client_in.write(server_out.read())
        if all(done.values()):
            break
    der = peer.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).fingerprint(hashes.SHA256()).hex()


def test_first_run_makes_a_ca_and_a_certificate_for_every_name(tmp_path: Path) -> None:
    tls, action = ensure_certificates(
        tmp_path, names=NAMES, lifetime=LIFETIME, renew_before=RENEW, now=T0
    )
    assert action == "created"
    for name in (CA_CERT, CA_KEY, SERVING_CERT, SERVING_KEY):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600, name
    assert not (tmp_path / PREVIOUS_CA_CERT).exists()
    (ca,) = certificates(tls.ca_bundle)
    serving = x509.load_pem_x509_certificate(tls.cert_path.read_bytes())
    serving.verify_directly_issued_by(ca)
    sans = serving.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == NAMES[:2]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert tls.not_after == T0 + LIFETIME
    assert tls.renew_at == T0 + LIFETIME - RENEW
    # Each name verifies in a real handshake with a client that trusts only the bundle.
    context = webhook_tls.server_context(tls)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    for host in NAMES:
        assert served_fingerprint(context, tls.ca_bundle, host) == tls.serving_fingerprint


def test_sound_certificates_are_kept(tmp_path: Path) -> None:
    first = ensure(tmp_path, T0)
    again, action = ensure_certificates(
        tmp_path, names=NAMES, lifetime=LIFETIME, renew_before=RENEW, now=T0 + timedelta(hours=7)
    )
    assert action == "kept"
    assert again == first


def test_new_names_reissue_the_certificate_from_the_same_ca(tmp_path: Path) -> None:
    first = ensure(tmp_path, T0)
    names = [*NAMES[:2], "webhook.example.net"]
    second, action = ensure_certificates(
        tmp_path, names=names, lifetime=LIFETIME, renew_before=RENEW, now=T0 + timedelta(hours=1)
    )
    assert action == "reissued"
    assert second.ca_bundle == first.ca_bundle  # the configuration needs no change
    assert second.serving_fingerprint != first.serving_fingerprint
    # Never beyond the CA's own expiry.
    assert second.not_after == T0 + LIFETIME
    context = webhook_tls.server_context(second)
    assert served_fingerprint(context, second.ca_bundle, "webhook.example.net") == (
        second.serving_fingerprint
    )


def test_renewal_makes_a_new_ca_and_keeps_the_old_one_in_the_bundle(tmp_path: Path) -> None:
    first = ensure(tmp_path, T0)
    context = webhook_tls.server_context(first)
    # A second before the renewal time nothing changes; at it, everything is new.
    assert ensure(tmp_path, first.renew_at - timedelta(seconds=1)) == first
    renewed_at = first.renew_at
    second, action = ensure_certificates(
        tmp_path, names=NAMES, lifetime=LIFETIME, renew_before=RENEW, now=renewed_at
    )
    assert action == "renewed"
    assert second.ca_fingerprint != first.ca_fingerprint
    new_ca, old_ca = certificates(second.ca_bundle)
    assert [
        new_ca.fingerprint(hashes.SHA256()).hex(),
        old_ca.fingerprint(hashes.SHA256()).hex(),
    ] == [
        second.ca_fingerprint,
        first.ca_fingerprint,
    ]
    assert (tmp_path / PREVIOUS_CA_CERT).read_bytes() == first.ca_bundle
    assert second.not_after == renewed_at + LIFETIME
    # The new bundle trusts the old certificate (still served while the API server learns the
    # new CA) and the new one once the listener reloads.
    assert served_fingerprint(context, second.ca_bundle, "127.0.0.1") == first.serving_fingerprint
    webhook_tls.reload_context(context, second)
    assert served_fingerprint(context, second.ca_bundle, "127.0.0.1") == second.serving_fingerprint
    # The old CA leaves the bundle once it has expired.
    third, action = ensure_certificates(
        tmp_path, names=NAMES, lifetime=LIFETIME, renew_before=RENEW, now=T0 + LIFETIME
    )
    assert action == "kept"
    assert certificates(third.ca_bundle) == [new_ca]
    assert not (tmp_path / PREVIOUS_CA_CERT).exists()


def test_a_long_renewal_lead_is_cut_to_half_the_lifetime(tmp_path: Path) -> None:
    tls, _ = ensure_certificates(
        tmp_path, names=NAMES, lifetime=LIFETIME, renew_before=LIFETIME * 2, now=T0
    )
    assert tls.renew_at == T0 + LIFETIME / 2 - webhook_tls.CLOCK_SKEW / 2
    # So the next start keeps it instead of renewing at once.
    _, action = ensure_certificates(
        tmp_path, names=NAMES, lifetime=LIFETIME, renew_before=LIFETIME * 2, now=T0
    )
    assert action == "kept"


@pytest.mark.parametrize("damaged", [CA_CERT, CA_KEY, SERVING_CERT, SERVING_KEY])
def test_damaged_files_are_replaced(tmp_path: Path, damaged: str) -> None:
    first = ensure(tmp_path, T0)
    (tmp_path / damaged).write_bytes(b"-----BEGIN GARBAGE-----\n")
    second, action = ensure_certificates(
        tmp_path, names=NAMES, lifetime=LIFETIME, renew_before=RENEW, now=T0
    )
    assert second.serving_fingerprint != first.serving_fingerprint
    if damaged in (CA_CERT, CA_KEY):
        assert action == "created"
        assert second.ca_fingerprint != first.ca_fingerprint
    else:
        assert action == "reissued"
        assert second.ca_bundle == first.ca_bundle
    context = webhook_tls.server_context(second)
    assert served_fingerprint(context, second.ca_bundle, "127.0.0.1") == second.serving_fingerprint


def test_a_key_of_another_certificate_is_not_taken(tmp_path: Path) -> None:
    first = ensure(tmp_path, T0)
    other = tmp_path / "other"
    ensure(other, T0)
    (tmp_path / SERVING_KEY).write_bytes((other / SERVING_KEY).read_bytes())
    second, action = ensure_certificates(
        tmp_path, names=NAMES, lifetime=LIFETIME, renew_before=RENEW, now=T0
    )
    assert action == "reissued"
    assert second.serving_fingerprint != first.serving_fingerprint


def test_a_certificate_of_another_ca_is_reissued(tmp_path: Path) -> None:
    ensure(tmp_path, T0)
    other = tmp_path / "other"
    stranger = ensure(other, T0)
    for name in (SERVING_CERT, SERVING_KEY):
        (tmp_path / name).write_bytes((other / name).read_bytes())
    second, action = ensure_certificates(
        tmp_path, names=NAMES, lifetime=LIFETIME, renew_before=RENEW, now=T0
    )
    assert action == "reissued"
    assert second.serving_fingerprint != stranger.serving_fingerprint


def test_serving_names() -> None:
    assert webhook_tls.serving_names(
        service_namespace="ns", service_name="hook", url_host="hook.ns.svc"
    ) == ["hook.ns.svc", "hook.ns.svc.cluster.local"]
    assert (
        webhook_tls.serving_names(service_namespace="ns", service_name="hook", url_host="::1")[-1]
        == "::1"
    )
