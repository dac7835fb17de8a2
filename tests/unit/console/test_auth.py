"""Console session tokens: genuine, forged, expired, and the key file."""

from __future__ import annotations

import stat
from pathlib import Path

from tunnel_server.api.signer import KEY_FILE, SessionSigner


def test_issue_and_check(tmp_path: Path) -> None:
    signer = SessionSigner.load_or_create(tmp_path)
    token, expires = signer.issue(now=1000.0, ttl=60)
    assert expires == 1060.0
    assert signer.check(token, now=1001.0) == 1060.0
    assert token.startswith("s1.1060.")


def test_the_key_survives_a_restart_and_is_private(tmp_path: Path) -> None:
    token, _ = SessionSigner.load_or_create(tmp_path).issue(now=0, ttl=60)
    assert SessionSigner.load_or_create(tmp_path).check(token, now=0) == 60.0
    assert stat.S_IMODE((tmp_path / KEY_FILE).stat().st_mode) == 0o600
    (tmp_path / KEY_FILE).unlink()
    assert SessionSigner.load_or_create(tmp_path).check(token, now=0) is None


def test_forgeries(tmp_path: Path) -> None:
    signer = SessionSigner.load_or_create(tmp_path)
    token, _ = signer.issue(now=0, ttl=60)
    prefix, expiry, nonce, mac = token.split(".")
    for forged in (
        f"{prefix}.99999999999.{nonce}.{mac}",  # a later expiry with the old MAC
        f"{prefix}.{expiry}.{nonce}x.{mac}",
        f"{prefix}.{expiry}.{nonce}",
        "s2." + token[3:],
        "",
        "s1.x.y.z",
    ):
        assert signer.check(forged, now=0) is None, forged
