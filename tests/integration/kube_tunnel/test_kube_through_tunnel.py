"""A node's kube proxy reaches the cloud's API server through its tunnel, as itself.

Real kube-apiserver, real tunnel-server process (``--kube-upstream``), the agent's tunnel
client and kube proxy in this process, and the official Python client as the node component.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import prometheus_client
import pytest
import pytest_asyncio
from kubernetes import client, config

from edge_agent.kubecache import KubeCacheSettings, serve_kube_proxy
from edge_agent.kubecache.proxy import KubeProxy
from edge_agent.settings import JoinSettings, TunnelClientSettings
from edge_agent.tunnel_client import TunnelClient
from edge_agent.tunnel_upstream import open_tunnel_upstream
from tests.harness import kube
from tests.harness.daemons import Agent, Server
from tests.harness.procs import free_port
from tests.harness.waiting import eventually_async

pytestmark = pytest.mark.kube

NODE = "edge-k"


@pytest.fixture(scope="module")
def admin(kube_cluster: kube.ControlPlane) -> Iterator[client.ApiClient]:
    with config.new_client_from_config(config_file=str(kube_cluster.kubeconfig)) as api:
        rbac = client.RbacAuthorizationV1Api(api)
        binding = client.V1ClusterRoleBinding(
            metadata=client.V1ObjectMeta(name="edgefleet-test-nodes"),
            role_ref=client.V1RoleRef(
                api_group="rbac.authorization.k8s.io", kind="ClusterRole", name="system:node"
            ),
            subjects=[
                client.RbacV1Subject(
                    api_group="rbac.authorization.k8s.io", kind="Group", name="system:nodes"
                )
            ],
        )
        with contextlib.suppress(client.ApiException):
            rbac.create_cluster_role_binding(binding)
        yield api


@dataclass
class Setup:
    server: Server
    proxy: KubeProxy
    client: TunnelClient


@pytest_asyncio.fixture
async def through_tunnel(
    tmp_path: Path, kube_cluster: kube.ControlPlane, admin: client.ApiClient
) -> AsyncIterator[Setup]:
    assert admin.configuration.host
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
        cache_dir=tmp_path / "kubecache", port=0, cache_agents=frozenset({"*"})
    )
    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(tunnel.run(), name="test.tunnel")
            await wait_for(lambda: bool(tunnel.status()["connected"]))
            async with (
                open_tunnel_upstream(tunnel) as upstream,
                serve_kube_proxy(settings, upstream) as proxy,
            ):
                yield Setup(server=server, proxy=proxy, client=tunnel)
                tunnel.stop()
    finally:
        server.stop()


async def wait_for(condition: Callable[[], bool], *, within: float = 30.0) -> None:
    # Polling another process's state: there is no event to wait on.
    async def met() -> bool:
        return condition()

    await eventually_async(met, what=getattr(condition, "__name__", "condition"), within=within)


async def who_am_i(proxy_url: str, headers: dict[str, str] | None = None) -> str:
    review = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            proxy_url + "/apis/authentication.k8s.io/v1/selfsubjectreviews",
            json=review,
            headers=headers or {},
        ) as answer,
    ):
        body = await answer.json()
    assert answer.status == 201, body
    return str(body["status"]["userInfo"]["username"])


def node_client(proxy_url: str) -> client.CoreV1Api:
    configuration = client.Configuration()
    configuration.host = proxy_url
    return client.CoreV1Api(client.ApiClient(configuration))


async def test_node_acts_as_itself_and_cannot_pretend(through_tunnel: Setup) -> None:
    url = through_tunnel.proxy.url
    assert await who_am_i(url) == f"system:node:{NODE}"
    forged = {"Impersonate-User": "admin", "Authorization": "Bearer stolen"}
    assert await who_am_i(url, forged) == f"system:node:{NODE}"


async def test_node_reads_through_the_tunnel_then_from_cache(
    through_tunnel: Setup, admin: client.ApiClient
) -> None:
    core_admin = client.CoreV1Api(admin)
    namespace = f"tunnel-{int(time.time() * 1000) % 10**8}"
    core_admin.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(name="on-edge", labels={"app": "demo"}),
        spec=client.V1PodSpec(
            node_name=NODE, containers=[client.V1Container(name="c", image="example/demo:1")]
        ),
    )
    core_admin.create_namespaced_pod(namespace, pod)
    core = node_client(through_tunnel.proxy.url)
    try:
        online = await asyncio.to_thread(
            core.list_namespaced_pod, namespace, label_selector="app=demo"
        )
        assert [p.metadata.name for p in online.items if p.metadata] == ["on-edge"]
        through_tunnel.server.stop()  # the cloud is gone: the tunnel drops, the cache answers
        await wait_for(lambda: not through_tunnel.proxy.health.online)
        offline = await asyncio.to_thread(
            core.list_namespaced_pod, namespace, label_selector="app=demo"
        )
        assert [p.metadata.name for p in offline.items if p.metadata] == ["on-edge"]
        assert json.dumps(offline.to_dict(), default=str) == json.dumps(
            online.to_dict(), default=str
        )
    finally:
        core.api_client.close()
        core_admin.delete_namespace(namespace)


def kubectl(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(kube.kube_bin_dir() / "kubectl"), "--server", f"http://127.0.0.1:{port}", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_real_agent_in_tunnel_mode_serves_kubectl_online_and_offline(
    tmp_path: Path, kube_cluster: kube.ControlPlane, admin: client.ApiClient
) -> None:
    namespace = f"agent-{int(time.time() * 1000) % 10**8}"
    core_admin = client.CoreV1Api(admin)
    core_admin.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(name="web-1", labels={"app": "web"}),
        spec=client.V1PodSpec(
            node_name=NODE, containers=[client.V1Container(name="c", image="example/web:1")]
        ),
    )
    core_admin.create_namespaced_pod(namespace, pod)
    server = Server(workdir=tmp_path, extra_args=("--kube-upstream", str(kube_cluster.kubeconfig)))
    server.start()
    port = free_port()
    agent = Agent(
        name=NODE,
        workdir=tmp_path,
        server=server,
        tables={
            "kube": {"enabled": True, "upstream": "tunnel", "port": port, "cache_agents": ["*"]}
        },
    )
    try:
        agent.join()
        agent.start()
        agent.wait_connected()
        agent.wait_ready()
        online = kubectl(port, "get", "pods", "-n", namespace, "-l", "app=web", "-o", "name")
        assert online.returncode == 0, online.stderr
        assert online.stdout.strip() == "pod/web-1"
        server.stop()
        await wait_for(lambda: agent.status()["kube"]["upstream"]["state"] == "offline")  # type: ignore[index]
        offline = kubectl(port, "get", "pods", "-n", namespace, "-l", "app=web", "-o", "name")
        assert offline.returncode == 0, offline.stderr
        assert offline.stdout == online.stdout
        refused = kubectl(port, "create", "configmap", "x", "-n", namespace)
        assert refused.returncode != 0
        assert "offline" in refused.stderr
        # The node reboots while its cloud is still away: the kubelet is served from the cache.
        agent.stop()
        agent.start()
        agent.wait_ready()
        rebooted = kubectl(port, "get", "pods", "-n", namespace, "-l", "app=web", "-o", "name")
        assert rebooted.returncode == 0, rebooted.stderr
        assert rebooted.stdout == online.stdout
        assert agent.status()["tunnel"]["connected"] is False  # type: ignore[index]
    finally:
        agent.stop()
        server.stop()
        core_admin.delete_namespace(namespace)


async def test_a_refused_first_attempt_ends_the_wait_for_the_tunnel(tmp_path: Path) -> None:
    # Booting without the cloud: the kube proxy's upstream is ready once the first attempt
    # failed, not after ``first_session_wait`` (the kubelet would be refused meanwhile).
    server = Server(workdir=tmp_path)
    server.start()
    agent = Agent(name=NODE, workdir=tmp_path, server=server)
    try:
        agent.join()
    finally:
        server.stop()  # the port is closed now: every attempt is refused at once
    tunnel = TunnelClient(
        data_dir=agent.data_dir,
        settings=TunnelClientSettings(),
        join_settings=JoinSettings(),
        registry=prometheus_client.CollectorRegistry(),
    )
    async with asyncio.TaskGroup() as group:
        group.create_task(tunnel.run(), name="test.tunnel")
        # Far below the wait it would otherwise take, far above a refused connect.
        async with asyncio.timeout(20), open_tunnel_upstream(tunnel, first_session_wait=120):
            assert tunnel.settled.is_set()
            assert not tunnel.up.is_set()
            assert tunnel.status()["last_error"]
        tunnel.stop()
