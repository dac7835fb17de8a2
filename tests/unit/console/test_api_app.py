"""The API and console in-process (plain HTTP test server): shapes, errors, document, events."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from tunnel_server.app import bootstrap, create_app
from tunnel_server.app_keys import CLUSTER_MANIFEST_KEY, HISTORY_KEY
from tunnel_server.identity import tokens
from tunnel_server.settings import ServerSettings
from tunnel_server.store import NodeRecord
from tunnel_server.web.errors import ApiError

Client = TestClient[web.Request, web.Application]


@pytest_asyncio.fixture
async def client(tmp_path: Path) -> AsyncIterator[Client]:
    settings = ServerSettings(data_dir=tmp_path, port=1)
    identity = bootstrap(settings)
    now = time.time()
    for name in ("alpha", "beta"):
        token = tokens.create_token(
            identity.store, tokens.TokenSpec(kind="node", name=name, ttl=60), now=now
        )
        identity.store.redeem_token(
            token.id,
            now=now,
            node=NodeRecord(name=name, kind="node", state="approved", created_at=now),
        )
    app = create_app(settings, identity=identity)
    async with TestClient(TestServer(app)) as test_client:
        test_client.app[HISTORY_KEY].report(
            "alpha",
            kind="full",
            metrics={"cpu.percent": 12.5, "disk.percent": 95.0},
            interval=10,
            now=time.time(),
        )
        yield test_client
    identity.store.close()


def admin(tmp_path: Path) -> dict[str, str]:
    return {"Authorization": "Bearer " + (tmp_path / "admin-token").read_text().strip()}


async def test_nodes_and_overview(client: Client, tmp_path: Path) -> None:
    answer = await client.get("/api/v1/nodes?sort=-cpuPercent", headers=admin(tmp_path))
    body = await answer.json()
    assert [n["name"] for n in body["items"]] == ["alpha", "beta"]
    assert body["items"][0]["status"] == "online"
    assert body["items"][0]["cpuPercent"] == 12.5
    assert body["items"][1]["status"] == "unknown"
    assert body["metadata"] == {"continue": None}
    # Ascending, the node without a value still comes last.
    answer = await client.get("/api/v1/nodes?sort=cpuPercent", headers=admin(tmp_path))
    assert [n["name"] for n in (await answer.json())["items"]] == ["alpha", "beta"]
    overview = await (await client.get("/api/v1/overview", headers=admin(tmp_path))).json()
    assert overview["nodes"]["online"] == 1
    assert [w["code"] for w in overview["warnings"]] == ["disk_full"]
    history = await client.get("/api/v1/nodes/alpha/history", headers=admin(tmp_path))
    body = await history.json()
    assert body["series"] == ["cpu", "memory", "disk", "load1", "rxBps", "txBps", "rttMs"]
    points = body["points"]
    assert points[-1]["cpu"] == 12.5
    assert points[-1]["samples"] == 1
    assert points[-1]["at"].endswith("+00:00")


async def test_errors_are_json(client: Client, tmp_path: Path) -> None:
    for path, status, code in (
        ("/api/v1/nodes", 401, "unauthenticated"),
        ("/api/v1/whatever", 404, "not_found"),
    ):
        answer = await client.get(path)
        assert answer.status == status
        assert answer.headers["Content-Type"].startswith("application/problem+json")
        assert (await answer.json())["reason"] == code
        assert answer.headers["X-Content-Type-Options"] == "nosniff"
    answer = await client.put("/api/v1/tokens", headers=admin(tmp_path))
    assert answer.status == 405
    assert "GET" in answer.headers["Allow"]


async def test_openapi_lists_every_api_route(client: Client) -> None:
    document = await (await client.get("/api/openapi.json")).json()
    assert document["openapi"].startswith("3.0")
    documented = {
        (method.upper(), path) for path, ops in document["paths"].items() for method in ops
    }
    served = {
        (route.method, route.resource.canonical)
        for route in client.app.router.routes()
        if route.resource is not None
        and route.resource.canonical.startswith("/api/v1/")
        and route.method != "HEAD"
        and not route.resource.canonical.startswith(("/api/v1/join", "/api/v1/renew", "/api/v1/ca"))
        and "/proxy/" not in route.resource.canonical
    }
    assert served == documented


async def test_console_and_its_headers(client: Client) -> None:
    page = await client.get("/")
    assert page.status == 200
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]
    text = await page.text()
    assert '<script src="/console/app.js"' in text
    assert '<script src="/console/fleet.js"' in text
    assert "http://" not in text.replace("http://www.w3.org", "")
    for name in ("app.js", "fleet.js", "app.css", "icon.svg"):
        asset = await client.get(f"/console/{name}")
        assert asset.status == 200, name
        assert "https://" not in await asset.text(), f"{name} must fetch nothing from outside"
    assert (await client.get("/console/../store.db")).status == 404


async def test_events_snapshot_then_changes(client: Client, tmp_path: Path) -> None:
    answer = await client.get("/api/v1/events", headers=admin(tmp_path))
    assert answer.headers["Content-Type"].startswith("text/event-stream")
    seen = b""
    async with asyncio.timeout(5):
        while b"event: snapshot" not in seen:
            seen += await answer.content.readany()
        client.app[HISTORY_KEY].disconnected(
            "alpha", now=time.time(), reason="tunnel session closed", source=None
        )
        while b'"status":"offline"' not in seen:
            seen += await answer.content.readany()
    assert b"event: nodes" in seen
    answer.close()


@contextlib.asynccontextmanager
async def _app_with(tmp_path: Path, render: Callable[..., str] | None) -> AsyncIterator[Client]:
    """A server whose cluster manifest renderer is ``render`` (None: no clusters part)."""
    settings = ServerSettings(data_dir=tmp_path, port=1)
    identity = bootstrap(settings)
    app = create_app(settings, identity=identity)
    if render is None:
        app.pop(CLUSTER_MANIFEST_KEY, None)
    else:
        app[CLUSTER_MANIFEST_KEY] = render
    try:
        async with TestClient(TestServer(app)) as test_client:
            yield test_client
    finally:
        identity.store.close()


async def test_a_cluster_token_with_its_install_manifest(tmp_path: Path) -> None:
    asked: list[dict[str, object]] = []

    def render(**fields: object) -> str:
        asked.append(fields)
        return f"kind: Secret # token {fields['token']}\n"

    async with _app_with(tmp_path, render) as client:
        body = {"name": "c-1", "kind": "cluster", "manifest": True, "image": "reg/ef:1"}
        answer = await client.post("/api/v1/tokens", json=body, headers=admin(tmp_path))
        created = await answer.json()
        assert answer.status == 201, created
        assert created["manifest"] == f"kind: Secret # token {created['token']}\n"
        assert answer.headers["Location"] == f"/api/v1/tokens/{created['id']}"
        assert asked[0]["image"] == "reg/ef:1"
        assert asked[0]["name"] == "c-1"
        assert str(asked[0]["ca_hash"]).startswith("sha256:")
        plain = await client.post("/api/v1/tokens", json={"name": "c-2"}, headers=admin(tmp_path))
        assert "manifest" not in await plain.json()


async def test_no_manifest_without_the_clusters_part(tmp_path: Path) -> None:
    async with _app_with(tmp_path, None) as client:
        body = {"name": "c-1", "kind": "cluster", "manifest": True}
        answer = await client.post("/api/v1/tokens", json=body, headers=admin(tmp_path))
        assert answer.status == 400
        assert (await answer.json())["reason"] == "manifest_unavailable"
        listed = await (await client.get("/api/v1/tokens", headers=admin(tmp_path))).json()
        assert listed["items"] == [], "no token is made for a manifest that cannot be"


async def test_a_manifest_that_fails_leaves_no_usable_token(tmp_path: Path) -> None:
    def render(**_: object) -> str:
        raise ApiError(400, "bad_request", "cannot make the install manifest: bad image")

    async with _app_with(tmp_path, render) as client:
        body = {"name": "c-1", "kind": "cluster", "manifest": True, "image": "x"}
        answer = await client.post("/api/v1/tokens", json=body, headers=admin(tmp_path))
        assert (answer.status, (await answer.json())["reason"]) == (400, "bad_request")
        listed = await (await client.get("/api/v1/tokens", headers=admin(tmp_path))).json()
        assert [t["status"] for t in listed["items"]] == ["revoked"]
