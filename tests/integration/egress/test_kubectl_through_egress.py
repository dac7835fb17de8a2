"""kubectl logs, exec and port-forward for pods on an edge node, through kube-apiserver's egress.

The cloud cluster is a member cluster of the harness (kube-apiserver, controller manager,
scheduler, kwok playing every kubelet). kube-apiserver runs with an EgressSelectorConfiguration
whose ``cluster`` selection is HTTPConnect over our Unix socket, and prefers Hostname addresses
(the node names). The first node has an EdgeFleet agent whose ``kubelet`` target is kwok's
kubelet port; the second has none. So kubectl reaches the first node's pods only through
kube-apiserver -> tunnel-server -> the agent's tunnel -> kwok, and the second's not at all.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness import kube, member
from tests.harness.daemons import Agent, Server
from tests.harness.procs import ManagedProcess, free_port
from tests.harness.waiting import eventually

pytestmark = pytest.mark.kube

NAMESPACE = "edge-work"
START_TIMEOUT = 600  # seconds: a member cluster, a tunnel server and an agent on two busy cores


@dataclass
class Edge:
    cluster: member.MemberCluster
    server: Server
    agent: Agent
    workdir: Path

    @property
    def edge_node(self) -> str:
        return self.cluster.nodes[0]

    @property
    def plain_node(self) -> str:
        return self.cluster.nodes[1]


def egress_configuration(socket_path: Path) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "apiserver.k8s.io/v1beta1",
            "kind": "EgressSelectorConfiguration",
            "egressSelections": [
                {
                    "name": "cluster",
                    "connection": {
                        "proxyProtocol": "HTTPConnect",
                        "transport": {"uds": {"udsName": str(socket_path)}},
                    },
                }
            ],
        }
    )


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    workdir = tmp_path_factory.mktemp("egress-kubectl")
    short = Path(tempfile.mkdtemp(prefix="egress-", dir="/tmp"))
    socket_path = short / "egress.sock"
    config = workdir / "egress-selector.yaml"
    config.write_text(egress_configuration(socket_path))
    cluster = member.start_member(
        "cloud",
        workdir / "member",
        nodes=2,
        apiserver_args=(
            f"--egress-selector-config-file={config}",
            # The node names: one per node, where all share kwok's InternalIP.
            "--kubelet-preferred-address-types=Hostname,InternalIP",
        ),
    )
    server = Server(
        workdir=workdir,
        extra_args=("--kube-upstream", str(cluster.kubeconfig), "--egress-uds", str(socket_path)),
    )
    agent = Agent(
        name=cluster.nodes[0],
        workdir=workdir,
        server=server,
        targets={"kubelet": f"127.0.0.1:{cluster.kubelet_port}"},
    )
    try:
        server.start()
        agent.join()
        agent.start()
        agent.wait_connected()
        cluster.kubectl("create", "namespace", NAMESPACE)
        yield Edge(cluster=cluster, server=server, agent=agent, workdir=workdir)
    finally:
        # The server first: it ends the relays kube-apiserver keeps open (idle keep-alive
        # connections to the kubelet), so the agent need not wait out its drain grace.
        server.stop()
        agent.stop()
        cluster.stop()
        shutil.rmtree(short, ignore_errors=True)


def running_pod(edge: Edge, name: str, node: str) -> dict[str, Any]:
    """A pod the scheduler binds to ``node`` (by its hostname label), once Running."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": node},
            "containers": [{"name": "main", "image": "example/app:1"}],
        },
    }
    edge.cluster.kubectl("apply", "-n", NAMESPACE, "-f", "-", stdin=json.dumps(pod))

    def get() -> dict[str, Any]:
        found: dict[str, Any] = json.loads(
            edge.cluster.kubectl("get", "pod", "-n", NAMESPACE, name, "-o", "json").stdout
        )
        return found

    return eventually(
        get,
        lambda p: p["status"].get("phase") == "Running",
        what=f"pod {name} Running",
        within=120.0,
        every=0.5,
    )


def connects(edge: Edge, result: str) -> float:
    _, body = edge.server.get("/metrics")
    for line in body.decode().splitlines():
        if line.startswith(f'tunnel_server_egress_connects_total{{result="{result}"}} '):
            return float(line.split()[1])
    return 0.0


@pytest.mark.timeout(START_TIMEOUT)
def test_kubectl_logs_of_a_pod_on_an_edge_node(edge: Edge) -> None:
    running_pod(edge, "logger", edge.edge_node)
    log_file = edge.workdir / "logger.log"
    member.write_cri_log(log_file, ["hello from the edge", "second line"])
    edge.cluster.add_logs("edge-logs", log_file, namespaces=[NAMESPACE], pods=["logger"])
    before = connects(edge, "ok")
    out = edge.cluster.kubectl("logs", "-n", NAMESPACE, "logger")
    assert out.stdout == "hello from the edge\nsecond line\n"
    assert connects(edge, "ok") > before  # it went through the egress selector


@pytest.mark.timeout(START_TIMEOUT)
def test_kubectl_exec_with_stdin_on_an_edge_node(edge: Edge) -> None:
    running_pod(edge, "shell", edge.edge_node)
    before = connects(edge, "ok")
    # kwok never closes a command's stdin: read a known number of lines (see the harness tests).
    echoed = edge.cluster.kubectl(
        "exec", "-i", "-n", NAMESPACE, "shell", "--", "head", "-n", "2", stdin="one\ntwo\n"
    )
    assert echoed.stdout == "one\ntwo\n"
    status = edge.cluster.kubectl(
        "exec", "-n", NAMESPACE, "shell", "--", "sh", "-c", "echo out; exit 3", check=False
    )
    assert status.stdout == "out\n"
    # kwok reports a non-zero exit as an error message, not as the exit code a kubelet would.
    assert status.returncode != 0
    assert "exit status 3" in status.stderr
    assert connects(edge, "ok") > before


@pytest.mark.timeout(START_TIMEOUT)
def test_a_node_without_an_agent_is_refused_and_kubectl_says_why(edge: Edge) -> None:
    running_pod(edge, "elsewhere", edge.plain_node)
    failed = edge.cluster.kubectl("logs", "-n", NAMESPACE, "elsewhere", check=False)
    assert failed.returncode != 0
    assert f"node {edge.plain_node} (address {edge.plain_node}) has no EdgeFleet agent" in (
        failed.stderr
    ), failed.stderr


@pytest.mark.timeout(START_TIMEOUT)
def test_a_connect_to_an_address_of_no_node_is_refused_and_kubectl_says_so(edge: Edge) -> None:
    """Pod proxy dials the pod's IP through the ``cluster`` egress too: no node has it."""
    pod = running_pod(edge, "proxied", edge.edge_node)
    ip = pod["status"]["podIP"]
    failed = edge.cluster.kubectl(
        "get", "--raw", f"/api/v1/namespaces/{NAMESPACE}/pods/proxied:80/proxy/", check=False
    )
    assert failed.returncode != 0
    assert f"no edge node has the name or address {ip}" in failed.stderr, failed.stderr


@pytest.mark.timeout(START_TIMEOUT)
def test_an_offline_edge_node_is_refused_and_kubectl_says_so(edge: Edge) -> None:
    running_pod(edge, "offline", edge.edge_node)
    assert edge.agent.process is not None
    # kube-apiserver keeps idle connections to the kubelet open: the agent drains them for
    # its drain_grace (10 s) before it exits.
    edge.agent.process.stop(grace=30.0)
    try:
        eventually(
            lambda: edge.cluster.kubectl("logs", "-n", NAMESPACE, "offline", check=False).stderr,
            lambda stderr: f"edge node {edge.edge_node} is offline" in stderr,
            what="kubectl logs refused: offline",
            within=60.0,
        )
    finally:
        edge.agent.start()
        edge.agent.wait_connected()


def output_of(proc: ManagedProcess) -> str:
    proc.check_running()  # a kubectl that exited ends the wait with its output
    return proc.tail()


class Sink:
    """A TCP server that reads ``size`` bytes per connection and answers their sha256."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.server.getsockname()[1])
        self.thread = threading.Thread(target=self._serve, name="sink", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):  # the listening socket closed: the test is over
            while True:
                connection, _ = self.server.accept()
                with connection:
                    digest = hashlib.sha256()
                    received = 0
                    while received < self.size:
                        chunk = connection.recv(1 << 16)
                        if not chunk:
                            break
                        digest.update(chunk)
                        received += len(chunk)
                    if received == self.size:
                        connection.sendall(digest.hexdigest().encode())

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.server.shutdown(socket.SHUT_RDWR)  # wakes the accept() in the thread
        self.server.close()
        self.thread.join(timeout=10)


@pytest.mark.timeout(START_TIMEOUT)
def test_kubectl_port_forward_to_a_pod_on_an_edge_node(edge: Edge) -> None:
    running_pod(edge, "forwarded", edge.edge_node)
    payload = os.urandom(4 * 1024 * 1024)
    sink = Sink(len(payload))
    edge.cluster.add_port_forward(
        "edge-forward", sink.port, namespaces=[NAMESPACE], pods=["forwarded"]
    )
    local = free_port()
    before = connects(edge, "ok")
    forwarder = ManagedProcess(
        "kubectl port-forward",
        [
            str(kube.kube_bin_dir() / "kubectl"),
            f"--kubeconfig={edge.cluster.kubeconfig}",
            "port-forward",
            "-n",
            NAMESPACE,
            "pod/forwarded",
            f"{local}:8080",
        ],
        log_path=edge.workdir / "port-forward.out",
    )
    try:
        eventually(
            lambda: output_of(forwarder),
            lambda text: f"Forwarding from 127.0.0.1:{local}" in text,
            what="kubectl port-forward listening",
            within=60.0,
        )
        with socket.create_connection(("127.0.0.1", local), timeout=60.0) as connection:
            connection.sendall(payload)
            answer = b""
            while len(answer) < 64:
                chunk = connection.recv(64)
                if not chunk:
                    break
                answer += chunk
        assert answer.decode() == hashlib.sha256(payload).hexdigest()
        assert connects(edge, "ok") > before
    finally:
        forwarder.stop()
        sink.close()
