"""The gateway with the real cluster agent: ``edge-agent run`` in cluster mode, gateway enabled.

One member cluster (``tests.harness.member``) registered by a real cluster-mode agent process
with ``[cluster.gateway] enabled`` and the packaged gateway RBAC; the agent resolves the
Service ``demo/web`` to the EndpointSlice the test writes (kwok runs no pods), pointing at a
``backend_http`` process on one of this machine's non-loopback addresses (the API server
refuses loopback endpoints). ``demo/empty`` has only a not-ready endpoint. Client -> gateway
listener -> tunnel -> agent -> EndpointSlice endpoint, all real processes.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from tests.harness import member
from tests.harness.procs import ManagedProcess, free_port
from tests.harness.waiting import eventually
from tests.integration.clusters.members import (
    NAMESPACE,
    SERVICE_ACCOUNT,
    ClusterAgent,
    prepare_member,
    run_kubectl,
)
from tests.integration.gateway_agent.test_gateway_agent import HOST, PACKAGING
from tests.integration.gateway_server.backend_http import pattern
from tests.integration.gateway_server.conftest import GatewayServer, backend

pytestmark = [pytest.mark.kube, pytest.mark.timeout(400)]

CLUSTER = "gw-real"
ROUTES = {"real.test": [f"{CLUSTER}/demo/web:80"], "empty.test": [f"{CLUSTER}/demo/empty:80"]}


@dataclass
class RealGateway:
    url: str
    agent: ClusterAgent


def _service(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "demo"},
        "spec": {"ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
    }


def _slice(service: str, port: int, *, ready: bool) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{service}-1",
            "namespace": "demo",
            "labels": {
                "kubernetes.io/service-name": service,
                "endpointslice.kubernetes.io/managed-by": "edgefleet-test",
            },
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        "endpoints": [{"addresses": [HOST], "conditions": {"ready": ready}}],
    }


def _objects(cluster: member.MemberCluster, port: int) -> None:
    cluster.api("POST", "/api/v1/namespaces", {"metadata": {"name": "demo"}})
    slices = "/apis/discovery.k8s.io/v1/namespaces/demo/endpointslices"
    for name, ready in (("web", True), ("empty", False)):
        cluster.api("POST", "/api/v1/namespaces/demo/services", _service(name))
        cluster.api("POST", slices, _slice(name, port, ready=ready))


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealGateway]:
    assert HOST is not None
    base = tmp_path_factory.mktemp("gateway-real")
    routes = base / "routes.json"
    routes.write_text(json.dumps(ROUTES))
    port = free_port()
    server = GatewayServer(
        workdir=base, routes_file=routes, extra_args=("--gateway-listen", f"127.0.0.1:{port}")
    )
    procs: list[ManagedProcess] = []
    agent: ClusterAgent | None = None
    with member.running_member("gwreal", base / "member", nodes=1) as cluster:
        try:
            web, web_port = backend("real", base, host=HOST)
            procs.append(web)
            _objects(cluster, web_port)
            run_kubectl(cluster.kubeconfig, "apply", "-f", str(PACKAGING / "30-gateway-rbac.yaml"))
            # The packaged binding names the packaged service account; the harness's is another.
            run_kubectl(
                cluster.kubeconfig,
                "create",
                "clusterrolebinding",
                "gateway-test",
                "--clusterrole=edgefleet:cluster-agent-gateway",
                f"--serviceaccount={NAMESPACE}:{SERVICE_ACCOUNT}",
            )
            server.start()
            agent = ClusterAgent(
                name=CLUSTER,
                workdir=base,
                server=server,
                plane=cluster.plane,
                agent_token=prepare_member(cluster.plane),
            )
            agent.tables["cluster.gateway"] = {"enabled": True, "services": ["demo/*"]}
            agent.join()
            agent.start()
            agent.wait_ready(timeout=90)
            agent.wait_connected()
            eventually(
                lambda: _ready_endpoints(agent),
                lambda ready: ready == 1,
                what="the agent sees demo/web's ready endpoint",
                within=60,
                ignore=(OSError, KeyError, TypeError),
            )
            yield RealGateway(url=f"http://127.0.0.1:{port}", agent=agent)
        finally:
            if agent is not None:
                agent.stop()
            for proc in procs:
                proc.stop()
            server.stop()


def _ready_endpoints(agent: ClusterAgent) -> object:
    cluster = agent.status()["cluster"]
    assert isinstance(cluster, dict)
    return cluster["gateway"]["services"]["demo/web"]["80"]


def _session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120))


async def test_requests_reach_the_endpoint_the_agent_resolves(real: RealGateway) -> None:
    data = pattern(5 * 1024 * 1024)
    async with _session() as http:
        async with http.get(f"{real.url}/headers", headers={"Host": "real.test"}) as answer:
            assert answer.status == 200, await answer.text()
            seen = await answer.json()
        async with http.post(
            f"{real.url}/upload", data=io.BytesIO(data), headers={"Host": "real.test"}
        ) as answer:
            uploaded = await answer.json()
        async with http.ws_connect(f"{real.url}/ws", headers={"Host": "real.test"}) as ws:
            await ws.send_str("ping")
            echoed = await ws.receive_str(timeout=30)
    assert seen["backend"] == "real"
    headers = {k.lower(): v for k, v in seen["headers"]}
    assert headers["x-forwarded-host"] == "real.test"
    assert headers["x-forwarded-for"] == "127.0.0.1"
    assert uploaded["sha256"] == hashlib.sha256(data).hexdigest()
    assert echoed == "real:ping"


async def test_a_service_without_ready_endpoints_is_503_with_the_agents_reason(
    real: RealGateway,
) -> None:
    async with (
        _session() as http,
        http.get(f"{real.url}/headers", headers={"Host": "empty.test"}) as answer,
    ):
        assert answer.status == 503
        problem = await answer.json(content_type=None)
    assert problem["reason"] == "backend_unreachable"
    assert "no ready endpoints for demo/empty:80" in problem["detail"], problem
