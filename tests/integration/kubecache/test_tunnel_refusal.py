# Copyright 2026 The EdgeFleet Authors. SPDX-License-Identifier: Apache-2.0
"""Through the tunnel upstream, a write the tunnel could not forward is "not sent", not unknown.

Real kube-apiserver, real tunnel-server process, the agent's tunnel client and kube proxy in
this process. The tunnel server is stopped; before the health checker turns offline (it is
made deaf here, so the window is held open), a write still goes to the tunnel upstream, which
refuses it without forwarding and says so.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import prometheus_client
import pytest

from edge_agent.kubecache import KubeCacheSettings, serve_kube_proxy
from edge_agent.kubecache.health import State
from edge_agent.settings import JoinSettings, TunnelClientSettings
from edge_agent.tunnel_client import TunnelClient
from edge_agent.tunnel_upstream import open_tunnel_upstream
from tests.harness import kube
from tests.harness.daemons import Agent, Server
from tests.integration.kube_tunnel.test_kube_through_tunnel import NODE, wait_for
from tests.integration.kubecache.test_link_faults import DEAF_HEALTH

pytestmark = pytest.mark.kube


async def test_a_write_the_tunnel_could_not_forward_is_reported_as_not_sent(
    tmp_path: Path, kube_cluster: kube.ControlPlane
) -> None:
    server = Server(workdir=tmp_path, extra_args=("--kube-upstream", str(kube_cluster.kubeconfig)))
    server.start()
    agent = Agent(name=NODE, workdir=tmp_path, server=server)
    agent.join()
    tunnel = TunnelClient(
        data_dir=agent.data_dir,
        settings=TunnelClientSettings(backoff_base=0.1, backoff_cap=0.5),
        join_settings=JoinSettings(),
        registry=prometheus_client.CollectorRegistry(),
    )
    settings = KubeCacheSettings(
        cache_dir=tmp_path / "kubecache", port=0, cache_agents=frozenset({"*"}), health=DEAF_HEALTH
    )
    configmap = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "never"}}
    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(tunnel.run(), name="test.tunnel")
            await wait_for(lambda: bool(tunnel.status()["connected"]))
            async with (
                open_tunnel_upstream(tunnel) as upstream,
                serve_kube_proxy(settings, upstream) as proxy,
                aiohttp.ClientSession() as http,
            ):
                server.stop()
                await wait_for(lambda: not tunnel.status()["connected"])
                async with http.post(
                    f"{proxy.url}/api/v1/namespaces/default/configmaps", json=configmap
                ) as answer:
                    status, body = answer.status, await answer.json()
                assert proxy.health.state.state is State.ONLINE  # the write was forwarded
            tunnel.stop()
    finally:
        server.stop()
    assert status == 503, body
    assert "was not sent" in body["message"]
    assert "nothing was changed" in body["message"]
