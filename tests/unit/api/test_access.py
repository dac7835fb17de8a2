"""``access.require`` in-process: roles, cluster scope, the verified-caller cache, the counter.

No route of the API names a cluster yet (the clusters API is another part's), so a test route
that calls ``require(request, verb, cluster=...)`` stands in for one.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from tunnel_server.api import access
from tunnel_server.app import bootstrap, create_app
from tunnel_server.app_keys import STORE_KEY, VERIFIED_ADMIN_KEY
from tunnel_server.identity import users
from tunnel_server.settings import ServerSettings

Client = TestClient[web.Request, web.Application]
DAY = 86400.0


async def _cluster_route(request: web.Request) -> web.Response:
    verb: Any = request.match_info["verb"]
    caller = access.require(
        request, verb, cluster=request.match_info["name"], cached="cached" in request.query
    )
    return web.json_response({"user": caller.name, "role": caller.role})


@pytest_asyncio.fixture
async def client(tmp_path: Path) -> AsyncIterator[Client]:
    settings = ServerSettings(data_dir=tmp_path, port=1)
    identity = bootstrap(settings)
    app = create_app(settings, identity=identity)
    app.router.add_get("/api/v1/test/{verb}/clusters/{name}", _cluster_route)
    async with TestClient(TestServer(app)) as test_client:
        yield test_client
    identity.store.close()


def _user(client: Client, name: str, role: users.Role, clusters: tuple[str, ...] | None) -> str:
    store = client.app[STORE_KEY]
    _, token = users.create_user(
        store, name, role=role, clusters=clusters, ttl=DAY, now=time.time()
    )
    return token


async def _get(client: Client, path: str, token: str) -> tuple[int, dict[str, Any]]:
    answer = await client.get(path, headers={"Authorization": f"Bearer {token}"})
    return answer.status, await answer.json()


async def _failures(client: Client, reason: str) -> float:
    text = await (await client.get("/metrics")).text()
    prefix = f'tunnel_server_auth_failures_total{{reason="{reason}"}} '
    return next(
        (float(line.split()[1]) for line in text.splitlines() if line.startswith(prefix)), 0
    )


async def test_a_scoped_operator_reads_and_writes_its_clusters_only(client: Client) -> None:
    token = _user(client, "op", "operator", ("a", "b"))
    for verb in ("read", "write"):
        assert (await _get(client, f"/api/v1/test/{verb}/clusters/a", token))[0] == 200
    status, body = await _get(client, "/api/v1/test/read/clusters/c", token)
    assert (status, body["reason"]) == (403, "cluster_out_of_scope")
    assert "'c'" in body["detail"]
    assert "a, b" in body["detail"]
    status, body = await _get(client, "/api/v1/test/admin/clusters/a", token)
    assert (status, body["reason"]) == (403, "forbidden")
    assert "needs role admin" in body["detail"]
    assert await _failures(client, "cluster_out_of_scope") == 1
    assert await _failures(client, "forbidden") == 1


async def test_roles_without_scope(client: Client, tmp_path: Path) -> None:
    viewer = _user(client, "v", "viewer", None)
    admin_user = _user(client, "boss", "admin", None)
    admin_token = (tmp_path / "admin-token").read_text().strip()
    assert (await _get(client, "/api/v1/test/read/clusters/any", viewer))[0] == 200
    assert (await _get(client, "/api/v1/test/write/clusters/any", viewer))[0] == 403
    for token in (admin_user, admin_token):
        for verb in ("read", "write", "admin"):
            assert (await _get(client, f"/api/v1/test/{verb}/clusters/any", token))[0] == 200
    _, body = await _get(client, "/api/v1/test/read/clusters/any", admin_token)
    assert body == {"user": "admin", "role": "admin"}
    assert (await _get(client, "/api/v1/test/read/clusters/any", "nonsense"))[0] == 401
    assert await _failures(client, "invalid_token") == 1


def test_allows_and_visible() -> None:
    scoped = access.Caller(name="x", role="viewer", clusters=frozenset({"a"}))
    assert access.allows(scoped, "read", cluster="a")
    assert not access.allows(scoped, "read", cluster="b")
    assert not access.allows(scoped, "write", cluster="a")
    assert access.allows(scoped, "read")
    assert access.visible(scoped, ["b", "a", "c"]) == ["a"]
    everyone = access.Caller(name="y", role="operator")
    assert access.visible(everyone, ["b", "a"]) == ["b", "a"]


async def test_the_cache_holds_a_caller_until_the_store_changes(client: Client) -> None:
    token = _user(client, "fast", "operator", None)
    path = "/api/v1/test/write/clusters/a?cached=1"
    assert (await _get(client, path, token))[0] == 200
    assert token in client.app[VERIFIED_ADMIN_KEY]
    users.revoke_user(client.app[STORE_KEY], "fast", now=time.time())
    # The tunnel's revocation watcher empties the cache when the revision moves.
    client.app[VERIFIED_ADMIN_KEY].clear()
    status, body = await _get(client, path, token)
    assert (status, body["reason"]) == (401, "user_revoked")
    # Sessions are never cached: signing one out bumps no revision.
    viewer = _user(client, "seer", "viewer", None)
    made = await client.post("/api/v1/sessions", headers={"Authorization": f"Bearer {viewer}"})
    session = (await made.json())["token"]
    assert (await _get(client, "/api/v1/test/read/clusters/a?cached=1", session))[0] == 200
    assert session not in client.app[VERIFIED_ADMIN_KEY]


async def test_an_expired_cached_caller_is_checked_again(client: Client) -> None:
    token = _user(client, "soon", "operator", None)
    path = "/api/v1/test/write/clusters/a?cached=1"
    assert (await _get(client, path, token))[0] == 200
    cached = client.app[VERIFIED_ADMIN_KEY][token]
    client.app[VERIFIED_ADMIN_KEY][token] = access.Caller(
        name=cached.name, role=cached.role, expires_at=time.time() - 1
    )
    store = client.app[STORE_KEY]
    store.revoke_user("soon", now=time.time())  # what the store now says is what counts
    status, body = await _get(client, path, token)
    assert (status, body["reason"]) == (401, "user_revoked")
