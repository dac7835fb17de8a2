# Copyright 2026 The EdgeFleet Authors. SPDX-License-Identifier: Apache-2.0
"""A real ``edge-agent run`` serving the kube proxy survives kill -9, offline and mid-write.

The agent reaches the shared API server through a link the test can cut. What must hold after
every kill: ``edge-agent cache verify`` finds nothing wrong, and the restarted agent answers
offline exactly what the API server answered online before the cut.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from kubernetes import client

from tests.harness import kube
from tests.harness.faultproxy import FaultProxy, fault_proxy
from tests.harness.kube_agent import KubeAgent
from tests.integration.kubecache.conftest import KUBELET

pytestmark = pytest.mark.kube


def queries(namespace: str) -> dict[str, tuple[str, dict[str, str]]]:
    """What a node asks: whole lists, selectors of both kinds, one object."""
    configmaps = f"/api/v1/namespaces/{namespace}/configmaps"
    return {
        "all": (configmaps, {}),
        "label": (configmaps, {"labelSelector": "app=a"}),
        "label-set": (configmaps, {"labelSelector": "app in (a,b),tier!=db"}),
        "field": (configmaps, {"fieldSelector": "metadata.name!=cm-01"}),
        "pods-of-node": (
            f"/api/v1/namespaces/{namespace}/pods",
            {"fieldSelector": "spec.nodeName=node-a"},
        ),
        "one": (f"{configmaps}/cm-03", {}),
    }


async def ask(http: aiohttp.ClientSession, base: str, path: str, params: dict[str, str]) -> Any:
    async with http.get(base + path, params=params, headers=KUBELET) as response:
        assert response.status == 200, await response.text()
        body = await response.json()
    return body.get("items", body)


async def paged(http: aiohttp.ClientSession, base: str, path: str, limit: int) -> list[Any]:
    items: list[Any] = []
    token = ""
    while True:
        params = {"limit": str(limit), **({"continue": token} if token else {})}
        async with http.get(base + path, params=params, headers=KUBELET) as response:
            assert response.status == 200, await response.text()
            body = await response.json()
        items.extend(body["items"])
        token = body["metadata"].get("continue", "")
        if not token:
            return items


async def answers(http: aiohttp.ClientSession, base: str, namespace: str) -> dict[str, Any]:
    out = {name: await ask(http, base, *query) for name, query in queries(namespace).items()}
    out["paged"] = await paged(http, base, f"/api/v1/namespaces/{namespace}/configmaps", 3)
    return out


def seed(api: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(api)
    for index in range(12):
        labels = {"app": "ab"[index % 2], "tier": ["web", "db", "cache"][index % 3]}
        core.create_namespaced_config_map(
            namespace,
            client.V1ConfigMap(
                metadata=client.V1ObjectMeta(name=f"cm-{index:02}", labels=labels),
                data={"index": str(index)},
            ),
        )
    for index in range(4):
        core.create_namespaced_pod(
            namespace,
            client.V1Pod(
                metadata=client.V1ObjectMeta(name=f"pod-{index}"),
                spec=client.V1PodSpec(
                    node_name=f"node-{'ab'[index % 2]}",
                    containers=[client.V1Container(name="c", image="registry.k8s.io/pause:3.10")],
                ),
            ),
        )


@contextlib.asynccontextmanager
async def running_agent(
    plane: kube.ControlPlane, workdir: Path
) -> AsyncIterator[tuple[KubeAgent, FaultProxy]]:
    async with fault_proxy("127.0.0.1", plane.port) as link:
        agent = KubeAgent(
            workdir=workdir, kubeconfig=plane.kubeconfig, server=f"https://127.0.0.1:{link.port}"
        )
        try:
            yield agent, link
        finally:
            agent.stop()


async def restart(agent: KubeAgent, state: str) -> None:
    agent.start()  # on the main thread: the harness ties the child's life to this thread
    await asyncio.to_thread(agent.wait_state, state)


async def test_kill_9_offline_then_mid_write_leaves_a_sound_cache(
    kube_cluster: kube.ControlPlane, direct: client.ApiClient, namespace: str, tmp_path: Path
) -> None:
    await asyncio.to_thread(seed, direct, namespace)
    straight = aiohttp.TCPConnector(ssl=kube_cluster.ssl_context())
    admin = {"Authorization": f"Bearer {kube_cluster.token}"}
    async with (
        running_agent(kube_cluster, tmp_path) as (agent, link),
        aiohttp.ClientSession() as http,
        aiohttp.ClientSession(connector=straight, headers=admin) as cloud,
    ):
        await restart(agent, "online")
        before = await answers(http, agent.url, namespace)
        assert before == await answers(cloud, kube_cluster.url, namespace)
        assert [i["metadata"]["name"] for i in before["label"]] == [
            f"cm-{i:02}" for i in range(0, 12, 2)
        ]

        # 1. kill -9 while offline, restart still offline: the same answers, from disk.
        link.cut()
        await asyncio.to_thread(agent.wait_state, "offline")
        assert await answers(http, agent.url, namespace) == before
        agent.kill()
        assert (await asyncio.to_thread(agent.cache, "verify"))["ok"]
        await restart(agent, "offline")
        assert await answers(http, agent.url, namespace) == before

        # 2. kill -9 in the middle of many writes through the proxy (creates, whole-list
        # replacements and watch events, all written through to disk).
        link.restore()
        await asyncio.to_thread(agent.wait_state, "online")
        await write_storm_and_kill(agent, http, namespace)
        report = await asyncio.to_thread(agent.cache, "verify")
        assert report["ok"], report["problems"]
        assert report["checked"] > 12

        # Restarted, the cache still serves: what it answers offline is what the cloud
        # answered online just before the cut.
        await restart(agent, "online")
        fresh = await answers(http, agent.url, namespace)
        assert fresh == await answers(cloud, kube_cluster.url, namespace)
        link.cut()
        await asyncio.to_thread(agent.wait_state, "offline")
        assert await answers(http, agent.url, namespace) == fresh
        stats = await asyncio.to_thread(agent.cache, "stats", "--component", "kubelet")
    assert stats["by_component_resource"]["kubelet/configmaps.v1.core"] == len(fresh["all"])


async def write_storm_and_kill(
    agent: KubeAgent, http: aiohttp.ClientSession, namespace: str
) -> None:
    """Hundreds of writes in flight through the proxy; kill -9 once a quarter are done."""
    done = asyncio.Event()
    completed = 0
    url = f"{agent.url}/api/v1/namespaces/{namespace}/configmaps"
    total = 400

    async def create(index: int, gate: asyncio.Semaphore) -> None:
        nonlocal completed
        body = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": f"storm-{index:04}", "labels": {"app": "storm"}},
            "data": {"payload": "x" * 2048},
        }
        async with gate, http.post(url, json=body, headers=KUBELET) as response:
            await response.read()
        completed += 1
        if completed >= total // 4:
            done.set()

    async def relist() -> None:
        while not done.is_set():
            async with http.get(url, headers=KUBELET) as response:
                await response.read()

    async def watch() -> None:
        async with http.get(url, params={"watch": "1"}, headers=KUBELET) as response:
            async for _line in response.content:
                if done.is_set():
                    return

    gate = asyncio.Semaphore(32)
    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(create(i, gate), name=f"storm.create.{i}") for i in range(total)]
        tasks += [group.create_task(relist(), name=f"storm.list.{i}") for i in range(4)]
        tasks.append(group.create_task(watch(), name="storm.watch"))
        killer = group.create_task(done.wait(), name="storm.kill-trigger")
        await killer
        agent.kill()
        for task in tasks:
            task.cancel()
    assert completed < total, "the kill came after every write finished"
