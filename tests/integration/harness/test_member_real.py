"""A member cluster from tests.harness.member is a working Kubernetes cluster to real kubectl.

Nodes are Ready, the scheduler and the controller manager run a Deployment to Running pods on
kwok's nodes, and kubectl exec / logs / port-forward reach a local process, file and TCP server
through kube-apiserver and kwok's kubelet API, as they would a real kubelet.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import secrets
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.harness import kube, member
from tests.harness.procs import ManagedProcess, ServiceError, free_port
from tests.harness.waiting import eventually

START_TIMEOUT = 360  # seconds per test: a member cluster starts in 10 s idle, far more when busy
pytestmark = [pytest.mark.kube, pytest.mark.timeout(START_TIMEOUT)]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[member.MemberCluster]:
    with member.running_member("alpha", tmp_path_factory.mktemp("member-alpha"), nodes=3) as m:
        yield m


@pytest.fixture
def namespace(cluster: member.MemberCluster) -> Iterator[str]:
    name = f"t-{secrets.token_hex(5)}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false")


def get_json(cluster: member.MemberCluster, *args: str) -> Any:
    return json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)


def deployment(name: str, replicas: int) -> str:
    return json.dumps(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}},
                    "spec": {"containers": [{"name": "main", "image": "example/app:1"}]},
                },
            },
        }
    )


def running_pods(cluster: member.MemberCluster, namespace: str, app: str, count: int) -> list[Any]:
    """Wait until ``count`` pods of ``app`` are Running, not terminating; those pods."""

    def pods() -> list[Any]:
        items = get_json(cluster, "pods", "-n", namespace, "-l", f"app={app}")["items"]
        return [
            p
            for p in items
            if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")
        ]

    return eventually(
        pods,
        lambda found: len(found) == count,
        what=f"{count} Running pods of {app}",
        within=120.0,
        every=0.5,
    )


def output_of(proc: ManagedProcess) -> str:
    proc.check_running()
    return proc.tail()


def one_pod(cluster: member.MemberCluster, namespace: str) -> str:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=deployment("solo", 1))
    (pod,) = running_pods(cluster, namespace, "solo", 1)
    return str(pod["metadata"]["name"])


def test_nodes_are_ready_with_their_own_addresses(cluster: member.MemberCluster) -> None:
    nodes = get_json(cluster, "nodes")["items"]
    assert sorted(n["metadata"]["name"] for n in nodes) == sorted(cluster.nodes)
    for node in nodes:
        name = node["metadata"]["name"]
        ready = [c for c in node["status"]["conditions"] if c["type"] == "Ready"]
        assert ready[0]["status"] == "True", name
        addresses = {a["type"]: a["address"] for a in node["status"]["addresses"]}
        assert addresses == {"InternalIP": member.NODE_ADDRESS, "Hostname": name}
        assert node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"] == cluster.kubelet_port
        assert node["status"]["allocatable"]["cpu"] == member.DEFAULT_CAPACITY["cpu"]
    leases = get_json(cluster, "leases", "-n", "kube-node-lease")["items"]
    assert {lease["metadata"]["name"] for lease in leases} >= set(cluster.nodes)


def test_a_deployment_runs_on_the_fake_nodes(cluster: member.MemberCluster, namespace: str) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=deployment("web", 4))
    pods = running_pods(cluster, namespace, "web", 4)
    # Scheduled by kube-scheduler, created by the controller manager's ReplicaSet controller,
    # started by kwok (pod IP from its CIDR), admitted with a service-account token volume.
    assert {p["spec"]["nodeName"] for p in pods} <= set(cluster.nodes)
    assert all(p["status"]["podIP"].startswith("10.244.") for p in pods)
    assert all(p["metadata"]["ownerReferences"][0]["kind"] == "ReplicaSet" for p in pods)
    assert all(p["spec"]["serviceAccountName"] == "default" for p in pods)

    cluster.kubectl("scale", "-n", namespace, "deployment/web", "--replicas=1")
    running_pods(cluster, namespace, "web", 1)


def test_exec_runs_a_local_process_with_stdin(
    cluster: member.MemberCluster, namespace: str
) -> None:
    pod = one_pod(cluster, namespace)
    lines = [secrets.token_hex(16) for _ in range(3)]
    # kwok v0.8.0 never closes the command's stdin (pkg/utils/exec), so a command that waits
    # for EOF (plain `cat`) never ends: read a known amount instead.
    echoed = cluster.kubectl(
        "exec", "-i", "-n", namespace, pod, "--", "head", "-n", "3", stdin="\n".join(lines) + "\n"
    )
    assert echoed.stdout.split() == lines
    where = cluster.kubectl(
        "exec", "-n", namespace, pod, "--", "sh", "-c", "pwd; exit 3", check=False
    )
    assert where.stdout.strip() == str(cluster.exec_workdir)
    # kwok reports a non-zero exit as an error message, not as the exit code kubelet would.
    assert where.returncode != 0
    assert "exit status 3" in where.stderr


def test_logs_read_a_file_and_follow_it(
    cluster: member.MemberCluster, namespace: str, tmp_path: Path
) -> None:
    pod = one_pod(cluster, namespace)
    log_file = tmp_path / "main.log"
    member.write_cri_log(log_file, ["first line", "second line"])
    cluster.add_logs("logs-" + namespace, log_file, namespaces=[namespace], pods=[pod])
    assert cluster.kubectl("logs", "-n", namespace, pod).stdout == "first line\nsecond line\n"

    follower = ManagedProcess(
        "kubectl logs -f",
        [
            str(kube.kube_bin_dir() / "kubectl"),
            f"--kubeconfig={cluster.kubeconfig}",
            "logs",
            "-f",
            "-n",
            namespace,
            pod,
        ],
        log_path=tmp_path / "follow.out",
    )
    try:
        eventually(
            lambda: output_of(follower),
            lambda text: "second line" in text,
            what="kubectl logs -f shows the file",
            within=60.0,
        )
        member.write_cri_log(log_file, ["appended later"])
        eventually(
            follower.tail,
            lambda text: "appended later" in text,
            what="kubectl logs -f shows a line appended afterwards",
            within=60.0,
        )
    finally:
        follower.stop()


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
        # shutdown() wakes the accept() blocked in the thread (close() alone does not).
        with contextlib.suppress(OSError):
            self.server.shutdown(socket.SHUT_RDWR)
        self.server.close()
        self.thread.join(timeout=10)
        assert not self.thread.is_alive()


def test_port_forward_moves_megabytes_to_a_local_server(
    cluster: member.MemberCluster, namespace: str, tmp_path: Path
) -> None:
    pod = one_pod(cluster, namespace)
    payload = os.urandom(4 * 1024 * 1024)
    sink = Sink(len(payload))
    cluster.add_port_forward("pf-" + namespace, sink.port, namespaces=[namespace], pods=[pod])
    local = free_port()
    forwarder = ManagedProcess(
        "kubectl port-forward",
        [
            str(kube.kube_bin_dir() / "kubectl"),
            f"--kubeconfig={cluster.kubeconfig}",
            "port-forward",
            "-n",
            namespace,
            f"pod/{pod}",
            f"{local}:8080",
        ],
        log_path=tmp_path / "port-forward.out",
    )
    try:
        # Not a probe connection: each one would reach the sink through kwok.
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
    finally:
        forwarder.stop()
        sink.close()


def test_service_account_tokens_from_the_controller_manager_authenticate(
    cluster: member.MemberCluster, namespace: str
) -> None:
    """The token controller signs with the API server's key; the CA is published."""
    folder = cluster.write_service_account_files(
        cluster.workdir / "sa-agent", namespace=namespace, name="agent"
    )
    assert (folder / "namespace").read_text() == namespace
    assert (folder / "ca.crt").read_bytes() == cluster.plane.ca_path.read_bytes()
    as_agent = dataclasses.replace(cluster.plane, token=(folder / "token").read_text())
    status, review = as_agent.request(
        "POST",
        "/apis/authentication.k8s.io/v1/selfsubjectreviews",
        {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
    )
    assert status == 201, review
    assert review["status"]["userInfo"]["username"] == f"system:serviceaccount:{namespace}:agent"
    assert as_agent.request("GET", "/api/v1/nodes")[0] == 403  # RBAC applies to it
    root_ca = get_json(cluster, "configmap", "kube-root-ca.crt", "-n", namespace)
    assert root_ca["data"]["ca.crt"] == cluster.plane.ca_path.read_text()
    env = cluster.in_cluster_env()
    assert (
        f"https://{env['KUBERNETES_SERVICE_HOST']}:{env['KUBERNETES_SERVICE_PORT']}" == cluster.url
    )


def test_every_process_listens_on_loopback_only(cluster: member.MemberCluster) -> None:
    """The kubelet API kwok serves runs any command it is asked to: never on the network."""
    listening = [
        (psutil.Process(pid).name(), c.laddr.ip)
        for pid in cluster.pids
        for c in psutil.Process(pid).net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN
    ]
    assert len({name for name, _ in listening}) == 5, listening
    assert {ip for _, ip in listening} == {"127.0.0.1"}, listening


def test_kwok_restarts_and_takes_the_node_leases_over(cluster: member.MemberCluster) -> None:
    """A new kwok gets fresh leases rather than waiting for the old holder's to expire."""

    def leases() -> dict[str, tuple[str, str]]:
        items = get_json(cluster, "leases", "-n", "kube-node-lease")["items"]
        return {
            x["metadata"]["name"]: (x["metadata"]["uid"], x["spec"].get("holderIdentity", ""))
            for x in items
        }

    before = leases()
    cluster.stop_process("kwok")
    cluster.start_process("kwok")
    cluster.wait_ready()
    after = eventually(
        leases,
        lambda now: all(n in now for n in cluster.nodes),
        what="the restarted kwok holds every node lease",
        within=120.0,
        every=0.5,
    )
    for node in cluster.nodes:
        assert after[node][0] != before[node][0], "the lease was recreated"
        assert after[node][1] != before[node][1], "by a new holder"
    assert all(cluster.node_condition(n) == "True" for n in cluster.nodes)


def test_nodes_come_and_go(cluster: member.MemberCluster) -> None:
    cluster.add_node("alpha-extra", labels={"edgefleet.test/pool": "burst"}, capacity={"cpu": "2"})
    cluster.wait_nodes_ready(["alpha-extra"], within=120.0)
    node = cluster.node("alpha-extra")
    assert node["metadata"]["labels"]["edgefleet.test/pool"] == "burst"
    assert node["status"]["allocatable"]["cpu"] == "2"
    assert "alpha-extra" in cluster.nodes
    cluster.remove_node("alpha-extra")
    assert "alpha-extra" not in cluster.nodes
    names = {n["metadata"]["name"] for n in get_json(cluster, "nodes")["items"]}
    assert names == set(cluster.nodes)


def test_kubectl_failures_say_why(cluster: member.MemberCluster) -> None:
    with pytest.raises(kube.KubectlError, match=r"not found"):
        cluster.kubectl("get", "configmap", "no-such-thing", "-n", "default")


def test_extra_flags_replace_defaults_of_the_same_name() -> None:
    base = ["--a=1", "--disable-admission-plugins=ServiceAccount", "--b"]
    merged = kube.merge_flags(base, ["--disable-admission-plugins=", "--c=3"])
    assert merged == ["--a=1", "--b", "--disable-admission-plugins=", "--c=3"]
    with pytest.raises(ValueError, match="--name=value"):
        kube.merge_flags(base, ["-v"])


@pytest.mark.timeout(600)
def test_an_unreachable_node_loses_its_pods(
    member_factory: Any,
) -> None:
    """The baseline autonomy must prevent: Kubernetes evicts the pods of a silent node."""
    cluster = member_factory(
        "evict",
        nodes=3,
        apiserver_args=member.FAST_EVICTION_APISERVER_ARGS,
        controller_manager_args=member.FAST_EVICTION_CONTROLLER_MANAGER_ARGS,
        node_lease_seconds=member.FAST_EVICTION_NODE_LEASE_SECONDS,
    )
    cluster.kubectl("create", "namespace", "work")
    cluster.kubectl("apply", "-n", "work", "-f", "-", stdin=deployment("app", 3))
    pods = running_pods(cluster, "work", "app", 3)
    victim = pods[0]["spec"]["nodeName"]
    doomed = {p["metadata"]["name"] for p in pods if p["spec"]["nodeName"] == victim}
    unreachable = [
        t for t in pods[0]["spec"]["tolerations"] if t["key"] == "node.kubernetes.io/unreachable"
    ]
    assert unreachable[0]["tolerationSeconds"] == 5  # the apiserver flag took effect

    cluster.make_unreachable(victim)
    eventually(
        lambda: (cluster.node_condition(victim), cluster.node_taints(victim)),
        lambda seen: (
            seen[0] == "Unknown"
            and any(
                t["key"] == "node.kubernetes.io/unreachable" and t["effect"] == "NoExecute"
                for t in seen[1]
            )
        ),
        what=f"{victim} Unknown with the unreachable NoExecute taint",
        within=180.0,
        every=1.0,
    )

    def evicted() -> set[str]:
        items = get_json(cluster, "pods", "-n", "work")["items"]
        return {p["metadata"]["name"] for p in items if p["metadata"].get("deletionTimestamp")}

    eventually(
        evicted,
        lambda names: names >= doomed,
        what="pods of the node evicted",
        within=120.0,
        every=1.0,
    )
    replacements = running_pods(cluster, "work", "app", 3)
    assert victim not in {p["spec"]["nodeName"] for p in replacements}
    assert all(cluster.node_condition(n) == "True" for n in cluster.nodes if n != victim)

    cluster.make_reachable(victim)
    cluster.wait_nodes_ready([victim], within=180.0)


def test_member_clusters_start_side_by_side_and_are_independent(tmp_path: Path) -> None:
    spec = member.MemberSpec(nodes=1, node_labels={"edgefleet.test/zone": "z1"})
    with member.member_clusters(2, tmp_path, spec, kwok_manage="all") as (first, second):
        assert first.nodes == ["member0-node-0"]
        assert second.nodes == ["member1-node-0"]
        assert (
            len({first.kubelet_port, second.kubelet_port, first.plane.port, second.plane.port}) == 4
        )
        first.kubectl("create", "configmap", "only-in-first")
        assert second.kubectl("get", "configmap", "only-in-first", check=False).returncode != 0
        node = get_json(second, "node", "member1-node-0")
        assert node["metadata"]["labels"]["edgefleet.test/zone"] == "z1"
        # kwok_manage="all": a node the test adds, without the harness's label, turns Ready.
        second.api("POST", "/api/v1/nodes", {"metadata": {"name": "added-later"}})
        second.wait_nodes_ready(["added-later"], within=120.0)
        with pytest.raises(ServiceError, match="kwok_manage='all'"):
            second.make_unreachable("added-later")
        pids = first.pids + second.pids
        assert len(pids) == 10  # kine, kube-apiserver, controller manager, scheduler, kwok each
    assert not [pid for pid in pids if alive(pid)]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers signal 0 until reaped; ManagedProcess.stop waits, so none remain.
    return True


def test_a_missing_binary_is_named_before_anything_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    partial = tmp_path / "bin"
    partial.mkdir()
    for name in ("kube-apiserver", "kubectl", "kine", "kube-scheduler"):
        (partial / name).symlink_to(kube.kube_bin_dir() / name)
    monkeypatch.setenv("EDGEFLEET_KUBE_BIN", str(partial))
    with pytest.raises(ServiceError, match=r"kube-controller-manager, kwok not found.*kube-build"):
        member.start_member("incomplete", tmp_path / "member")
    assert not (tmp_path / "member" / "plane").exists()
