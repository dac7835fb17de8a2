# Copyright 2026 The EdgeFleet Authors. SPDX-License-Identifier: Apache-2.0
"""The kube proxy in front of the shared real API server, through a link that can be cut."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import prometheus_client
import pytest
import yaml
from kubernetes import client, config

from edge_agent.kubecache import (
    HealthSettings,
    KubeCacheSettings,
    KubeProxy,
    open_direct_upstream,
    serve_kube_proxy,
)
from edge_agent.kubecache.health import State
from tests.harness import kube
from tests.harness.faultproxy import FaultProxy, fault_proxy

pytestmark = pytest.mark.kube

KUBELET = {"User-Agent": "kubelet/v1.36.3 (linux/amd64) kubernetes/test"}
"""Headers of a request as the kubelet sends it: the component the cache keys by."""

# A cut resets connections, so going offline never waits for the probe timeout; 5 s keeps a
# probe slowed by a busy machine from counting as a failure.
FAST_HEALTH = HealthSettings(interval=0.2, timeout=5.0, failure_threshold=2, success_threshold=2)
"""Probe often in tests so a cut is noticed at once; thresholds keep their meaning."""


@dataclass(kw_only=True)
class Edge:
    """A running proxy, the link under it, and clients pointed at it."""

    proxy: KubeProxy
    link: FaultProxy
    plane: kube.ControlPlane
    registry: prometheus_client.CollectorRegistry
    workdir: Path

    @property
    def url(self) -> str:
        return self.proxy.url

    def api(self) -> client.ApiClient:
        configuration = client.Configuration()
        configuration.host = self.url
        return client.ApiClient(configuration)

    async def go_offline(self, *, stop_apiserver: bool = False) -> None:
        if stop_apiserver:
            await asyncio.to_thread(self.plane.stop_apiserver)
        else:
            self.link.cut()
        await self.proxy.health.wait_for(State.OFFLINE)

    async def go_online(self) -> None:
        self.link.restore()
        await self.proxy.health.wait_for(State.ONLINE)

    def kubeconfig(self) -> Path:
        path = self.workdir / "proxy-kubeconfig"
        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "edge", "cluster": {"server": self.url}}],
            "users": [{"name": "node", "user": {}}],
            "contexts": [{"name": "edge", "context": {"cluster": "edge", "user": "node"}}],
            "current-context": "edge",
        }
        path.write_text(yaml.safe_dump(cfg))
        return path

    async def kubectl(self, *args: str, direct: bool = False) -> Any:
        """Run the real kubectl against the proxy (or the API server) and parse its JSON."""
        kubeconfig = self.plane.kubeconfig if direct else self.kubeconfig()
        process = await asyncio.create_subprocess_exec(
            str(kube.kube_bin_dir() / "kubectl"),
            f"--kubeconfig={kubeconfig}",
            f"--cache-dir={self.workdir / ('kubectl-direct' if direct else 'kubectl-cache')}",
            *args,
            "-o",
            "json",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        stdout, stderr = await process.communicate()
        assert process.returncode == 0, stderr.decode()
        return json.loads(stdout)


@pytest.fixture
def direct(kube_cluster: kube.ControlPlane) -> Iterator[client.ApiClient]:
    with config.new_client_from_config(config_file=str(kube_cluster.kubeconfig)) as api_client:
        yield api_client


@pytest.fixture
def namespace(direct: client.ApiClient) -> Iterator[str]:
    name = f"kc-{uuid.uuid4().hex[:10]}"
    core = client.CoreV1Api(direct)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    core.delete_namespace(name)


def edge_settings(workdir: Path, **overrides: Any) -> KubeCacheSettings:
    values: dict[str, Any] = {
        "port": 0,
        "cache_dir": workdir / "cache",
        "cache_agents": frozenset({"*"}),
        "health": FAST_HEALTH,
        "bookmark_interval": 0.5,
    }
    values.update(overrides)
    return KubeCacheSettings(**values)


@pytest.fixture
async def edge(kube_cluster: kube.ControlPlane, tmp_path: Path) -> AsyncIterator[Edge]:
    async with (
        fault_proxy("127.0.0.1", kube_cluster.port) as link,
        open_direct_upstream(
            kube_cluster.kubeconfig, server=f"https://127.0.0.1:{link.port}"
        ) as upstream,
    ):
        registry = prometheus_client.CollectorRegistry()
        async with serve_kube_proxy(edge_settings(tmp_path), upstream, registry=registry) as proxy:
            async with asyncio.timeout(60):  # a slow first probe would start it offline
                await proxy.health.wait_for(State.ONLINE)
            yield Edge(
                proxy=proxy, link=link, plane=kube_cluster, registry=registry, workdir=tmp_path
            )


@pytest.fixture
async def cloud(edge: Edge) -> AsyncIterator[aiohttp.ClientSession]:
    """A session straight to the real API server (admin token, its CA)."""
    connector = aiohttp.TCPConnector(ssl=edge.plane.ssl_context())
    headers = {"Authorization": f"Bearer {edge.plane.token}"}
    async with aiohttp.ClientSession(
        base_url=edge.plane.url, connector=connector, headers=headers
    ) as session:
        yield session
