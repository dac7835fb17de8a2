"""SSO sign-in end to end: a real tunnel server, a real OpenID provider, the code flow over HTTP."""

from __future__ import annotations

import json
import threading
import urllib.parse

import pytest

from tests.integration.sso.conftest import CLUSTER, Browser, Sso
from tests.integration.users.conftest import call
from tunnel_server.client.sso_login import SsoLoginError, sso_login


def _callback_prefix(sso: Sso) -> str:
    return f"{sso.server.url}/api/v1/sso/callback"


def _sign_in(sso: Sso, user: str, browser: Browser | None = None) -> str:
    """The console session token ``user`` gets from the whole browser flow."""
    browser = browser or Browser(sso.server.ssl_context())
    callback = browser.sign_in_at_idp(
        f"{sso.server.url}/api/v1/sso/login", user=user, until=_callback_prefix(sso)
    )
    landed = browser.request(callback)
    assert landed.status == 302, landed
    assert landed.location.startswith(f"{sso.server.url}/#session="), landed.location
    return landed.location.split("#session=", 1)[1]


def test_sso_is_announced(sso: Sso) -> None:
    answer = call(sso.server, "GET", "/api/v1/sso")
    assert answer.status == 200
    assert answer.body == {"enabled": True, "providerName": "SSO"}  # the default name


def test_admin_and_scoped_viewer_sign_in(sso: Sso) -> None:
    admin = _sign_in(sso, "alice")
    me = call(sso.server, "GET", "/api/v1/me", token=admin)
    assert me.status == 200, me
    assert me.body["role"] == "admin"
    assert me.body["clusters"] is None
    assert me.body["user"].startswith("sso.alice-")

    viewer = _sign_in(sso, "bob")
    me = call(sso.server, "GET", "/api/v1/me", token=viewer)
    assert me.status == 200, me
    assert (me.body["role"], me.body["clusters"]) == ("viewer", [CLUSTER])
    refused = call(sso.server, "POST", "/api/v1/tokens", token=viewer, body=b"{}")
    assert refused.status == 403, refused
    # The admin gets past authorization (the empty body is then refused).
    allowed = call(sso.server, "POST", "/api/v1/tokens", token=admin, body=b"{}")
    assert allowed.status not in (401, 403), allowed


def test_a_person_in_no_mapped_group_is_refused(sso: Sso) -> None:
    browser = Browser(sso.server.ssl_context())
    callback = browser.sign_in_at_idp(
        f"{sso.server.url}/api/v1/sso/login", user="carol", until=_callback_prefix(sso)
    )
    refused = browser.request(callback)
    assert refused.status == 403, refused
    problem = refused.json()
    assert problem["reason"] == "sso_group_unmapped"
    assert "staff" in problem["detail"]


def _with_query(url: str, **changes: str) -> str:
    parts = urllib.parse.urlsplit(url)
    query = dict(urllib.parse.parse_qsl(parts.query))
    query.update(changes)
    return parts._replace(query=urllib.parse.urlencode(query)).geturl()


def test_a_tampered_or_foreign_state_is_refused(sso: Sso) -> None:
    browser = Browser(sso.server.ssl_context())
    callback = browser.sign_in_at_idp(
        f"{sso.server.url}/api/v1/sso/login", user="alice", until=_callback_prefix(sso)
    )
    tampered = browser.request(_with_query(callback, state="x" * 43))
    assert tampered.status == 400, tampered
    assert tampered.json()["reason"] == "sso_state_invalid"
    # Another browser (no cookie of this sign-in) cannot finish it: that is login CSRF.
    foreign = Browser(sso.server.ssl_context()).request(callback)
    assert foreign.status == 400, foreign
    assert foreign.json()["reason"] == "sso_state_invalid"


def test_a_replayed_callback_or_code_is_refused(sso: Sso) -> None:
    browser = Browser(sso.server.ssl_context())
    _sign_in(sso, "alice", browser)
    first = browser.sign_in_at_idp(
        f"{sso.server.url}/api/v1/sso/login", user="alice", until=_callback_prefix(sso)
    )
    assert browser.request(first).status == 302
    again = browser.request(first)
    assert again.status == 400, again
    assert again.json()["reason"] == "sso_state_invalid"
    # The used code under a fresh state of this browser: the provider refuses it.
    _, started = browser.follow(f"{sso.server.url}/api/v1/sso/login", until="http://")
    fresh_state = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(started.location).query))[
        "state"
    ]
    code = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(first).query))["code"]
    replay = browser.request(_with_query(first, state=fresh_state, code=code))
    assert replay.status == 400, replay
    assert replay.json()["reason"] == "sso_code_refused"


def test_the_cli_signs_in_through_its_loopback(sso: Sso) -> None:
    browser = Browser(sso.server.ssl_context())
    done = threading.Event()
    landed: list[int] = []

    def drive(url: str) -> None:
        # The person's browser: the provider's form, then the redirect to the CLI's loopback.
        try:
            loopback = browser.sign_in_at_idp(url, user="bob", until=_callback_prefix(sso))
            _, answer = browser.follow(loopback, until="http://127.0.0.1")
            assert answer.location.startswith("http://127.0.0.1:"), answer
            assert "session" not in answer.location
            landed.append(browser.request(answer.location).status)
        finally:
            done.set()

    token = sso_login(
        server=sso.server.url,
        ca_pem=sso.server.ca_pem,
        browser=drive,
        timeout=60,
        tell=lambda _text: None,
    )
    assert done.wait(30)
    assert landed == [200]
    me = call(sso.server, "GET", "/api/v1/me", token=token)
    assert (me.body["role"], me.body["clusters"]) == ("viewer", [CLUSTER])


def test_a_cli_code_works_once_and_only_with_its_secret(sso: Sso) -> None:
    bad = call(
        sso.server,
        "POST",
        "/api/v1/sso/exchange",
        body=json.dumps({"code": "a" * 43, "verifier": "b" * 43}).encode(),
    )
    assert bad.status == 400
    assert bad.body["reason"] == "sso_code_invalid"
    unknown = call(
        sso.server, "POST", "/api/v1/sso/exchange", body=json.dumps({"code": "a", "x": 1}).encode()
    )
    assert (unknown.status, unknown.body["reason"]) == (400, "unknown_field")


def test_the_cli_gives_up_when_nobody_signs_in(sso: Sso) -> None:
    with pytest.raises(SsoLoginError, match="within"):
        sso_login(
            server=sso.server.url,
            ca_pem=sso.server.ca_pem,
            open_browser=False,
            timeout=1,
            tell=lambda _text: None,
        )


def test_a_revoked_sso_user_is_cut_off_and_made_again_at_the_next_sign_in(sso: Sso) -> None:
    first = _sign_in(sso, "alice")
    name = call(sso.server, "GET", "/api/v1/me", token=first).body["user"]
    sso.server.cli("users", "revoke", str(name))
    cut = call(sso.server, "GET", "/api/v1/me", token=first)
    assert (cut.status, cut.body["reason"]) == (401, "user_revoked")
    again = _sign_in(sso, "alice")
    me = call(sso.server, "GET", "/api/v1/me", token=again)
    assert (me.status, me.body["user"], me.body["role"]) == (200, name, "admin")
    assert call(sso.server, "GET", "/api/v1/me", token=first).status == 401
