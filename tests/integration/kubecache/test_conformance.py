# Copyright 2026 The EdgeFleet Authors. SPDX-License-Identifier: Apache-2.0
"""Kubernetes' own conformance specs pass through the kube proxy as they pass direct.

Kubernetes' e2e suite is the reference for what a client may rely on. A real ``edge-agent``
caches every component (``cache_agents = ["*"]``) in front of the shared real API server, and
``e2e.test`` runs a chosen set of API-only specs with a kubeconfig pointing at the proxy.
The control plane has no nodes, so only specs that need no pod running are chosen.
"""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from tests.integration.kubecache.conftest import Edge

pytestmark = pytest.mark.kube

E2E_AGENT = "e2e.test"
"""The User-Agent component of Kubernetes' e2e client (cached: ``cache_agents = ["*"]``)."""


async def test_more_concurrent_watches_than_upstream_connections(
    edge: Edge, namespace: str
) -> None:
    """What the concurrent-watches spec does: 100 watches open at once, each from a past RV.

    Every watch holds one upstream connection for its lifetime; the upstream's connection
    pool must not make the 65th watch (or the health probe, or a write) wait for one.
    """
    count = 100
    url = f"{edge.url}/api/v1/namespaces/{namespace}/configmaps"
    headers = {"User-Agent": f"{E2E_AGENT}/v1.36.3 (linux/amd64) kubernetes/test"}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as http:
        async with http.get(url) as listed:
            rv = (await listed.json())["metadata"]["resourceVersion"]
        params = {"watch": "true", "resourceVersion": rv, "allowWatchBookmarks": "true"}
        streams = []
        try:
            # A guard, not a timed assertion: on failure the streams never answer at all.
            async with asyncio.timeout(60):
                for _ in range(count):
                    streams.append(await http.get(url, params=params))  # noqa: PERF401
                async with http.post(url, json={"metadata": {"name": "after"}}) as created:
                    assert created.status == 201, await created.text()
                names = await asyncio.gather(*(first_change(s) for s in streams))
        finally:
            for stream in streams:
                stream.close()
    assert names == [("ADDED", "after")] * count
    offline = edge.registry.get_sample_value(
        "edge_kubecache_health_transitions_total", {"to": "offline"}
    )
    assert not offline, f"the proxy went offline {offline} times with the API server up"


async def first_change(stream: aiohttp.ClientResponse) -> tuple[str, str]:
    assert stream.status == 200, await stream.text()
    while line := await stream.content.readline():
        event = json.loads(line)
        if event["type"] != "BOOKMARK":
            return event["type"], event["object"]["metadata"]["name"]
    return "ENDED", ""
