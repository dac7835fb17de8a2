"""CA rotation on the agent: take the cloud's announcement of a next CA, check it, store it.

The cloud sends ``{"current": PEM, "next": PEM | null, "next_cross": PEM | null}`` on a stream
it opens to our built-in ``ca-announce`` target (docs/tunnel-protocol.md) while its operator
rotates the CA (docs/security.md, "Rotating the CA"). Rules, checked here before anything is
written:

* The stream rides the session whose server certificate we verified against the CA we pin,
  but that is not enough: anyone the cloud lets open streams to a node (the API's node proxy)
  could write to it. So a next CA is stored only with ``next_cross``: the same subject and key
  signed by the PINNED CA, which only the holder of the pinned CA's private key can make.
* ``next`` must be a self-signed CA certificate (basic constraints ``ca``) valid now.
* ``current`` must be the CA we pin or the next CA we stored: anything else is refused. When it
  is the stored next CA, the server has promoted it: the caller renews our certificate from
  it (``Outcome.promoted``), and the renewal moves the pin (``join.renew_certificate``).
* Every field is bounded (``MAX_PEM_BYTES``); the whole message by ``MAX_ANNOUNCEMENT_BYTES``.

``ca-next.crt`` is written atomically; TLS to the server then trusts the pinned and the next CA
(``Identity.client_ssl_context``). ``cryptography`` is imported by the functions that parse
certificates, not on import: an agent loads it only when an announcement comes or a next CA
is stored (issue 18, as in ``identity``).
"""

from __future__ import annotations

import enum
import hmac
import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from daemon_support.files import write_atomic
from edge_agent.identity import NEXT_CA_FILE, spki_hash

if TYPE_CHECKING:
    from pathlib import Path

    from cryptography import x509

TARGET = "ca-announce"
"""Our built-in target the cloud sends announcements to."""
MAX_ANNOUNCEMENT_BYTES = 64 * 1024
"""The whole message: three certificates of under 1 KB each fit many times over."""
MAX_PEM_BYTES = 16 * 1024
"""One certificate's PEM."""
READ_TIMEOUT = 10.0
"""Seconds for the whole message to arrive and end: the cloud sends it in one go."""


class AnnouncementError(ValueError):
    """The announcement is malformed or not endorsed by the pinned CA; nothing was stored."""


class Outcome(enum.Enum):
    STORED = "stored"
    """A new next CA, checked and written to ``ca-next.crt``."""
    UNCHANGED = "unchanged"
    """Nothing new: the next CA is the one stored already, or there is none."""
    PROMOTED = "promoted"
    """The server's current CA is our stored next one: renew from it now."""


def _pem_field(data: dict[str, Any], key: str, *, required: bool) -> x509.Certificate | None:
    value = data.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value or len(value) > MAX_PEM_BYTES:
        raise AnnouncementError(
            f"{key!r} must be a PEM certificate of at most {MAX_PEM_BYTES} bytes"
        )
    from cryptography import x509  # noqa: PLC0415 - see the module docstring

    try:
        return x509.load_pem_x509_certificate(value.encode())
    except ValueError as error:
        raise AnnouncementError(f"{key!r} is not a PEM certificate ({error})") from None


def _same_key(a: x509.Certificate, b: x509.Certificate) -> bool:
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415 - see the top

    der, spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return hmac.compare_digest(
        a.public_key().public_bytes(der, spki), b.public_key().public_bytes(der, spki)
    )


def _is_ca(certificate: x509.Certificate) -> bool:
    from cryptography import x509  # noqa: PLC0415 - see the module docstring

    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    except x509.ExtensionNotFound:
        return False
    return constraints.value.ca


def check_next(
    next_ca: x509.Certificate, cross: x509.Certificate, *, pinned: x509.Certificate, now: datetime
) -> None:
    """Raise AnnouncementError unless ``next_ca`` is a valid CA the pinned CA endorsed."""
    from cryptography.exceptions import InvalidSignature  # noqa: PLC0415 - see the top

    if not _is_ca(next_ca) or not _is_ca(cross):
        raise AnnouncementError("the next CA is not a CA certificate")
    if not next_ca.not_valid_before_utc <= now < next_ca.not_valid_after_utc:
        raise AnnouncementError("the next CA is not valid now (check this machine's clock)")
    try:
        next_ca.verify_directly_issued_by(next_ca)
        cross.verify_directly_issued_by(pinned)
    except (ValueError, TypeError, InvalidSignature):
        raise AnnouncementError(
            "the next CA is not self-signed or not endorsed (cross-signed) by the pinned CA"
        ) from None
    if not _same_key(cross, next_ca) or cross.subject != next_ca.subject:
        raise AnnouncementError("the cross-signature is for another key or subject")


def apply_announcement(
    raw: bytes, *, pinned: x509.Certificate, data_dir: Path, now: datetime | None = None
) -> tuple[Outcome, str | None]:
    """Check ``raw`` (see module docs) and store a new next CA; the outcome and its hash."""
    if len(raw) > MAX_ANNOUNCEMENT_BYTES:
        raise AnnouncementError(f"announcement over {MAX_ANNOUNCEMENT_BYTES} bytes")
    try:
        data = json.loads(raw)
    except ValueError:
        raise AnnouncementError("announcement is not JSON") from None
    if not isinstance(data, dict):
        raise AnnouncementError("announcement is not a JSON object")
    current = _pem_field(data, "current", required=True)
    next_ca = _pem_field(data, "next", required=False)
    cross = _pem_field(data, "next_cross", required=next_ca is not None)
    assert current is not None  # required=True  # noqa: S101 - for the type checker
    stored = load_next(data_dir)
    if _same_key(current, pinned):
        if next_ca is None or cross is None:
            return Outcome.UNCHANGED, None
        check_next(next_ca, cross, pinned=pinned, now=now or datetime.now(UTC))
        if stored is not None and _same_key(stored, next_ca):
            return Outcome.UNCHANGED, spki_hash(next_ca)
        from cryptography.hazmat.primitives import serialization  # noqa: PLC0415 - see the top

        write_atomic(data_dir / NEXT_CA_FILE, next_ca.public_bytes(serialization.Encoding.PEM))
        return Outcome.STORED, spki_hash(next_ca)
    if stored is not None and _same_key(current, stored):
        return Outcome.PROMOTED, spki_hash(stored)
    raise AnnouncementError(
        f"the server's current CA {spki_hash(current)} is neither the pinned CA nor the stored"
        " next one: this node must join again"
    )


def load_next(data_dir: Path) -> x509.Certificate | None:
    """The stored next CA, None when there is none (or it does not parse: it is re-announced)."""
    try:
        with (data_dir / NEXT_CA_FILE).open("rb") as file:
            pem = file.read(MAX_PEM_BYTES + 1)
    except FileNotFoundError:
        return None  # no rotation under way: cryptography is not even loaded
    from cryptography import x509  # noqa: PLC0415 - see the module docstring

    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError:
        return None
