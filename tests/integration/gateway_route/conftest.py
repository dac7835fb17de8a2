"""One tunnel server routing by MultiClusterRoute objects; one member cluster registered twice.

Real processes throughout: ``tunnel-server run --gateway-listen`` as installed (its default
router, ``FleetRouter``), one member cluster (``tests.harness.member``) and two real
``edge-agent run`` processes in cluster mode registering it as ``gw-a`` and ``gw-b`` (a
second member cluster would cost another 10-20 s of two busy cores and prove nothing more:
the gateway only sees two clusters with their own tunnels). The Services and EndpointSlices
are those of ``tests.integration.gateway_server.conftest``: ``demo/web`` answers as backend
``a``, ``demo/web-b`` as backend ``b``; the routes send ``web`` through ``gw-a`` and ``web-b``
through ``gw-b``, so the backend's name says which cluster's tunnel a request took.

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
from tests.integration.clusters.members import ClusterAgent, prepare_member
from tests.integration.gateway_agent.test_gateway_agent import HOST
from tests.integration.gateway_server.conftest import _ready_endpoints, _services, backend

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
                "backendRefs": [ref("gw-b", "web-b")],
            },
            {
                "matches": [{"path": {"type": "PathPrefix", "value": "/hangup"}}],
                "backendRefs": [ref("gw-b", "web-b")],
            },
            {"backendRefs": [ref("gw-a", "web", 90), ref("gw-b", "web-b", 10)]},
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


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("gateway-route")
    port = free_port()
    server = Server(workdir=base, extra_args=("--gateway-listen", f"127.0.0.1:{port}"))
    procs: list[ManagedProcess] = []
    running = World(server=server, gateway_port=port)
    assert HOST is not None
    with member.running_member("gwroute", base / "member", nodes=1) as cluster:
        try:
            backend_a, port_a = backend("a", base, host=HOST)
            backend_b, port_b = backend("b", base, host=HOST)
            procs += [backend_a, backend_b]
            _services(cluster, {"a": port_a, "b": port_b})
            server.start()
            for name in ("gw-a", "gw-b"):  # both start before either is waited for
                running.agents[name] = _agent(name, server, cluster, base)
            for agent in running.agents.values():
                _ready(agent)
            _apply(running)
            yield running
        finally:
            for agent in running.agents.values():
                agent.stop()
            for proc in procs:
                proc.stop()
            server.stop()
