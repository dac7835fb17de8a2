"""The elastic part of a real cluster-mode ``edge-agent``, end to end (issue 15).

A member cluster (kube-apiserver, scheduler, controller-manager, kwok), a tunnel server and a
cluster agent process joined to it with ``[cluster.elastic] enabled = true``: the agent
installs its CRDs, registers its webhook, and runs the policy controller and the autoscaler.
The agent's rights are exactly the test RBAC of the clusters tests plus
``packaging/kubernetes/elastic/10-elastic-rbac.yaml`` (bound to the test's ServiceAccount), so
a right missing from that file fails here.

Layout: two local nodes (``site: dc1``, 1 CPU each: two pods of 500m each), a NodePool
``cloud`` (kwok provider, nodes of 1 CPU, max 2) that starts empty, and one big ``virtual``
node. The ResourcePolicy says local (max 4) -> cloud (max 4) -> virtual, ``ExceedMax``, so the
fifth pod can only go to the cloud pool: the autoscaler must add its nodes.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness import member
from tests.harness.daemons import Server
from tests.harness.procs import free_port
from tests.harness.waiting import eventually
from tests.integration.clusters.members import (
    NAMESPACE,
    SERVICE_ACCOUNT,
    ClusterAgent,
    prepare_member,
    run_kubectl,
)

pytestmark = [pytest.mark.kube, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[3]
ELASTIC_RBAC = REPO / "packaging" / "kubernetes" / "elastic" / "10-elastic-rbac.yaml"
GROUP = "elastic.edgefleet.io/v1alpha1"
APP_NS = "shop"
WITHIN = 180.0

POLICY = {
    "apiVersion": GROUP,
    "kind": "ResourcePolicy",
    "metadata": {"name": "web", "namespace": APP_NS},
    "spec": {
        "selector": {"matchLabels": {"app": "web"}},
        "units": [
            {"name": "local", "nodeSelector": {"site": "dc1"}, "max": 4},
            {"name": "cloud", "nodeSelector": {"elastic.edgefleet.io/pool": "cloud"}, "max": 4},
            {"name": "virtual", "nodeSelector": {"type": "virtual"}},
        ],
        "whenTryNextUnits": {"policy": "ExceedMax"},
        "matchLabelKeys": ["pod-template-hash"],
    },
}

POOL = {
    "apiVersion": GROUP,
    "kind": "NodePool",
    "metadata": {"name": "cloud"},
    "spec": {
        "priority": 10,
        "min": 0,
        "max": 2,
        "node": {"capacity": {"cpu": "1", "memory": "4Gi", "pods": 110}},
        "provider": {"kwok": {}},
        "scaleDown": {"emptyAfterSeconds": 2, "underUsedAfterSeconds": 3600},
    },
}


def deployment(replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": APP_NS},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "containers": [
                        {
                            "name": "web",
                            "image": "registry.example/web:1",
                            "resources": {"requests": {"cpu": "500m", "memory": "64Mi"}},
                        }
                    ]
                },
            },
        },
    }


class Setup:
    def __init__(self, cluster: member.MemberCluster, agent: ClusterAgent) -> None:
        self.cluster = cluster
        self.agent = agent

    def kubectl(self, *args: str, stdin: str | None = None) -> str:
        return run_kubectl(self.cluster.kubeconfig, *args, stdin=stdin).stdout

    def apply(self, *docs: dict[str, Any]) -> None:
        self.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(docs))

    def pods(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.cluster.api(
            "GET", f"/api/v1/namespaces/{APP_NS}/pods?labelSelector=app%3Dweb"
        )["items"]
        return [p for p in items if not p["metadata"].get("deletionTimestamp")]

    def node_labels(self) -> dict[str, dict[str, str]]:
        items = self.cluster.api("GET", "/api/v1/nodes")["items"]
        return {n["metadata"]["name"]: n["metadata"].get("labels", {}) for n in items}

    def placement(self) -> Counter[str]:
        """Pods per unit: local / cloud / virtual by their node's labels, else pending."""
        labels = self.node_labels()
        out: Counter[str] = Counter()
        for pod in self.pods():
            node = pod["spec"].get("nodeName")
            node_labels = labels.get(node, {}) if node else {}
            if not node:
                out["pending"] += 1
            elif node_labels.get("site") == "dc1":
                out["local"] += 1
            elif node_labels.get("elastic.edgefleet.io/pool") == "cloud":
                out["cloud"] += 1
            elif node_labels.get("type") == "virtual":
                out["virtual"] += 1
            else:
                out["other"] += 1
        return out

    def cloud_nodes(self) -> list[str]:
        return sorted(
            name
            for name, labels in self.node_labels().items()
            if labels.get("elastic.edgefleet.io/pool") == "cloud"
        )


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    base = tmp_path_factory.mktemp("elastic-agent")
    spec = member.MemberSpec(
        nodes=2,
        node_labels={"site": "dc1"},
        node_capacity={"cpu": "1", "memory": "4Gi", "pods": "110"},
        kwok_manage="all",
        kwok_args=(
            "--manage-all-nodes=false",
            "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
        ),
    )
    server = Server(workdir=base)
    with member.running_member("elastic-e2e", base / "member", spec) as cluster:
        cluster.add_node(
            "virtual-0",
            labels={"type": "virtual"},
            capacity={"cpu": "100", "memory": "400Gi", "pods": "1000"},
        )
        cluster.wait_nodes_ready()
        token = prepare_member(cluster.plane)
        rbac = [d for d in yaml.safe_load_all(ELASTIC_RBAC.read_text()) if d]
        for doc in rbac:
            if doc["kind"] == "ClusterRoleBinding":
                doc["subjects"] = [
                    {"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": NAMESPACE}
                ]
        run_kubectl(cluster.kubeconfig, "apply", "-f", "-", stdin=yaml.safe_dump_all(rbac))
        run_kubectl(cluster.kubeconfig, "create", "namespace", APP_NS)
        port = free_port()
        agent = ClusterAgent(
            name="elastic-e2e",
            workdir=base,
            server=server,
            plane=cluster.plane,
            agent_token=token,
            interval=2.0,
        )
        agent.tables["cluster.elastic"] = {
            "enabled": True,
            "webhook_listen": f"127.0.0.1:{port}",
            "webhook_url": f"https://127.0.0.1:{port}/mutate-pods",
        }
        try:
            server.start()
            agent.join()
            agent.start()
            agent.wait_ready()
            yield Setup(cluster, agent)
        finally:
            agent.stop()
            server.stop()


def elastic_status(setup: Setup) -> dict[str, Any]:
    cluster = setup.agent.status().get("cluster")
    assert isinstance(cluster, dict)
    elastic = cluster.get("elastic")
    return elastic if isinstance(elastic, dict) else {}


def test_the_agent_installs_its_crds_and_registers_its_webhook(setup: Setup) -> None:
    status = eventually(
        lambda: elastic_status(setup),
        lambda s: bool(s.get("crdsInstalled")) and bool(s.get("webhookReady")),
        what="the agent's elastic part: CRDs installed and webhook registered",
        within=WITHIN,
    )
    assert status["installError"] is None
    names = setup.kubectl("get", "crd", "-o", "name")
    assert "nodepools.elastic.edgefleet.io" in names
    assert "resourcepolicies.elastic.edgefleet.io" in names
    config = json.loads(
        setup.kubectl("get", "mutatingwebhookconfiguration", "edgefleet-elastic", "-o", "json")
    )
    (hook,) = config["webhooks"]
    assert hook["failurePolicy"] == "Ignore"
    assert hook["clientConfig"]["caBundle"]


def test_ten_replicas_fill_local_then_a_grown_cloud_pool_then_virtual(setup: Setup) -> None:
    eventually(
        lambda: elastic_status(setup),
        lambda s: bool(s.get("webhookReady")) and all(s.get("synced", {"x": False}).values()),
        what="elastic part ready",
        within=WITHIN,
    )
    setup.apply(POLICY, POOL)
    setup.apply(deployment(10))
    eventually(
        setup.placement,
        lambda c: c == Counter(local=4, cloud=4, virtual=2),
        what="10 pods: 4 local, 4 on new cloud-pool nodes, 2 virtual",
        within=WITHIN,
    )
    assert len(setup.cloud_nodes()) == 2  # the autoscaler grew the pool to fit 4 pods
    policy = json.loads(setup.kubectl("get", "resourcepolicy", "web", "-n", APP_NS, "-o", "json"))
    assert policy.get("status"), "the controller reports pods per unit in the status"

    # Scale in: virtual pods go first, then cloud ones; the local ones stay.
    setup.kubectl("scale", "deployment/web", "-n", APP_NS, "--replicas=3")
    eventually(
        setup.placement,
        lambda c: c == Counter(local=3),
        what="scale to 3 keeps only local pods (reverse unit order)",
        within=WITHIN,
    )
    # The cloud nodes are empty now: the autoscaler drains and removes them.
    eventually(
        setup.cloud_nodes,
        lambda nodes: not nodes,
        what="empty cloud-pool nodes removed",
        within=WITHIN,
    )
    pool = json.loads(setup.kubectl("get", "nodepool", "cloud", "-o", "json"))
    assert pool.get("status"), "the autoscaler reports the pool's state"
