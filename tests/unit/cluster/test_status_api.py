"""``/api/v1/clusters`` in-process: store records of kind cluster joined with their reports.

The reports go into the real ``StatusHistory`` as the status service would put them (the
whole way from a real agent is tests/integration/cluster_status); a scoped caller is a real
user token (``tunnel-server users create ... --clusters``).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from tunnel_server.app import bootstrap, create_app
from tunnel_server.app_keys import HISTORY_KEY, STORE_KEY
from tunnel_server.identity import tokens, users
from tunnel_server.settings import ServerSettings
from tunnel_server.status.history import Metrics
from tunnel_server.store import NodeKind, NodeRecord

Client = TestClient[web.Request, web.Application]

REPORT: Metrics = {
    "cpu.percent": 3.0,  # the agent's own pod: not the cluster's
    "disk.percent": 99.0,
    "cluster.version": "v1.36.3",
    "cluster.nodes.total": 3,
    "cluster.nodes.ready": 2,
    "cluster.pods.pending": 4,
    "cluster.pods.running": 5,
    "cluster.pods.succeeded": 1,
    "cluster.pods.failed": 0,
    "cluster.pods.unknown": 0,
    "cluster.cpu.allocatable_cores": 9.5,
    "cluster.cpu.requested_cores": 1.75,
    "cluster.memory.allocatable_bytes": 14 * 2**30,
    "cluster.memory.requested_bytes": 592 * 2**20,
    "cluster.apiserver.healthy": True,
    "cluster.apiserver.latency_ms": 2.5,
    "cluster.updated_at": 1_790_000_000.0,
}


@pytest_asyncio.fixture
async def client(tmp_path: Path) -> AsyncIterator[Client]:
    settings = ServerSettings(data_dir=tmp_path, port=1)
    identity = bootstrap(settings)
    now = time.time()
    members: list[tuple[str, NodeKind]] = [
        ("east", "cluster"),
        ("west", "cluster"),
        ("quiet", "cluster"),
        ("edge-1", "node"),
    ]
    for name, kind in members:
        token = tokens.create_token(
            identity.store, tokens.TokenSpec(kind=kind, name=name, ttl=60), now=now
        )
        identity.store.redeem_token(
            token.id,
            now=now,
            node=NodeRecord(name=name, kind=kind, state="approved", created_at=now),
        )
    app = create_app(settings, identity=identity)
    async with TestClient(TestServer(app)) as test_client:
        history = test_client.app[HISTORY_KEY]
        history.report("east", kind="full", metrics=REPORT, interval=10, now=time.time())
        west: Metrics = {**REPORT, "cluster.pods.running": 50, "cluster.apiserver.healthy": False}
        history.report("west", kind="full", metrics=west, interval=10, now=time.time())
        history.report("edge-1", kind="full", metrics={"cpu.percent": 1.0}, now=time.time())
        yield test_client
    identity.store.close()


def admin(tmp_path: Path) -> dict[str, str]:
    return {"Authorization": "Bearer " + (tmp_path / "admin-token").read_text().strip()}


async def get(client: Client, path: str, tmp_path: Path) -> tuple[int, Any]:
    answer = await client.get(path, headers=admin(tmp_path))
    return answer.status, await answer.json()


async def test_the_list_joins_records_and_reports(client: Client, tmp_path: Path) -> None:
    status, body = await get(client, "/api/v1/clusters", tmp_path)
    assert status == 200
    rows = {row["name"]: row for row in body["items"]}
    assert len(rows) == 3, "clusters only, not the node"
    assert list(rows) == ["east", "quiet", "west"]
    east = rows["east"]
    assert east["status"] == "online"
    assert east["version"] == "v1.36.3"
    assert (east["nodesReady"], east["nodesTotal"]) == (2, 3)
    assert (east["podsRunning"], east["podsPending"], east["podsTotal"]) == (5, 4, 10)
    assert east["cpuAllocatableCores"] == 9.5
    assert east["cpuRequestedCores"] == 1.75
    assert east["memoryAllocatableBytes"] == 14 * 2**30
    assert east["memoryRequestedBytes"] == 592 * 2**20
    assert east["apiserverHealthy"] is True
    assert east["sampledAt"] == "2026-09-21T14:13:20+00:00"
    codes = [w["code"] for w in east["warnings"]]
    assert codes == ["nodes_not_ready"], "no disk warning from the agent's own pod"
    assert rows["west"]["warnings"][0]["code"] == "apiserver_unhealthy"
    quiet = rows["quiet"]
    assert quiet["status"] == "unknown"
    assert quiet["version"] is None
    assert quiet["podsTotal"] is None


async def test_sort_filter_and_page(client: Client, tmp_path: Path) -> None:
    _, body = await get(client, "/api/v1/clusters?sort=-podsRunning", tmp_path)
    assert [r["name"] for r in body["items"]] == ["west", "east", "quiet"]  # empty last
    _, body = await get(client, "/api/v1/clusters?sort=podsRunning", tmp_path)
    assert [r["name"] for r in body["items"]] == ["east", "west", "quiet"]  # empty last
    _, body = await get(client, "/api/v1/clusters?status=unknown", tmp_path)
    assert [r["name"] for r in body["items"]] == ["quiet"]
    _, body = await get(client, "/api/v1/clusters?q=st&limit=1", tmp_path)
    assert [r["name"] for r in body["items"]] == ["east"]
    assert body["metadata"]["remainingItemCount"] == 1
    token = body["metadata"]["continue"]
    _, body = await get(client, f"/api/v1/clusters?q=st&limit=1&continue={token}", tmp_path)
    assert [r["name"] for r in body["items"]] == ["west"]
    assert body["metadata"] == {"continue": None}
    for query in (
        "limit=0",
        "sort=cpu_percent",
        "sort=pods_running",
        "status=gone",
        "q=" + "x" * 101,
    ):
        status, body = await get(client, "/api/v1/clusters?" + query, tmp_path)
        assert (status, body["reason"]) == (400, "bad_parameter"), query


async def test_one_cluster_with_its_metrics(client: Client, tmp_path: Path) -> None:
    status, body = await get(client, "/api/v1/clusters/east", tmp_path)
    assert status == 200
    assert body["metrics"]["cluster.pods.running"] == 5
    assert body["leaseSeconds"] == 30
    assert body["reportIntervalSeconds"] == 10
    status, body = await get(client, "/api/v1/clusters/edge-1", tmp_path)
    assert (status, body["reason"]) == (404, "cluster_not_found")
    assert "is a node" in body["detail"]
    status, body = await get(client, "/api/v1/clusters/nowhere", tmp_path)
    assert (status, body["reason"]) == (404, "cluster_not_found")
    status, body = await get(client, "/api/v1/clusters/Not_A_Name", tmp_path)
    assert (status, body["reason"]) == (400, "bad_name")
    answer = await client.get("/api/v1/clusters/east")
    assert answer.status == 401


async def test_offline_by_lease_hides_health(client: Client, tmp_path: Path) -> None:
    history = client.app[HISTORY_KEY]
    history.disconnected("east", now=time.time(), reason="status stream ended", source=None)
    _, body = await get(client, "/api/v1/clusters/east", tmp_path)
    assert body["status"] == "offline"
    assert body["offlineReason"] == "status stream ended"
    assert body["apiserverHealthy"] is None, "an agent that does not report cannot tell"
    assert body["podsRunning"] == 5, "the last reported counts stay"
    history.report("east", kind="delta", metrics={}, interval=10, now=time.time())
    _, body = await get(client, "/api/v1/clusters/east", tmp_path)
    assert (body["status"], body["apiserverHealthy"]) == ("online", True)


async def test_a_scoped_user_sees_only_its_clusters(client: Client) -> None:
    store = client.app[STORE_KEY]
    _, token = users.create_user(
        store, "ops", role="viewer", clusters=("west",), ttl=3600, now=time.time()
    )
    scoped = {"Authorization": f"Bearer {token}"}

    async def get_as(path: str) -> tuple[int, Any]:
        answer = await client.get(path, headers=scoped)
        return answer.status, await answer.json()

    _, body = await get_as("/api/v1/clusters")
    assert [r["name"] for r in body["items"]] == ["west"]
    status, body = await get_as("/api/v1/clusters/east")
    assert (status, body["reason"]) == (403, "cluster_out_of_scope")
    # Out of scope is 403 whether or not the cluster exists: nothing leaks about names.
    status, body = await get_as("/api/v1/clusters/nowhere")
    assert (status, body["reason"]) == (403, "cluster_out_of_scope")
    status, _ = await get_as("/api/v1/clusters/west")
    assert status == 200


async def test_the_openapi_document_describes_them(client: Client) -> None:
    document = await (await client.get("/api/openapi.json")).json()
    assert document["paths"]["/api/v1/clusters"]["get"]["operationId"] == "listClusters"
    assert document["paths"]["/api/v1/clusters/{name}"]["get"]["operationId"] == "getCluster"
