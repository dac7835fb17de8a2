"""A real tunnel server with users of each role, made through its API, and a raw HTTPS client."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.harness.daemons import Server

SCOPED_CLUSTER = "c-in"
"""The one cluster the scoped operator may reach."""


@dataclass(frozen=True, kw_only=True)
class Answer:
    status: int
    body: dict[str, Any]
    headers: dict[str, str]


def call(
    server: Server,
    method: str,
    path: str,
    *,
    token: str = "",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> Answer:
    """One request on a fresh connection; an event stream's body is not read (it never ends)."""
    connection = http.client.HTTPSConnection(
        "127.0.0.1", server.port, context=server.ssl_context(), timeout=15
    )
    sent = {"Content-Type": "application/json", **(headers or {})}
    if token:
        sent["Authorization"] = f"Bearer {token}"
    try:
        connection.request(method, path, body=body, headers=sent)
        response = connection.getresponse()
        kind = response.getheader("Content-Type", "")
        raw = b"" if kind.startswith("text/event-stream") else response.read()
        try:
            parsed = json.loads(raw) if raw else {}
        except ValueError:
            parsed = {"raw": raw.decode(errors="replace")}
        return Answer(
            status=response.status,
            body=parsed if isinstance(parsed, dict) else {"items": parsed},
            headers=dict(response.getheaders()),
        )
    finally:
        connection.close()


@dataclass(kw_only=True)
class UsersSystem:
    server: Server
    tokens: dict[str, str]
    """Bearer value by caller label: admin-token, admin-user, operator, viewer."""
    workdir: Path

    def session(self, token: str) -> str:
        answer = call(self.server, "POST", "/api/v1/sessions", token=token)
        assert answer.status == 201, answer
        session: str = answer.body["token"]
        return session

    def create_user(
        self,
        name: str,
        role: str,
        *,
        clusters: list[str] | None = None,
        ttl: float | None = None,
    ) -> str:
        """``POST /api/v1/users`` as the admin token; the new user's first token."""
        body: dict[str, Any] = {"name": name, "role": role}
        if clusters is not None:
            body["clusters"] = clusters
        if ttl is not None:
            body["ttlSeconds"] = ttl
        answer = self.admin("POST", "/api/v1/users", body)
        assert answer.status == 201, answer
        token: str = answer.body["token"]
        return token

    def admin(self, method: str, path: str, body: dict[str, Any] | None = None) -> Answer:
        """One call as the bootstrap admin token, with ``body`` as JSON."""
        raw = None if body is None else json.dumps(body).encode()
        return call(self.server, method, path, token=self.server.admin_token, body=raw)


@pytest.fixture(scope="module")
def users_system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UsersSystem]:
    workdir = tmp_path_factory.mktemp("users")
    server = Server(workdir=workdir)
    server.start()
    try:
        system = UsersSystem(server=server, tokens={}, workdir=workdir)
        system.tokens["admin-token"] = server.admin_token
        system.tokens["admin-user"] = system.create_user("root-user", "admin")
        system.tokens["operator"] = system.create_user(
            "scoped-op", "operator", clusters=[SCOPED_CLUSTER]
        )
        system.tokens["viewer"] = system.create_user("watcher", "viewer")
        yield system
    finally:
        server.stop()
