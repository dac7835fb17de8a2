"""One tunnel server routing by MultiClusterRoute objects to two member clusters.

Real processes throughout: ``tunnel-server run --gateway-listen`` as installed (its default
router, ``FleetRouter``), two member clusters (``tests.harness.member.member_clusters``, shared
by the module: each costs 10-20 s) and a real ``edge-agent run`` in cluster mode in each,
registering them as ``gw-a`` and ``gw-b``. Each member has the same Service ``demo/web``,
whose EndpointSlice points at a backend of its own (a ``backend_http`` process answering with
its cluster's name, ``gw-a`` or ``gw-b``), so the answer says which cluster served it.

Routes (``ROUTES``), applied through the REST API before the tests:

- ``shop`` (``shop.test``): ``X-Canary: 1`` -> gw-b only, with ``X-Via: gw`` set; path
  prefix ``/hangup`` -> gw-b only; everything else 90 gw-a / 10 gw-b.
- ``lost`` (``lost.test``): ``gw-x`` (never registered) and gw-a.
- ``only-a`` (``only-a.test``): gw-a alone.
"""

from __future__ import annotations

import contextlib
import http.client
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.harness import member
from tests.harness.daemons import Server
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
from tests.integration.gateway_server.conftest import _ready_endpoints, _service, _slice, backend

API = "fleet.edgefleet.io/v1alpha1"
PATH = "/api/v1/fleet/multiclusterroutes"


def ref(cluster: str, service: str, weight: int = 1) -> dict[str, Any]:
    return {"cluster": cluster, "namespace": "demo", "name": service, "port": 80, "weight": weight}


ROUTES: dict[str, dict[str, Any]] = {
    "shop": {
        "hostnames": ["shop.test"],
        "rules": [
            {
                "matches": [{"headers": [{"name": "x-canary", "value": "1"}]}],
                "filters": [
                    {
                        "type": "RequestHeaderModifier",
                        "requestHeaderModifier": {"set": [{"name": "X-Via", "value": "gw"}]},
                    }
                ],
                "backendRefs": [ref("gw-b", "web")],
            },
            {
                "matches": [{"path": {"type": "PathPrefix", "value": "/hangup"}}],
                "backendRefs": [ref("gw-b", "web")],
            },
            {"backendRefs": [ref("gw-a", "web", 90), ref("gw-b", "web", 10)]},
        ],
    },
    "lost": {
        "hostnames": ["lost.test"],
        "rules": [{"backendRefs": [ref("gw-x", "web"), ref("gw-a", "web")]}],
    },
    "only-a": {"hostnames": ["only-a.test"], "rules": [{"backendRefs": [ref("gw-a", "web")]}]},
}


@dataclass(frozen=True)
class Answer:
    status: int
    body: Any
    headers: dict[str, str]


@dataclass(kw_only=True)
class World:
    server: Server
    gateway_port: int
    agents: dict[str, ClusterAgent] = field(default_factory=dict)

    def api(self, method: str, path: str, body: object = None) -> Answer:
        """One REST call as the admin."""
        connection = http.client.HTTPSConnection(
            "127.0.0.1", self.server.port, context=self.server.ssl_context(), timeout=30
        )
        try:
            data = None if body is None else json.dumps(body).encode()
            headers = {
                "Authorization": f"Bearer {self.server.admin_token}",
                "Content-Type": "application/json",
            }
            connection.request(method, path, body=data, headers=headers)
            response = connection.getresponse()
            text = response.read()
            return Answer(response.status, json.loads(text) if text else {}, dict(response.headers))
        finally:
            connection.close()

    def status(self, name: str) -> dict[str, Any]:
        answer = self.api("GET", f"{PATH}/{name}")
        assert answer.status == 200, answer
        status: dict[str, Any] = answer.body.get("status") or {}
        return status

    @contextlib.contextmanager
    def client(self) -> Iterator[http.client.HTTPConnection]:
        """A keep-alive HTTP/1.1 connection to the gateway listener."""
        connection = http.client.HTTPConnection("127.0.0.1", self.gateway_port, timeout=30)
        try:
            yield connection
        finally:
            connection.close()


def get(
    connection: http.client.HTTPConnection, host: str, path: str = "/headers", **headers: str
) -> Answer:
    """One GET on ``connection`` (reopened by http.client if the gateway closed it)."""
    connection.request("GET", path, headers={"Host": host, **headers})
    response = connection.getresponse()
    text = response.read()
    kind = response.headers.get("Content-Type", "")
    body: Any = json.loads(text) if "json" in kind and text else text
    return Answer(response.status, body, dict(response.headers))


def conditions(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status.get("conditions", [])}


def _agent(name: str, server: Server, cluster: member.MemberCluster, workdir: Path) -> ClusterAgent:
    agent = ClusterAgent(
        name=name,
        workdir=workdir,
        server=server,
        plane=cluster.plane,
        agent_token=prepare_member(cluster.plane),
    )
    agent.tables["cluster.gateway"] = {"enabled": True, "services": ["demo/*"]}
    agent.join()
    agent.start()
    return agent


def _ready(agent: ClusterAgent) -> None:
    agent.wait_ready(timeout=90)
    agent.wait_connected()
    eventually(
        lambda: _ready_endpoints(agent),
        lambda ready: ready == [1, 1],
        what=f"agent {agent.name} sees the ready endpoints of demo/web and demo/web-b",
        within=60,
        ignore=(OSError, KeyError, TypeError),
    )


def _apply(world: World) -> None:
    for name, spec in ROUTES.items():
        doc = {"apiVersion": API, "kind": "MultiClusterRoute", "metadata": {"name": name}}
        answer = world.api("PUT", f"{PATH}/{name}", {**doc, "spec": spec})
        assert answer.status in (200, 201), answer

    def accepted() -> dict[str, object]:
        return {
            name: conditions(world.status(name)).get("Accepted", {}).get("status")
            for name in ROUTES
        }

    eventually(
        accepted,
        lambda seen: set(seen.values()) == {"True"},
        what="every route Accepted by the gateway",
        within=30,
    )


def _member_web(cluster: member.MemberCluster, port: int) -> None:
    """``demo/web`` on ``cluster``, its one endpoint the backend on ``port``; the agent's RBAC."""
    cluster.api("POST", "/api/v1/namespaces", {"metadata": {"name": "demo"}})
    cluster.api("POST", "/api/v1/namespaces/demo/services", _service("web"))
    slices = "/apis/discovery.k8s.io/v1/namespaces/demo/endpointslices"
    cluster.api("POST", slices, _slice("web", port, ready=True))
    run_kubectl(cluster.kubeconfig, "apply", "-f", str(PACKAGING / "30-gateway-rbac.yaml"))
    run_kubectl(
        cluster.kubeconfig,
        "create",
        "clusterrolebinding",
        "gateway-test",
        "--clusterrole=edgefleet:cluster-agent-gateway",
        f"--serviceaccount={NAMESPACE}:{SERVICE_ACCOUNT}",
    )


def _web_ready(agent: ClusterAgent) -> None:
    agent.wait_ready(timeout=90)
    agent.wait_connected()

    def ready() -> object:
        cluster = agent.status()["cluster"]
        assert isinstance(cluster, dict)
        return cluster["gateway"]["services"]["demo/web"]["80"]

    eventually(
        ready,
        lambda count: count == 1,
        what=f"agent {agent.name} sees the ready endpoint of demo/web",
        within=60,
        ignore=(OSError, KeyError, TypeError),
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("gateway-route")
    port = free_port()
    server = Server(workdir=base, extra_args=("--gateway-listen", f"127.0.0.1:{port}"))
    procs: list[ManagedProcess] = []
    running = World(server=server, gateway_port=port)
    assert HOST is not None
    with member.member_clusters(2, base / "members", nodes=1) as clusters:
        try:
            server.start()
            for name, cluster in zip(("gw-a", "gw-b"), clusters, strict=True):
                proc, backend_port = backend(name, base, host=HOST)
                procs.append(proc)
                _member_web(cluster, backend_port)
                running.agents[name] = _agent(name, server, cluster, base)
            for agent in running.agents.values():  # both start before either is waited for
                _web_ready(agent)
            _apply(running)
            yield running
        finally:
            for agent in running.agents.values():
                agent.stop()
            for proc in procs:
                proc.stop()
            server.stop()
