"""Console session tokens: genuine, forged, expired, bound to a principal, and the key file."""

from __future__ import annotations

import base64
import hashlib
import hmac
import stat
from pathlib import Path

import pytest

from tunnel_server.api.signer import KEY_FILE, SessionSigner


def test_issue_and_check(tmp_path: Path) -> None:
    signer = SessionSigner.load_or_create(tmp_path)
    token, expires = signer.issue(now=1000.0, ttl=60)
    assert expires == 1060.0
    claim = signer.check(token, now=1001.0)
    assert claim is not None
    assert (claim.expires_at, claim.principal) == (1060.0, "admin")
    assert claim.session_id == SessionSigner.session_id(token)
    assert token.startswith("s2.1060.")


def test_a_session_names_the_user_that_made_it(tmp_path: Path) -> None:
    signer = SessionSigner.load_or_create(tmp_path)
    token, _ = signer.issue(now=0, ttl=60, principal="abcdef012345")
    claim = signer.check(token, now=0)
    assert claim is not None
    assert claim.principal == "abcdef012345"
    # Another principal under the same MAC is a forgery.
    forged = token.replace("abcdef012345", "admin")
    assert signer.check(forged, now=0) is None
    with pytest.raises(ValueError, match="principal"):
        signer.issue(now=0, ttl=60, principal="not.a.user.id")


def test_the_key_survives_a_restart_and_is_private(tmp_path: Path) -> None:
    token, _ = SessionSigner.load_or_create(tmp_path).issue(now=0, ttl=60)
    claim = SessionSigner.load_or_create(tmp_path).check(token, now=0)
    assert claim is not None
    assert claim.expires_at == 60.0
    assert stat.S_IMODE((tmp_path / KEY_FILE).stat().st_mode) == 0o600
    (tmp_path / KEY_FILE).unlink()
    assert SessionSigner.load_or_create(tmp_path).check(token, now=0) is None


def test_sessions_of_the_older_form_are_the_admin_s(tmp_path: Path) -> None:
    """``s1.<expiry>.<nonce>.<mac>`` tokens, made before users existed, were all admin's."""
    SessionSigner.load_or_create(tmp_path)
    key = bytes.fromhex((tmp_path / KEY_FILE).read_text().strip())
    payload = "s1.1060.0123456789abcdef"
    digest = hmac.new(key, payload.encode(), hashlib.sha256).digest()
    legacy = payload + "." + base64.urlsafe_b64encode(digest).decode().rstrip("=")
    claim = SessionSigner.load_or_create(tmp_path).check(legacy, now=0)
    assert claim is not None
    assert (claim.expires_at, claim.session_id, claim.principal) == (
        1060.0,
        "0123456789abcdef",
        "admin",
    )


def test_forgeries(tmp_path: Path) -> None:
    signer = SessionSigner.load_or_create(tmp_path)
    token, _ = signer.issue(now=0, ttl=60)
    prefix, expiry, nonce, principal, mac = token.split(".")
    for forged in (
        f"{prefix}.99999999999.{nonce}.{principal}.{mac}",  # a later expiry with the old MAC
        f"{prefix}.{expiry}.{nonce}x.{principal}.{mac}",
        f"{prefix}.{expiry}.{nonce}.{principal}",
        f"{prefix}.{expiry}.{nonce}.{mac}",
        "s1." + token[3:],
        "s3." + token[3:],
        "",
        "s2.x.y.z.w",
        "s1.x.y.z",
    ):
        assert signer.check(forged, now=0) is None, forged
