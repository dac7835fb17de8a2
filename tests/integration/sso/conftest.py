"""A real tunnel server with SSO sign-in through a real OpenID provider (tests/harness/idp.py)."""

from __future__ import annotations

import http.cookiejar
import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.harness import idp
from tests.harness.daemons import Server
from tests.harness.procs import free_port

CLUSTER = "site-a"


@dataclass(frozen=True, kw_only=True)
class Sso:
    server: Server
    provider: idp.Provider


def write_config(path: Path, *, provider: idp.Provider, server_port: int) -> Path:
    secret = path.parent / "client-secret"
    secret.write_text(provider.client_secret + "\n")
    path.write_text(
        json.dumps(
            {
                "issuer": provider.issuer,
                "clientId": provider.client_id,
                "clientSecretFile": str(secret),
                "redirectUrl": f"https://127.0.0.1:{server_port}/api/v1/sso/callback",
                "groups": [
                    {"group": "fleet-admins", "role": "admin"},
                    {"group": "fleet-site-a", "role": "viewer", "clusters": [CLUSTER]},
                ],
            }
        )
    )
    return path


@pytest.fixture(scope="module")
def sso(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sso]:
    workdir = tmp_path_factory.mktemp("sso")
    provider = idp.Provider(workdir=workdir)
    port = free_port()
    server = Server(
        workdir=workdir,
        port=port,
        extra_args=(
            "--sso-config",
            str(write_config(workdir / "sso.json", provider=provider, server_port=port)),
        ),
    )
    try:
        provider.start()
        provider.add_client(f"https://127.0.0.1:{port}/api/v1/sso/callback")
        server.start()
        yield Sso(server=server, provider=provider)
    finally:
        server.stop()
        provider.stop()


class _Stay(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *_args: Any, **_kwargs: Any) -> None:
        return None


@dataclass(frozen=True, kw_only=True)
class Answer:
    status: int
    location: str
    body: bytes

    def json(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.body)
        return result


class Browser:
    """What a browser does for the flow: cookies, forms, redirects one at a time."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.cookies = http.cookiejar.CookieJar()
        self._opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(self.cookies),
            urllib.request.HTTPSHandler(context=context),
            _Stay(),
        )

    def request(self, url: str, *, form: dict[str, str] | None = None) -> Answer:
        data = None if form is None else urllib.parse.urlencode(form).encode()
        try:
            with self._opener.open(url, data=data, timeout=15) as response:
                return Answer(status=response.status, location="", body=response.read())
        except urllib.error.HTTPError as error:
            with error:
                location = urllib.parse.urljoin(url, error.headers.get("Location", ""))
                return Answer(status=error.code, location=location, body=error.read())

    def follow(self, url: str, *, until: str = "") -> tuple[str, Answer]:
        """GET ``url`` and its redirects until a page, or a redirect to ``until`` (not fetched).

        Returns the URL of the last request and its answer.
        """
        answer = self.request(url)
        for _ in range(20):
            if answer.status not in (302, 303) or (until and answer.location.startswith(until)):
                return url, answer
            url = answer.location
            answer = self.request(url)
        raise AssertionError(f"too many redirects from {url}")

    def sign_in_at_idp(self, start: str, *, user: str, until: str) -> str:
        """From a sign-in URL through the provider's login form; the URL it sends us on to."""
        login_url, page = self.follow(start)
        assert page.status == 200, page
        assert b"Sign in" in page.body, page
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(login_url).query)
        posted = self.request(
            login_url.split("?")[0],
            form={
                "login_challenge": query["login_challenge"][0],
                "login": user,
                "password": idp.USERS[user]["password"],
            },
        )
        assert posted.status == 302, posted
        _, back = self.follow(posted.location, until=until)
        assert back.location.startswith(until), back
        return back.location
