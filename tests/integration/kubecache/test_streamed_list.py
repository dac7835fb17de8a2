# Copyright 2026 The EdgeFleet Authors. SPDX-License-Identifier: Apache-2.0
"""An online LIST bigger than what is kept in memory: cached through the disk copy, item by item.

Issue 18: the online LIST is kept on disk beyond ``forward.KEPT_IN_MEMORY`` and stored in
chunks; a paged LIST becomes a view only with its last page. Offline, the cache must answer
exactly what the API server listed, and the disk copies must be gone.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from edge_agent.kubecache.forward import KEPT_IN_MEMORY
from tests.harness.kube_bulk import create_pods
from tests.integration.kubecache.conftest import KUBELET, Edge

pytestmark = pytest.mark.kube

COUNT = 400


async def pages(
    http: aiohttp.ClientSession, url: str, *, limit: int, headers: dict[str, str]
) -> tuple[list[Any], list[int]]:
    """Every item of a paged LIST, and the size in bytes of each page."""
    items: list[Any] = []
    sizes: list[int] = []
    token = ""
    while True:
        params = {"limit": str(limit), **({"continue": token} if token else {})}
        async with http.get(url, params=params, headers=headers) as answer:
            assert answer.status == 200, await answer.text()
            data = await answer.read()
            body = await answer.json()
        sizes.append(len(data))
        items.extend(body["items"])
        token = body["metadata"].get("continue", "")
        if not token:
            return items, sizes


@pytest.mark.timeout(600)
async def test_a_paged_list_over_the_memory_bound_is_served_whole_offline(
    edge: Edge, cloud: aiohttp.ClientSession, namespace: str
) -> None:
    await create_pods(
        url=edge.plane.url,
        token=edge.plane.token,
        namespace=namespace,
        ssl_context=edge.plane.ssl_context(),
        count=COUNT,
    )
    path = f"/api/v1/namespaces/{namespace}/pods"
    async with cloud.get(path) as answer:
        assert answer.status == 200
        expected = (await answer.json())["items"]
    assert len(expected) == COUNT
    async with aiohttp.ClientSession() as http:
        online, sizes = await pages(http, edge.url + path, limit=COUNT // 2, headers=KUBELET)
        assert online == expected
        assert min(sizes) > KEPT_IN_MEMORY  # each page went through the disk copy
        await edge.proxy.flush_writes()
        await edge.go_offline()
        async with http.get(edge.url + path, headers=KUBELET) as answer:
            assert answer.status == 200, await answer.text()
            offline = (await answer.json())["items"]
    assert offline == expected  # both pages, as one complete view
    left = sorted(p.name for p in (edge.workdir / "cache").iterdir())
    assert all(name.startswith("objects.db") for name in left), left
