"""The audit log against a real ``tunnel-server``: what is recorded, who may read it, retention."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict

from tests.harness.daemons import Server
from tests.harness.waiting import eventually_async

Answer = tuple[int, CIMultiDict[str], Any]


async def call(
    server: Server,
    method: str,
    path: str,
    *,
    token: str | None = None,
    body: object = None,
    raw: bytes | None = None,
    request_id: str | None = None,
) -> Answer:
    """One API exchange: status, headers, JSON body (or None)."""
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if request_id is not None:
        headers["X-Request-Id"] = request_id
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    async with (
        aiohttp.ClientSession() as session,
        session.request(
            method, server.url + path, data=data, headers=headers, ssl=server.ssl_context()
        ) as answer,
    ):
        text = await answer.read()
        try:
            parsed = json.loads(text) if text else None
        except ValueError:
            parsed = None
        return answer.status, answer.headers.copy(), parsed


async def audit(server: Server, query: str = "") -> list[dict[str, Any]]:
    status, _, body = await call(server, "GET", "/api/v1/audit" + query, token=server.admin_token)
    assert status == 200, body
    items: list[dict[str, Any]] = body["items"]
    return items


def user_token(server: Server, name: str, role: str) -> str:
    return server.cli("users", "create", name, "--role", role).strip().splitlines()[-1]


def log_lines(server: Server, request_id: str) -> list[str]:
    text = (server.workdir / "tunnel-server.log").read_text()
    return [
        line
        for line in text.splitlines()
        if "tunnel_server.audit: api write" in line and f"request_id={request_id} " in line
    ]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    server = Server(workdir=tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def test_writes_of_every_kind_are_recorded(server: Server) -> None:
    admin = server.admin_token
    viewer = user_token(server, "vera", "viewer")

    # A write that succeeds, with the client's own request id.
    status, headers, created = await call(
        server, "POST", "/api/v1/tokens", token=admin, body={"name": "n-1"}, request_id="req-ok.1"
    )
    assert status == 201, created
    assert headers["X-Request-Id"] == "req-ok.1"
    # A write refused by role: a viewer may not create tokens.
    status, headers, refused = await call(
        server, "POST", "/api/v1/tokens", token=viewer, body={"name": "n-2"}, request_id="req-403"
    )
    assert status == 403, refused
    # A malformed body; the request id sent is not a safe token, so the server makes one.
    status, headers, malformed = await call(
        server, "POST", "/api/v1/tokens", token=admin, raw=b"{not json", request_id="bad id\u00e9"
    )
    assert status == 400, malformed
    made = headers["X-Request-Id"]
    assert re.fullmatch(r"[0-9a-f]{24}", made), made
    # No credential at all.
    status, _, _ = await call(
        server, "POST", "/api/v1/devices/dev-9/move", body={"node": "x"}, request_id="req-anon"
    )
    assert status == 401
    # A read is not a write: not recorded, but it carries a request id too.
    status, headers, _ = await call(server, "GET", "/api/v1/tokens", token=admin)
    assert status == 200
    assert headers["X-Request-Id"]

    records = {record["requestId"]: record for record in await audit(server)}
    # The CLI that made the viewer is an API client too: its write is recorded with the rest.
    [made_user] = [r for r in records.values() if r["action"] == "users.create"]
    assert (made_user["user"], made_user["target"], made_user["status"]) == ("admin", "vera", 201)
    del records[made_user["requestId"]]
    assert set(records) == {"req-ok.1", "req-403", made, "req-anon"}, records
    ok = records["req-ok.1"]
    assert ok["user"] == "admin"
    assert ok["role"] == "admin"
    assert (ok["method"], ok["route"], ok["action"]) == ("POST", "/api/v1/tokens", "tokens.create")
    assert ok["target"] == created["id"]
    assert (ok["status"], ok["reason"]) == (201, None)
    assert ok["peer"] == "127.0.0.1"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d.*(Z|\+00:00)", ok["at"]), ok["at"]
    viewer_record = records["req-403"]
    assert (viewer_record["user"], viewer_record["role"]) == ("vera", "viewer")
    assert (viewer_record["status"], viewer_record["reason"]) == (403, refused["reason"])
    assert viewer_record["action"] == "tokens.create"
    bad = records[made]
    assert (bad["status"], bad["reason"]) == (400, malformed["reason"])
    anonymous = records["req-anon"]
    assert (anonymous["user"], anonymous["role"]) == ("anonymous", None)
    assert anonymous["route"] == "/api/v1/devices/{id}/move"
    assert anonymous["action"] == "devices.move"
    assert (anonymous["target"], anonymous["status"]) == ("dev-9", 401)

    await _lists_and_filters(server, made, made_user["requestId"])
    _one_log_line_each(server, made)


async def _lists_and_filters(server: Server, made: str, made_user: str) -> None:
    """Newest first, filters, paging (over the five records of the test above)."""
    admin = server.admin_token
    assert [r["requestId"] for r in await audit(server)] == [
        "req-anon",
        made,
        "req-403",
        "req-ok.1",
        made_user,
    ]
    assert [r["requestId"] for r in await audit(server, "?user=vera")] == ["req-403"]
    by_action = await audit(server, "?action=tokens.create")
    assert [r["requestId"] for r in by_action] == [made, "req-403", "req-ok.1"]
    assert [r["requestId"] for r in await audit(server, "?result=4xx")] == [
        "req-anon",
        made,
        "req-403",
    ]
    assert [r["requestId"] for r in await audit(server, "?result=403")] == ["req-403"]
    assert [r["requestId"] for r in await audit(server, "?result=forbidden")] == ["req-403"]
    assert [r["requestId"] for r in await audit(server, "?target=dev-9")] == ["req-anon"]
    status, _, first = await call(server, "GET", "/api/v1/audit?limit=3", token=admin)
    assert status == 200
    assert len(first["items"]) == 3
    token = first["metadata"]["continue"]
    status, _, second = await call(
        server, "GET", f"/api/v1/audit?limit=3&continue={token}", token=admin
    )
    assert status == 200, second
    assert [r["requestId"] for r in second["items"]] == ["req-ok.1", made_user]
    assert second["metadata"]["continue"] is None


def _one_log_line_each(server: Server, made: str) -> None:
    """Exactly one journald-friendly line per write, with the same request id."""
    for request_id in ("req-ok.1", "req-403", made, "req-anon"):
        lines = log_lines(server, request_id)
        assert len(lines) == 1, lines
    assert "user=vera role=viewer method=POST" in log_lines(server, "req-403")[0]
    assert "status=403 reason=forbidden" in log_lines(server, "req-403")[0]


async def test_only_admins_read_the_audit_log(server: Server) -> None:
    for name, role in (("olga", "operator"), ("vic", "viewer")):
        token = user_token(server, name, role)
        status, headers, body = await call(server, "GET", "/api/v1/audit", token=token)
        assert status == 403, body
        assert body["reason"] == "forbidden"
        assert headers["X-Request-Id"]
    status, _, body = await call(server, "GET", "/api/v1/audit")
    assert status == 401, body
    status, _, body = await call(
        server, "GET", "/api/v1/audit?result=" + "x" * 300, token=server.admin_token
    )
    assert status == 400
    assert body["reason"] == "bad_parameter"


@pytest.fixture
def small_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    monkeypatch.setenv("EDGEFLEET_AUDIT_MAX_ROWS", "3")
    monkeypatch.setenv("EDGEFLEET_AUDIT_PRUNE_INTERVAL", "0.2")
    server = Server(workdir=tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def test_retention_keeps_the_newest_rows(small_server: Server) -> None:
    for i in range(6):
        status, _, _ = await call(
            small_server,
            "POST",
            "/api/v1/tokens",
            token=small_server.admin_token,
            raw=b"[",
            request_id=f"w{i}",
        )
        assert status == 400
    kept = await eventually_async(
        lambda: audit(small_server),
        lambda items: len(items) <= 3,
        what="the audit log pruned to its 3 newest rows",
        within=10,
    )
    assert [r["requestId"] for r in kept] == ["w5", "w4", "w3"]


@pytest.fixture
def short_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    monkeypatch.setenv("EDGEFLEET_AUDIT_MAX_AGE", "2")
    monkeypatch.setenv("EDGEFLEET_AUDIT_PRUNE_INTERVAL", "0.2")
    server = Server(workdir=tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def test_retention_drops_old_rows(short_server: Server) -> None:
    status, _, _ = await call(
        short_server,
        "POST",
        "/api/v1/tokens",
        token=short_server.admin_token,
        raw=b"[",
        request_id="old",
    )
    assert status == 400
    assert [r["requestId"] for r in await audit(short_server)] == ["old"]
    await eventually_async(
        lambda: audit(short_server),
        lambda items: items == [],
        what="the record older than 2 s pruned",
        within=10,
    )
