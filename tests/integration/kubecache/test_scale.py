# Copyright 2026 The EdgeFleet Authors. SPDX-License-Identifier: Apache-2.0
"""5,000 pods in the real API server: listed online through the proxy, then offline.

Offline answers, with selectors and paging, must equal what the API server gave online for
the same queries before the cut.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import prometheus_client
import pytest

from edge_agent.kubecache import open_direct_upstream, serve_kube_proxy
from tests.harness import kube
from tests.harness.faultproxy import fault_proxy
from tests.harness.kube_bulk import NODES, create_pods
from tests.integration.kubecache.conftest import KUBELET, Edge, edge_settings

pytestmark = pytest.mark.kube

COUNT = 5000

QUERIES: dict[str, dict[str, str]] = {
    "all": {},
    "node": {"fieldSelector": "spec.nodeName=node-3"},
    "node-and-label": {"fieldSelector": "spec.nodeName=node-3", "labelSelector": "app=app-3"},
    "label": {"labelSelector": "app=app-1"},
    "label-set": {"labelSelector": "app in (app-1,app-2),tier!=db"},
    "not-node": {"fieldSelector": "spec.nodeName!=node-0,metadata.name!=pod-00001"},
    "phase": {"fieldSelector": "status.phase=Pending,spec.nodeName=node-7"},
}


@pytest.fixture
async def crowded(
    kube_factory: Callable[[int], list[kube.ControlPlane]], tmp_path: Path
) -> AsyncIterator[tuple[Edge, kube.ControlPlane, str]]:
    """A control plane of its own with 5,000 pods, and a proxy in front of it.

    Stopping the plane is the cleanup: deleting 5,000 pods from the shared one takes longer
    than creating them.
    """
    (plane,) = kube_factory(1)
    namespace = "crowd"
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=plane.ssl_context()),
        headers={"Authorization": f"Bearer {plane.token}"},
    ) as cloud:
        body = {"metadata": {"name": namespace}}
        async with cloud.post(f"{plane.url}/api/v1/namespaces", json=body) as created:
            assert created.status == 201, await created.text()
    await create_pods(
        url=plane.url,
        token=plane.token,
        namespace=namespace,
        ssl_context=plane.ssl_context(),
        count=COUNT,
    )
    async with (
        fault_proxy("127.0.0.1", plane.port) as link,
        open_direct_upstream(plane.kubeconfig, server=f"https://127.0.0.1:{link.port}") as up,
    ):
        registry = prometheus_client.CollectorRegistry()
        async with serve_kube_proxy(edge_settings(tmp_path), up, registry=registry) as proxy:
            edge = Edge(proxy=proxy, link=link, plane=plane, registry=registry, workdir=tmp_path)
            yield edge, plane, namespace


async def listing(
    http: aiohttp.ClientSession, url: str, params: dict[str, str], *, limit: int = 0
) -> tuple[list[Any], int]:
    """Every item of a (possibly paged) LIST, and how many pages it took."""
    items: list[Any] = []
    token = ""
    pages = 0
    while True:
        query = dict(params)
        if limit:
            query["limit"] = str(limit)
        if token:
            query["continue"] = token
        async with http.get(url, params=query, headers=KUBELET) as response:
            assert response.status == 200, await response.text()
            body = await response.json()
        pages += 1
        items.extend(body["items"])
        token = body["metadata"].get("continue", "")
        if not token:
            return items, pages


@pytest.mark.timeout(900)
async def test_5000_pods_offline_answers_equal_online_ones(
    crowded: tuple[Edge, kube.ControlPlane, str],
) -> None:
    edge, kube_cluster, namespace = crowded
    path = f"/api/v1/namespaces/{namespace}/pods"
    straight = aiohttp.TCPConnector(ssl=kube_cluster.ssl_context())
    admin = {"Authorization": f"Bearer {kube_cluster.token}"}
    async with (
        aiohttp.ClientSession() as http,
        aiohttp.ClientSession(connector=straight, headers=admin) as cloud,
    ):
        # Online: kubelet lists its pods through the proxy (that is what gets cached).
        via_proxy, _ = await listing(http, edge.url + path, {})
        assert len(via_proxy) == COUNT
        expected = {
            name: (await listing(cloud, kube_cluster.url + path, params))[0]
            for name, params in QUERIES.items()
        }
        expected_paged = (await listing(cloud, kube_cluster.url + path, QUERIES["node"], limit=70))[
            0
        ]
        assert via_proxy == expected["all"]
        assert len(expected["node"]) == COUNT // NODES

        await edge.go_offline()
        for name, params in QUERIES.items():
            offline, _ = await listing(http, edge.url + path, params)
            assert offline == expected[name], name
        paged, pages = await listing(http, edge.url + path, {}, limit=500)
        assert pages == COUNT // 500
        assert paged == expected["all"]
        paged_node, _ = await listing(http, edge.url + path, QUERIES["node"], limit=70)
        assert paged_node == expected_paged
