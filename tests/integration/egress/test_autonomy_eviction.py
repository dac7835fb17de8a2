"""An autonomous edge node cut off past the eviction timeout keeps its pods; a plain node does not.

A member cluster of the harness with short eviction timeouts (a node silent for 20 s is tainted
unreachable; pods tolerate that for 5 s) plays the cloud cluster. tunnel-server runs with
``--autonomy``. The scheduler binds both pods after they were created, so no admission webhook
sees them: the controller alone protects the autonomous node's pod. Then both nodes go silent
(kwok stops renewing their leases, as a kubelet cut off from the cloud would).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.harness import member
from tests.harness.daemons import Server
from tests.harness.waiting import eventually

pytestmark = pytest.mark.kube

NAMESPACE = "work"
UNREACHABLE = "node.kubernetes.io/unreachable"
NOT_READY = "node.kubernetes.io/not-ready"


@pytest.fixture(scope="module")
def cloud(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[member.MemberCluster, Server]]:
    workdir = tmp_path_factory.mktemp("autonomy")
    # Three nodes, two cut off: more than two NotReady nodes at 55 % would be a "disrupted
    # zone", where Kubernetes stops evicting on purpose (a small cluster).
    cluster = member.start_member(
        "cloud",
        workdir / "member",
        nodes=3,
        apiserver_args=member.FAST_EVICTION_APISERVER_ARGS,
        controller_manager_args=member.FAST_EVICTION_CONTROLLER_MANAGER_ARGS,
        node_lease_seconds=member.FAST_EVICTION_NODE_LEASE_SECONDS,
    )
    server = Server(
        workdir=workdir, extra_args=("--kube-upstream", str(cluster.kubeconfig), "--autonomy")
    )
    try:
        server.start()
        cluster.kubectl("create", "namespace", NAMESPACE)
        yield cluster, server
    finally:
        server.stop()
        cluster.stop()


def get_pod(cluster: member.MemberCluster, name: str) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(
        cluster.kubectl("get", "pod", "-n", NAMESPACE, name, "-o", "json").stdout
    )
    return found


def start_pod(cluster: member.MemberCluster, name: str, node: str) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": node},
            "containers": [{"name": "main", "image": "example/app:1"}],
        },
    }
    cluster.kubectl("apply", "-n", NAMESPACE, "-f", "-", stdin=json.dumps(pod))
    eventually(
        lambda: get_pod(cluster, name)["status"].get("phase"),
        lambda phase: phase == "Running",
        what=f"pod {name} Running on {node}",
        within=120.0,
        every=0.5,
    )


def seconds(pod: dict[str, Any]) -> dict[str, int | None]:
    return {
        t["key"]: t.get("tolerationSeconds")
        for t in pod["spec"].get("tolerations") or []
        if t.get("key") in (UNREACHABLE, NOT_READY) and t.get("effect") == "NoExecute"
    }


def tainted_unreachable(cluster: member.MemberCluster, node: str) -> bool:
    return any(
        t["key"] == UNREACHABLE and t["effect"] == "NoExecute" for t in cluster.node_taints(node)
    )


@pytest.mark.timeout(900)
def test_an_autonomous_node_keeps_its_pods_past_the_eviction_timeout(
    cloud: tuple[member.MemberCluster, Server],
) -> None:
    cluster, _ = cloud
    edge, plain = cluster.nodes[0], cluster.nodes[1]
    cluster.label_node(edge, {"edgefleet.io/autonomy": "true"})
    start_pod(cluster, "kept", edge)
    start_pod(cluster, "lost", plain)
    assert seconds(get_pod(cluster, "lost")) == {UNREACHABLE: 5, NOT_READY: 5}  # the flags
    eventually(
        lambda: seconds(get_pod(cluster, "kept")),
        lambda found: found == {UNREACHABLE: None, NOT_READY: None},
        what="the autonomous node's pod tolerates the taints forever",
        within=60.0,
        every=0.5,
    )

    cluster.make_unreachable(edge)
    cluster.make_unreachable(plain)
    eventually(
        lambda: (tainted_unreachable(cluster, edge), tainted_unreachable(cluster, plain)),
        lambda both: both == (True, True),
        what="both nodes tainted unreachable (NoExecute)",
        within=180.0,
        every=1.0,
    )
    # The plain node's pod is evicted 5 s after its taint, as Kubernetes intends ...
    eventually(
        lambda: get_pod(cluster, "lost")["metadata"].get("deletionTimestamp"),
        what="the plain node's pod evicted",
        within=120.0,
        every=1.0,
    )
    # ... while the autonomous node still has its pod (its taint may have come one
    # rate-limited step later, 0.1 nodes/s: the proof on the server clock follows).
    kept = get_pod(cluster, "kept")
    assert not kept["metadata"].get("deletionTimestamp")
    assert tainted_unreachable(cluster, edge)
    assert (
        kept["metadata"]["annotations"]["edgefleet.io/original-unreachable-toleration-seconds"]
        == "5"
    )

    # The proof that does not lean on the plain node's timing: on the API server's own clock,
    # the autonomous node has carried the taint three times as long as the pod's original 5 s.
    (added,) = [
        t["timeAdded"]
        for t in cluster.node_taints(edge)
        if t["key"] == UNREACHABLE and t["effect"] == "NoExecute"
    ]
    eventually(
        lambda: server_now(cluster) - parse_time(added),
        lambda tainted_for: tainted_for >= 15.0,
        what="the autonomous node tainted for 15 s",
        within=60.0,
        every=1.0,
    )
    assert not get_pod(cluster, "kept")["metadata"].get("deletionTimestamp")
    assert cluster.node_condition(edge) == "Unknown"


def parse_time(text: str) -> float:
    return dt.datetime.fromisoformat(text).timestamp()


def server_now(cluster: member.MemberCluster) -> float:
    """The API server's clock: the creation time of an object made just now."""
    made = cluster.api(
        "POST",
        f"/api/v1/namespaces/{NAMESPACE}/configmaps",
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"generateName": "clock-"}},
    )
    cluster.api("DELETE", f"/api/v1/namespaces/{NAMESPACE}/configmaps/{made['metadata']['name']}")
    return parse_time(made["metadata"]["creationTimestamp"])
