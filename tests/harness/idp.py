"""A real OpenID provider for the SSO tests: Ory Hydra plus a login app with static users.

Hydra (built by scripts/kube-build into ``EDGEFLEET_KUBE_BIN``, in-memory SQLite, plain http
on loopback, PKCE enforced for every client) is the provider: discovery, the authorization
and token endpoints, signed ID tokens, JWKS. Hydra keeps no users; it asks a login app, as
every Hydra deployment does. The login app here (this module run with ``login-app``, a
separate process) plays Dex's static password connector: a login form checked against a
fixed table of users, each with an email and groups, and consent granted at once (a
first-party app, as Dex's ``skipApprovalScreen``). The groups reach the ID token as its
``groups`` claim through Hydra's consent session.

Dex itself cannot be had here (the Go module proxy serves no current Dex release: docs/sso.md).
"""

from __future__ import annotations

import argparse
import html
import json
import secrets
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.harness.kube import kube_bin_dir
from tests.harness.procs import ManagedProcess, ServiceError, free_port
from tests.harness.waiting import NotSeen, eventually

START_TIMEOUT = 60.0

USERS: dict[str, dict[str, Any]] = {
    "alice": {
        "password": "alice-password",
        "email": "alice@example.com",
        "groups": ["fleet-admins", "staff"],
    },
    "bob": {
        "password": "bob-password",
        "email": "bob@example.com",
        "groups": ["fleet-site-a", "staff"],
    },
    "carol": {"password": "carol-password", "email": "carol@example.com", "groups": ["staff"]},
}
"""The static users: alice is an admin, bob a viewer of cluster site-a, carol in no mapped
group (the tests' SSO config maps fleet-admins and fleet-site-a only)."""


def _call(method: str, url: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(  # noqa: S310 - loopback URLs of ours
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310 - ours
        result: dict[str, Any] = json.loads(answer.read())
        return result


@dataclass(kw_only=True)
class Provider:
    workdir: Path
    client_id: str = "edgefleet"
    client_secret: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    public_port: int = field(default_factory=free_port)
    admin_port: int = field(default_factory=free_port)
    login_port: int = field(default_factory=free_port)
    processes: list[ManagedProcess] = field(default_factory=list)

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.public_port}/"

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def start(self) -> None:
        binary = kube_bin_dir() / "hydra"
        if not binary.is_file():
            raise ServiceError(f"{binary} is missing: run scripts/kube-build (it builds hydra)")
        config = self.workdir / "hydra.json"  # JSON is YAML: Hydra reads it as its config
        config.write_text(
            json.dumps(
                {
                    "dsn": "memory",
                    "serve": {
                        "public": {"host": "127.0.0.1", "port": self.public_port},
                        "admin": {"host": "127.0.0.1", "port": self.admin_port},
                    },
                    "urls": {
                        "self": {"issuer": self.issuer},
                        "login": f"http://127.0.0.1:{self.login_port}/login",
                        "consent": f"http://127.0.0.1:{self.login_port}/consent",
                    },
                    "secrets": {"system": [secrets.token_hex(24)]},
                    "oauth2": {"pkce": {"enforced": True}},
                    "log": {"level": "info"},
                }
            )
        )
        self.processes.append(
            ManagedProcess(
                "hydra",
                [str(binary), "serve", "all", "--dev", "--sqa-opt-out", "-c", str(config)],
                log_path=self.workdir / "hydra.log",
            )
        )
        self.processes.append(
            ManagedProcess(
                "idp-login",
                [
                    sys.executable,
                    "-m",
                    "tests.harness.idp",
                    "login-app",
                    "--port",
                    str(self.login_port),
                    "--admin",
                    self.admin,
                ],
                log_path=self.workdir / "idp-login.log",
            )
        )
        self._wait(self.issuer + ".well-known/openid-configuration", self.processes[0])
        # Hydra makes its other signing keys on the first JWKS request: make them now, not
        # within the server's 10 s budget for a call to the provider.
        self._wait(self.issuer + ".well-known/jwks.json", self.processes[0])
        self._wait(f"http://127.0.0.1:{self.login_port}/healthz", self.processes[1])

    def _wait(self, url: str, proc: ManagedProcess) -> None:
        def up() -> bool:
            proc.check_running()
            # The first discovery call makes Hydra generate its RSA signing key, which takes
            # seconds on a busy machine; a client that gives up first cancels the generation.
            with urllib.request.urlopen(url, timeout=START_TIMEOUT) as answer:  # noqa: S310
                return bool(answer.status == 200)

        try:
            eventually(up, what=f"{url} answering", within=START_TIMEOUT, ignore=(OSError,))
        except NotSeen as error:
            raise ServiceError(f"{error}\n{proc.tail()}") from error

    def add_client(self, redirect_uri: str) -> None:
        """Register this server as a confidential client (client_secret_basic)."""
        _call(
            "POST",
            f"{self.admin}/admin/clients",
            {
                "client_id": self.client_id,
                "client_secret": self.client_secret,
                "redirect_uris": [redirect_uri],
                "grant_types": ["authorization_code"],
                "response_types": ["code"],
                "scope": "openid profile email groups",
                "token_endpoint_auth_method": "client_secret_basic",
            },
        )

    def stop(self) -> None:
        for proc in reversed(self.processes):
            proc.stop()


# ------------------------------------------------------------------ the login app (a process)

_FORM = """<!doctype html><html><head><title>Sign in</title></head><body>
<h1>Test IdP</h1><p>{error}</p>
<form method="post" action="/login">
<input type="hidden" name="login_challenge" value="{challenge}">
<label>Username <input name="login" id="login"></label>
<label>Password <input name="password" id="password" type="password"></label>
<button type="submit" id="submit-login">Login</button>
</form></body></html>"""


def _login_app(admin: str) -> Any:
    from aiohttp import web  # noqa: PLC0415 - only the login app process needs it

    def form(challenge: str, error: str = "") -> web.Response:
        body = _FORM.format(challenge=html.escape(challenge), error=html.escape(error))
        return web.Response(text=body, content_type="text/html")

    async def login_page(request: web.Request) -> web.Response:
        return form(request.query.get("login_challenge", ""))

    async def login_post(request: web.Request) -> web.Response:
        data = await request.post()
        challenge, name = str(data.get("login_challenge", "")), str(data.get("login", ""))
        user = USERS.get(name)
        if user is None or not secrets.compare_digest(
            user["password"], str(data.get("password", ""))
        ):
            return form(challenge, "Invalid username or password")
        answer = _call(
            "PUT",
            f"{admin}/admin/oauth2/auth/requests/login/accept?login_challenge={challenge}",
            {"subject": name, "remember": False},
        )
        raise web.HTTPFound(answer["redirect_to"])

    async def consent(request: web.Request) -> web.Response:
        challenge = request.query.get("consent_challenge", "")
        asked = _call(
            "GET", f"{admin}/admin/oauth2/auth/requests/consent?consent_challenge={challenge}"
        )
        user = USERS[asked["subject"]]
        answer = _call(
            "PUT",
            f"{admin}/admin/oauth2/auth/requests/consent/accept?consent_challenge={challenge}",
            {
                "grant_scope": asked["requested_scope"],
                "grant_access_token_audience": asked["requested_access_token_audience"],
                "session": {
                    "id_token": {
                        "email": user["email"],
                        "email_verified": True,
                        "preferred_username": asked["subject"],
                        "groups": user["groups"],
                    }
                },
            },
        )
        raise web.HTTPFound(answer["redirect_to"])

    async def healthz(_request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/login", login_page)
    app.router.add_post("/login", login_post)
    app.router.add_get("/consent", consent)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/favicon.ico", healthz)  # a browser asks; a 404 would be a page error
    return app


def main() -> None:
    parser = argparse.ArgumentParser(prog="tests.harness.idp")
    parser.add_argument("mode", choices=["login-app"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--admin", required=True)
    args = parser.parse_args()
    from aiohttp import web  # noqa: PLC0415 - see _login_app

    web.run_app(_login_app(args.admin), host="127.0.0.1", port=args.port, print=None)


if __name__ == "__main__":
    main()
