"""The checks that need no provider: the config file, ID token validation, the run flag."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.harness.daemons import BIN
from tunnel_server.identity import oidc, sso_mapping, users

GOOD: dict[str, Any] = {
    "issuer": "https://idp.example.com/",
    "clientId": "edgefleet",
    "clientSecret": "s3cret",
    "redirectUrl": "https://fleet.example.com:8443/api/v1/sso/callback",
    "groups": [
        {"group": "ops", "role": "operator", "clusters": ["b", "a"]},
        {"group": "admins", "role": "admin"},
    ],
}


def test_a_good_config_and_first_match_wins(tmp_path: Path) -> None:
    config = sso_mapping.parse(dict(GOOD), base=tmp_path)
    assert config.groups_claim == "groups"
    assert config.scopes == sso_mapping.DEFAULT_SCOPES
    grant = config.grant(["admins", "ops"])
    assert grant is not None
    assert (grant.role, grant.clusters, grant.group) == ("operator", ("a", "b"), "ops")
    assert config.grant(["nobody"]) is None


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"issuer": "http://idp.example.com/"}, "https URL"),
        ({"redirectUrl": "https://fleet.example.com/elsewhere"}, "redirectUrl"),
        ({"clientSecretFile": "x"}, "exactly one of clientSecret"),
        ({"groups": []}, "at least one mapping"),
        ({"groups": [{"group": "a", "role": "root"}]}, "unknown role"),
        ({"groups": [{"group": "a", "role": "admin", "clusters": ["c"]}]}, "no cluster scope"),
        ({"scopes": ["profile"]}, "openid"),
        ({"caFile": "missing.pem"}, "does not exist"),
        ({"colour": "blue"}, "unknown field"),
    ],
)
def test_a_bad_config_says_what_is_wrong(
    tmp_path: Path, change: dict[str, Any], words: str
) -> None:
    with pytest.raises(sso_mapping.SsoConfigError, match=words):
        sso_mapping.parse({**GOOD, **change}, base=tmp_path)


def test_plain_http_only_for_a_loopback_issuer(tmp_path: Path) -> None:
    config = sso_mapping.parse({**GOOD, "issuer": "http://127.0.0.1:4444/"}, base=tmp_path)
    assert config.issuer == "http://127.0.0.1:4444/"


def test_run_refuses_a_bad_config_with_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "sso.yaml"
    bad.write_text("issuer: ftp://nowhere\n")
    done = subprocess.run(
        [
            str(BIN / "tunnel-server"),
            "run",
            "--data-dir",
            str(tmp_path / "d"),
            "--sso-config",
            str(bad),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done
    assert "--sso-config" in done.stderr
    assert not (tmp_path / "d").exists()


def test_sso_user_names_are_readable_and_apart() -> None:
    one = users.sso_user_name(issuer="https://i/", subject="1", hint="Ann.Lee@Example.com")
    two = users.sso_user_name(issuer="https://i/", subject="2", hint="ann.lee@example.com")
    assert one.startswith("sso.ann.lee.example.com-")
    assert one != two


class _Keys:
    def __init__(self) -> None:
        self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.private.public_key()))
        self.jwks = {"keys": [{**jwk, "kid": "k1", "use": "sig", "alg": "RS256"}]}

    def sign(self, claims: dict[str, Any], **header: Any) -> str:
        return jwt.encode(claims, self.private, algorithm="RS256", headers={"kid": "k1", **header})


@pytest.fixture(scope="module")
def keys() -> _Keys:
    return _Keys()


def _provider(keys: _Keys, tmp_path: Path) -> oidc.Provider:
    provider = oidc.Provider(sso_mapping.parse(dict(GOOD), base=tmp_path))
    provider._keys = oidc._keys(keys.jwks)
    provider._keys_fetched = time.monotonic()
    return provider


def _claims(**change: Any) -> dict[str, Any]:
    now = int(time.time())
    return {
        "iss": GOOD["issuer"],
        "aud": GOOD["clientId"],
        "sub": "u1",
        "iat": now,
        "exp": now + 300,
        "nonce": "n1",
        **change,
    }


async def test_a_good_id_token_passes(keys: _Keys, tmp_path: Path) -> None:
    claims = await _provider(keys, tmp_path).check_id_token(keys.sign(_claims()), nonce="n1")
    assert claims["sub"] == "u1"


@pytest.mark.parametrize(
    "change",
    [
        {"iss": "https://evil.example.com/"},
        {"aud": "someone-else"},
        {"aud": ["edgefleet", "other"]},  # several audiences and no azp naming us
        {"exp": int(time.time()) - 3600},
        {"nonce": "another sign-in's"},
        {"nonce": None},
    ],
)
async def test_a_wrong_id_token_is_refused(
    keys: _Keys, tmp_path: Path, change: dict[str, Any]
) -> None:
    claims = {k: v for k, v in _claims(**change).items() if v is not None}
    with pytest.raises(oidc.OidcError) as refused:
        await _provider(keys, tmp_path).check_id_token(keys.sign(claims), nonce="n1")
    assert refused.value.code == "sso_token_invalid"


async def test_unsigned_or_foreign_tokens_are_refused(keys: _Keys, tmp_path: Path) -> None:
    provider = _provider(keys, tmp_path)
    unsigned = jwt.encode(_claims(), key="", algorithm="none")
    with pytest.raises(oidc.OidcError):
        await provider.check_id_token(unsigned, nonce="n1")
    forged = _Keys().sign(_claims())  # same kid, another key
    with pytest.raises(oidc.OidcError):
        await provider.check_id_token(forged, nonce="n1")
    hmac = jwt.encode(_claims(), "k" * 64, algorithm="HS256", headers={"kid": "k1"})
    with pytest.raises(oidc.OidcError):
        await provider.check_id_token(hmac, nonce="n1")
