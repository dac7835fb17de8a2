"""One tunnel server with ``--gateway-listen``, one member cluster with the real agent.

Real processes throughout: ``tunnel-server run`` (through ``server_proc``, which only swaps in
a fixed route table), a member cluster (``tests.harness.member``) registered by a real
``edge-agent run`` in cluster mode with ``[cluster.gateway]`` enabled (allow-list ``demo/*``),
and two ``backend_http`` processes answering with their names. kwok runs no pods, so the
Services have no selector and their EndpointSlices are written here, pointing at the backends
on one of this machine's non-loopback addresses (the API server refuses loopback endpoints).

Services in ``demo``: ``web`` (backend ``a``), ``web-b`` (backend ``b``), ``down`` (its only
endpoint is not ready). Routes (``Host`` -> backends in the order to try):

- ``web.test``: gw-a/demo/web:80
- ``retry.test``: gw-a/demo/down:80 (no ready endpoints), then gw-a/demo/web-b:80
- ``down.test``: gw-a/demo/down:80 only
- ``offline.test``: gw-c/demo/web:80 (a cluster that never joined)
- ``pair.test``: gw-a/demo/web:80, then gw-a/demo/web-b:80
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.harness import member
from tests.harness.certs import KeyPair
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

CLUSTER = "gw-a"
ROUTES = {
    "web.test": [f"{CLUSTER}/demo/web:80"],
    "retry.test": [f"{CLUSTER}/demo/down:80", f"{CLUSTER}/demo/web-b:80"],
    "down.test": [f"{CLUSTER}/demo/down:80"],
    "offline.test": ["gw-c/demo/web:80"],
    "pair.test": [f"{CLUSTER}/demo/web:80", f"{CLUSTER}/demo/web-b:80"],
}
IDLE_TIMEOUT = 2.0
"""Seconds of ``--gateway-idle-timeout``: short, so the slow-client test is quick."""
RESPONSE_TIMEOUT = 3.0
"""Seconds of ``--gateway-response-timeout``: short, so the 504 test is quick."""
STREAM_IDLE_TIMEOUT = 3.0
"""Seconds of ``--gateway-stream-idle-timeout``: short, so the stalled-answer test is quick."""
MAX_BODY = 30 * 1024 * 1024
"""Bytes of ``--gateway-max-body-bytes``: above the 20 MB transfers, below the 413 test's."""


@dataclass(kw_only=True)
class GatewayServer(Server):
    """``Server`` started through ``server_proc`` (the same CLI, a fixed route table)."""

    routes_file: Path | None = None

    def start(self) -> None:
        assert self.routes_file is not None
        self.process = ManagedProcess(
            "tunnel-server",
            [
                sys.executable,
                "-m",
                "tests.integration.gateway_server.server_proc",
                str(self.routes_file),
                "run",
                "--listen",
                f"127.0.0.1:{self.port}",
                "--data-dir",
                str(self.data_dir),
                "--public-name",
                "127.0.0.1",
                *self.extra_args,
            ],
            log_path=self.workdir / "tunnel-server.log",
            env={"PYTHONPATH": str(REPO)},
        )
        self.wait_ready()


@dataclass
class Gateway:
    server: GatewayServer
    host: str
    port: int
    agent: ClusterAgent

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def backend(name: str, workdir: Path, host: str = "127.0.0.1") -> tuple[ManagedProcess, int]:
    """A ``backend_http`` process answering as ``name`` on ``host``; it and its port."""
    port = free_port(host)
    proc = ManagedProcess(
        f"backend[{name}]",
        [
            sys.executable,
            "-m",
            "tests.integration.gateway_server.backend_http",
            "--host",
            host,
            "--port",
            str(port),
            "--name",
            name,
        ],
        log_path=workdir / f"backend-{name}.log",
        env={"PYTHONPATH": str(REPO)},
    )
    wait_port(host, port, timeout=30, proc=proc)
    return proc, port


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


def _services(cluster: member.MemberCluster, ports: dict[str, int]) -> None:
    """The Services and their slices; the agent may read them (packaged RBAC)."""
    cluster.api("POST", "/api/v1/namespaces", {"metadata": {"name": "demo"}})
    slices = "/apis/discovery.k8s.io/v1/namespaces/demo/endpointslices"
    for name, (port, ready) in {
        "web": (ports["a"], True),
        "web-b": (ports["b"], True),
        "down": (ports["a"], False),
    }.items():
        cluster.api("POST", "/api/v1/namespaces/demo/services", _service(name))
        cluster.api("POST", slices, _slice(name, port, ready=ready))
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


def _ready_endpoints(agent: ClusterAgent) -> object:
    cluster = agent.status()["cluster"]
    assert isinstance(cluster, dict)
    services = cluster["gateway"]["services"]
    return [services[f"demo/{name}"]["80"] for name in ("web", "web-b")]


def _agent(server: Server, cluster: member.MemberCluster, workdir: Path) -> ClusterAgent:
    """The real cluster agent, gateway enabled; once it sees both ready endpoints."""
    agent = ClusterAgent(
        name=CLUSTER,
        workdir=workdir,
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
        lambda ready: ready == [1, 1],
        what="the agent sees the ready endpoints of demo/web and demo/web-b",
        within=60,
        ignore=(OSError, KeyError, TypeError),
    )
    return agent


@contextlib.contextmanager
def running_gateway(base: Path, *, tls: KeyPair | None = None) -> Iterator[Gateway]:
    """The server (HTTPS on the gateway with ``tls``), the member and its agent, two backends."""
    routes = base / "routes.json"
    routes.write_text(json.dumps(ROUTES))
    port = free_port()
    tls_args = (
        ()
        if tls is None
        else (
            "--gateway-cert-file",
            str(tls.cert_path),
            "--gateway-key-file",
            str(tls.key_path),
        )
    )
    server = GatewayServer(
        workdir=base,
        routes_file=routes,
        extra_args=(
            "--gateway-listen",
            f"127.0.0.1:{port}",
            "--gateway-idle-timeout",
            f"{IDLE_TIMEOUT:g}s",
            "--gateway-response-timeout",
            f"{RESPONSE_TIMEOUT:g}s",
            "--gateway-stream-idle-timeout",
            f"{STREAM_IDLE_TIMEOUT:g}s",
            "--gateway-max-body-bytes",
            str(MAX_BODY),
            *tls_args,
        ),
    )
    procs: list[ManagedProcess] = []
    agent: ClusterAgent | None = None
    assert HOST is not None
    with member.running_member("gateway", base / "member", nodes=1) as cluster:
        try:
            backend_a, port_a = backend("a", base, host=HOST)
            backend_b, port_b = backend("b", base, host=HOST)
            procs += [backend_a, backend_b]
            _services(cluster, {"a": port_a, "b": port_b})
            server.start()
            agent = _agent(server, cluster, base)
            yield Gateway(server=server, host="127.0.0.1", port=port, agent=agent)
        finally:
            if agent is not None:
                agent.stop()
            for proc in procs:
                proc.stop()
            server.stop()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with running_gateway(tmp_path_factory.mktemp("gateway")) as running:
        yield running
