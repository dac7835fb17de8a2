"""One tunnel server routing by MultiClusterRoute objects to two member clusters.

Real processes throughout: ``tunnel-server run --gateway-listen`` as installed (its default
router, ``FleetRouter``), two member clusters (``tests.harness.member.member_clusters``: each
costs 10-20 s, so a module shares its pair) and a real ``edge-agent run`` in cluster mode in
each, registering them as ``gw-a`` and ``gw-b``. Each member has the Service ``demo/web``,
whose EndpointSlice points at a backend of its own (a ``backend_http`` process answering with
its cluster's name, ``gw-a`` or ``gw-b``), so the answer says which cluster served it.

``pair()`` builds such a world; a module adds its own Services and backends (``Pair``) and
routes. The pair is module-scoped, so a test that changes it (kills an agent, makes endpoints
unready, makes a backend fail) puts it back before it ends, or works on names of its own.

Routes of this module's ``world`` (``ROUTES``), applied through the REST API before the tests:

- ``shop`` (``shop.test``): ``X-Canary: 1`` -> gw-b only, with ``X-Via: gw`` set; path
  prefix ``/hangup`` -> gw-b only; everything else 90 gw-a / 10 gw-b.
- ``lost`` (``lost.test``): ``gw-x`` (never registered) and gw-a.
- ``only-a`` (``only-a.test``): gw-a alone.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.harness import member
from tests.harness.daemons import REPO, Server
from tests.harness.procs import ManagedProcess, free_port, wait_port
from tests.harness.waiting import eventually
from tests.integration.clusters.members import (
    NAMESPACE,
    SERVICE_ACCOUNT,
    ClusterAgent,
    prepare_member,
    run_kubectl,
)
from tests.integration.gateway_agent.test_gateway_agent import HOST, PACKAGING
from tests.integration.gateway_server.conftest import _service, _slice

API = "fleet.edgefleet.io/v1alpha1"
PATH = "/api/v1/fleet/multiclusterroutes"
SLICES = "/apis/discovery.k8s.io/v1/namespaces/demo/endpointslices"
CLUSTERS = ("gw-a", "gw-b")


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
    clusters: dict[str, member.MemberCluster] = field(default_factory=dict)
    """Cluster name (``gw-a``, ``gw-b``) -> its member cluster."""
    ports: dict[str, int] = field(default_factory=dict)
    """Backend name -> the port its ``backend_http`` listens on."""
    base: Path = Path()
    """The module's directory: ``<backend>.fail`` and ``<backend>.log`` live here."""

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

    def backend_status(self, route: str) -> dict[str, dict[str, Any]]:
        """The route status's backends by name (``gw-a/demo/web:80``)."""
        return {b["name"]: b for b in self.status(route).get("backends", [])}

    def ready(self, cluster: str, service: str, backend: str, *, ready: bool) -> None:
        """Rewrite ``service``'s EndpointSlice in ``cluster``: its one endpoint ready or not."""
        doc = _slice(service, self.ports[backend], ready=ready)
        self.clusters[cluster].api("PUT", f"{SLICES}/{service}-1", doc)

    @contextlib.contextmanager
    def failing(self, backend: str) -> Iterator[None]:
        """``backend`` answers 500 to everything inside the block (its fail file exists)."""
        flag = self.base / f"{backend}.fail"
        flag.touch()
        try:
            yield
        finally:
            flag.unlink()

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


def backend_proc(name: str, base: Path) -> tuple[ManagedProcess, int]:
    """``backend_http`` answering as ``name``; the process and its port.

    It answers 500 while ``base/<name>.fail`` exists and logs every request to
    ``base/<name>.log``.
    """
    assert HOST is not None
    port = free_port(HOST)
    proc = ManagedProcess(
        f"backend[{name}]",
        [
            sys.executable,
            "-m",
            "tests.integration.gateway_server.backend_http",
            "--host",
            HOST,
            "--port",
            str(port),
            "--name",
            name,
            "--fail-file",
            str(base / f"{name}.fail"),
            "--request-log",
            str(base / f"{name}.log"),
        ],
        log_path=base / f"backend-{name}.log",
        env={"PYTHONPATH": str(REPO)},
    )
    wait_port(HOST, port, timeout=30, proc=proc)
    return proc, port


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


def apply_routes(world: World, routes: Mapping[str, dict[str, Any]]) -> None:
    """PUT each route; until the gateway has Accepted every one."""
    for name, spec in routes.items():
        doc = {"apiVersion": API, "kind": "MultiClusterRoute", "metadata": {"name": name}}
        answer = world.api("PUT", f"{PATH}/{name}", {**doc, "spec": spec})
        assert answer.status in (200, 201), answer

    def accepted() -> dict[str, object]:
        return {
            name: conditions(world.status(name)).get("Accepted", {}).get("status")
            for name in routes
        }

    eventually(
        accepted,
        lambda seen: set(seen.values()) == {"True"},
        what="every route Accepted by the gateway",
        within=30,
    )


def _member_services(cluster: member.MemberCluster, slices: Mapping[str, tuple[int, bool]]) -> None:
    """Service -> (port, ready): each with one endpoint, the backend on that port; RBAC."""
    cluster.api("POST", "/api/v1/namespaces", {"metadata": {"name": "demo"}})
    for service, (port, ready) in slices.items():
        cluster.api("POST", "/api/v1/namespaces/demo/services", _service(service))
        cluster.api("POST", SLICES, _slice(service, port, ready=ready))
    run_kubectl(cluster.kubeconfig, "apply", "-f", str(PACKAGING / "30-gateway-rbac.yaml"))
    run_kubectl(
        cluster.kubeconfig,
        "create",
        "clusterrolebinding",
        "gateway-test",
        "--clusterrole=edgefleet:cluster-agent-gateway",
        f"--serviceaccount={NAMESPACE}:{SERVICE_ACCOUNT}",
    )


def wait_serving(agent: ClusterAgent, counts: Mapping[str, int]) -> None:
    """Until ``agent`` is connected and sees ``counts`` ready endpoints (Service -> count)."""
    agent.wait_ready(timeout=90)
    agent.wait_connected()

    def seen() -> dict[str, object]:
        cluster = agent.status()["cluster"]
        assert isinstance(cluster, dict)
        services = cluster["gateway"]["services"]
        return {name: services.get(f"demo/{name}", {}).get("80") for name in counts}

    eventually(
        seen,
        lambda now: now == dict(counts),
        what=f"agent {agent.name} sees the ready endpoints {dict(counts)}",
        within=60,
        ignore=(OSError, KeyError, TypeError),
    )


Layout = Mapping[str, Mapping[str, tuple[str, bool]]]
"""Cluster -> Service -> (backend name, ready): the Services of each member cluster."""


@contextlib.contextmanager
def pair(
    base: Path,
    *,
    layout: Layout,
    backends: tuple[str, ...],
    routes: Mapping[str, dict[str, Any]],
) -> Iterator[World]:
    """The server, member clusters ``gw-a``/``gw-b`` with their agents; ``routes`` applied.

    The ``backends`` (``backend_http`` processes by name) serve the Services of ``layout``.
    Every cluster gets ``demo/web`` -> the backend named as the cluster, whatever ``layout``
    adds.
    """
    port = free_port()
    server = Server(workdir=base, extra_args=("--gateway-listen", f"127.0.0.1:{port}"))
    procs: list[ManagedProcess] = []
    world = World(server=server, gateway_port=port, base=base)
    with member.member_clusters(len(CLUSTERS), base / "members", nodes=1) as clusters:
        try:
            server.start()
            for name in dict.fromkeys((*CLUSTERS, *backends)):
                proc, world.ports[name] = backend_proc(name, base)
                procs.append(proc)
            wanted: dict[str, dict[str, tuple[str, bool]]] = {}
            for name, cluster in zip(CLUSTERS, clusters, strict=True):
                world.clusters[name] = cluster
                wanted[name] = {"web": (name, True), **layout.get(name, {})}
                slices = {s: (world.ports[b], ready) for s, (b, ready) in wanted[name].items()}
                _member_services(cluster, slices)
                world.agents[name] = _agent(name, server, cluster, base)
            for name, agent in world.agents.items():  # all start before any is waited for
                wait_serving(agent, {s: int(ready) for s, (_, ready) in wanted[name].items()})
            apply_routes(world, routes)
            yield world
        finally:
            for agent in world.agents.values():
                agent.stop()
            for proc in procs:
                proc.stop()
            server.stop()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """The pair with ``demo/web`` alone in each cluster and ``ROUTES``."""
    base = tmp_path_factory.mktemp("gateway-route")
    with pair(base, layout={}, backends=(), routes=ROUTES) as running:
        yield running
