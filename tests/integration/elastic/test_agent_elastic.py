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

The agent down (killed, stopped with SIGTERM, or frozen with SIGSTOP so its port accepts and
never answers): pod creates go on, each bounded by the webhook's ``timeoutSeconds``
(``failurePolicy: Ignore``); the pods made meanwhile carry no gate and no policy annotation and
schedule wherever the scheduler likes; once the agent is back its controller counts them in the
policy's status and gives them their ``pod-deletion-cost``, so a scale-in still empties the
last unit first.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from fleet_model.elastic.units import ANNOTATION_POLICY, DELETION_COST, WAITING_GATE
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


# -- the agent down


WEBHOOK_TIMEOUT = 2.0
"""The configuration's ``timeoutSeconds`` (``[cluster.elastic] webhook_timeout``'s default)."""
CREATE_SLACK = 5.0
"""Seconds a pod create may take on top of the webhook timeout on a busy CI machine (2 cores,
a kubectl process per create). Still below the API server's 10 s default webhook timeout, so
a configuration that lost its short timeout would fail."""


def probe_create(setup: Setup) -> tuple[float, dict[str, Any]]:
    """A server-side dry-run create of a pod the policy governs: (seconds, the admitted pod).

    A dry run goes through the whole admission chain, the webhook included (``sideEffects:
    None``), and stores nothing: it times what a real create waits on the webhook.
    """
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": "probe-", "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "web", "image": "registry.example/web:1"}]},
    }
    started = time.monotonic()
    admitted = setup.cluster.api("POST", f"/api/v1/namespaces/{APP_NS}/pods?dryRun=All", pod)
    return time.monotonic() - started, admitted


def gates(pod: dict[str, Any]) -> list[str]:
    return [g["name"] for g in pod["spec"].get("schedulingGates") or []]


def costs(setup: Setup) -> dict[str, int | None]:
    """Pod name -> its pod-deletion-cost (None: not set)."""
    out: dict[str, int | None] = {}
    for pod in setup.pods():
        value = (pod["metadata"].get("annotations") or {}).get(DELETION_COST)
        out[pod["metadata"]["name"]] = None if value is None else int(value)
    return out


def unit_of(setup: Setup) -> dict[str, str]:
    """Pod name -> local / cloud / virtual / pending, as ``Setup.placement`` counts them."""
    labels = setup.node_labels()
    out: dict[str, str] = {}
    for pod in setup.pods():
        node = pod["spec"].get("nodeName")
        node_labels = labels.get(node, {}) if node else {}
        if not node:
            out[pod["metadata"]["name"]] = "pending"
        elif node_labels.get("site") == "dc1":
            out[pod["metadata"]["name"]] = "local"
        elif node_labels.get("elastic.edgefleet.io/pool") == "cloud":
            out[pod["metadata"]["name"]] = "cloud"
        else:
            out[pod["metadata"]["name"]] = "virtual"
    return out


def policy_units(setup: Setup) -> dict[str, int]:
    """The policy's status: pods per unit (its totals over all groups)."""
    policy = setup.cluster.api("GET", f"/apis/{GROUP}/namespaces/{APP_NS}/resourcepolicies/web")
    units = (policy.get("status") or {}).get("units") or []
    return {unit["name"]: unit["pods"] for unit in units}


def scale(setup: Setup, replicas: int) -> None:
    setup.kubectl("scale", "deployment/web", "-n", APP_NS, f"--replicas={replicas}")


def take_down(setup: Setup, how: str) -> None:
    process = setup.agent.process
    assert process is not None
    if how == "SIGKILL":
        process.kill()
    elif how == "SIGTERM":
        process.stop()
    else:  # frozen: its port still accepts connections, nothing answers them
        os.killpg(process.pid, signal.SIGSTOP)


def bring_back(setup: Setup, how: str) -> None:
    process = setup.agent.process
    assert process is not None
    if how == "SIGSTOP":
        os.killpg(process.pid, signal.SIGCONT)
    else:
        setup.agent.start()
    setup.agent.wait_ready()


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM", "SIGSTOP"])
def test_the_agent_down_pods_are_created_and_the_policy_catches_up(setup: Setup, how: str) -> None:
    eventually(
        lambda: elastic_status(setup),
        lambda s: bool(s.get("webhookReady")) and all(s.get("synced", {"x": False}).values()),
        what="elastic part ready",
        within=WITHIN,
    )
    setup.apply(POLICY, POOL, deployment(3))
    scale(setup, 3)  # an earlier test may have left another count
    eventually(
        setup.placement,
        lambda c: c == Counter(local=3),
        what="3 pods on the local unit",
        within=WITHIN,
    )
    eventually(
        lambda: costs(setup),
        lambda c: None not in c.values(),
        what="deletion costs on the 3 local pods",
        within=WITHIN,
    )
    before = set(costs(setup))
    # With the agent up the webhook holds a governed pod at the gate (hold mode).
    _, admitted = probe_create(setup)
    assert gates(admitted) == [WAITING_GATE]

    take_down(setup, how)
    try:
        # Each create is bounded by the webhook's timeout (failurePolicy Ignore): admitted
        # unchanged, no gate. A dead agent refuses the connection at once; a frozen one makes
        # the API server wait the whole timeout, which shows the webhook really was called.
        for _ in range(3):
            took, admitted = probe_create(setup)
            assert took < WEBHOOK_TIMEOUT + CREATE_SLACK, f"a pod create took {took:.2f} s"
            if how == "SIGSTOP":
                assert took >= WEBHOOK_TIMEOUT * 0.8, f"{took:.2f} s: was the webhook called?"
            assert gates(admitted) == []
            assert ANNOTATION_POLICY not in (admitted["metadata"].get("annotations") or {})

        # The Deployment grows anyway, and its new pods schedule wherever there is room.
        scale(setup, 8)
        placed = eventually(
            setup.placement,
            lambda c: sum(c.values()) == 8 and not c["pending"],
            what="8 pods, all scheduled, with the agent down",
            within=WITHIN,
        )
        assert placed["local"] <= 4, placed
        assert placed["cloud"] == 0, placed
        made_while_down = set(costs(setup)) - before
        assert len(made_while_down) == 5
        for pod in setup.pods():
            if pod["metadata"]["name"] in made_while_down:
                annotations = pod["metadata"].get("annotations") or {}
                # Never held: the gate is only ever added by the webhook that did not answer.
                assert gates(pod) == [], pod["metadata"]["name"]
                assert ANNOTATION_POLICY not in annotations
                assert DELETION_COST not in annotations  # nothing ran that would set it
    finally:
        bring_back(setup, how)

    # The policy catches up: its status counts every pod where it is, and each bound pod has a
    # deletion cost ranking the later unit below the earlier one.
    where = unit_of(setup)
    expected = {
        "local": placed["local"],
        "cloud": 0,
        "virtual": placed["virtual"],
    }
    eventually(
        lambda: policy_units(setup),
        lambda units: units == expected,
        what=f"the policy's status: pods per unit {expected}",
        within=WITHIN,
    )
    caught_up = eventually(
        lambda: costs(setup),
        lambda c: len(c) == 8 and None not in c.values(),
        what="deletion costs on the pods made while the agent was down",
        within=WITHIN,
    )
    assert made_while_down <= caught_up.keys()
    local = [cost or 0 for name, cost in caught_up.items() if where[name] == "local"]
    virtual = [cost or 0 for name, cost in caught_up.items() if where[name] == "virtual"]
    assert len(local) + len(virtual) == 8
    assert not virtual or max(virtual) < min(local), caught_up

    # A scale-in removes the last unit's pods first: keep as many as are local, all local.
    scale(setup, placed["local"])
    eventually(
        setup.placement,
        lambda c: c == Counter(local=placed["local"]),
        what="scale-in empties the virtual unit first",
        within=WITHIN,
    )
    scale(setup, 3)
    eventually(
        setup.placement,
        lambda c: c == Counter(local=3),
        what="back to 3 local pods",
        within=WITHIN,
    )


# -- what EdgeFleet's users may do (packaging/kubernetes/elastic/30-elastic-user-roles.yaml)


USER_ROLES = REPO / "packaging" / "kubernetes" / "elastic" / "30-elastic-user-roles.yaml"


def can_i(setup: Setup, role: str, verb: str, resource: str, *, namespace: str = "") -> bool:
    """``kubectl auth can-i`` as the cloud's impersonated user of ``role`` (any user name).

    ``resource``: ``plural.group``, or ``plural.group/sub`` for a subresource (kubectl would
    read what follows the slash as an object's name).
    """
    resource, _, sub = resource.partition("/")
    scope = ("-n", namespace) if namespace else ()
    if sub:
        scope = (*scope, f"--subresource={sub}")
    done = run_kubectl(
        setup.cluster.kubeconfig,
        "auth",
        "can-i",
        verb,
        resource,
        *scope,
        "--as",
        "edgefleet:someone",
        "--as-group",
        f"edgefleet:{role}",
        check=False,
    )
    answer = done.stdout.strip()
    assert answer in ("yes", "no"), done.stderr
    return answer == "yes"


RIGHTS: list[tuple[str, str, str, str, bool]] = [
    # role, verb, resource, namespace, allowed
    ("viewer", "list", "nodepools.elastic.edgefleet.io", "", True),
    ("viewer", "watch", "nodepools.elastic.edgefleet.io", "", True),
    ("viewer", "get", "resourcepolicies.elastic.edgefleet.io", APP_NS, True),
    ("viewer", "list", "resourcepolicies.elastic.edgefleet.io", "", True),
    ("viewer", "create", "resourcepolicies.elastic.edgefleet.io", APP_NS, False),
    ("viewer", "patch", "nodepools.elastic.edgefleet.io", "", False),
    ("viewer", "patch", "resourcepolicies.elastic.edgefleet.io/status", APP_NS, False),
    ("operator", "list", "nodepools.elastic.edgefleet.io", "", True),
    ("operator", "list", "resourcepolicies.elastic.edgefleet.io", APP_NS, True),
    ("operator", "create", "resourcepolicies.elastic.edgefleet.io", APP_NS, True),
    ("operator", "patch", "resourcepolicies.elastic.edgefleet.io", APP_NS, True),
    ("operator", "delete", "resourcepolicies.elastic.edgefleet.io", APP_NS, True),
    ("operator", "create", "nodepools.elastic.edgefleet.io", "", False),
    ("operator", "delete", "nodepools.elastic.edgefleet.io", "", False),
    ("operator", "patch", "resourcepolicies.elastic.edgefleet.io/status", APP_NS, False),
    ("admin", "delete", "nodepools.elastic.edgefleet.io", "", True),
    ("nobody", "list", "nodepools.elastic.edgefleet.io", "", False),
]


def test_the_user_roles_let_viewers_read_and_operators_edit_policies(setup: Setup) -> None:
    # The member binds edgefleet:viewer/operator/admin to view/edit/cluster-admin (as
    # ../cluster-agent/10-rbac.yaml does); view and edit know nothing of our kinds.
    assert not can_i(setup, "viewer", "list", "nodepools.elastic.edgefleet.io")
    assert not can_i(
        setup, "operator", "create", "resourcepolicies.elastic.edgefleet.io", namespace=APP_NS
    )
    setup.kubectl("apply", "-f", str(USER_ROLES))
    try:
        eventually(
            lambda: [
                (role, verb, resource, namespace)
                for role, verb, resource, namespace, allowed in RIGHTS
                if can_i(setup, role, verb, resource, namespace=namespace) != allowed
            ],
            lambda wrong: not wrong,
            what="the aggregated roles' rights (none of these answered as expected yet)",
            within=60.0,
        )
        # A real request as a viewer, the way the cloud's elastic view sends it.
        setup.apply(POLICY, POOL)
        listed = json.loads(
            setup.kubectl(
                "get",
                "nodepools,resourcepolicies",
                "-A",
                "-o",
                "json",
                "--as",
                "edgefleet:viewer",
                "--as-group",
                "edgefleet:viewer",
            )
        )
        kinds = sorted((item["kind"], item["metadata"]["name"]) for item in listed["items"])
        assert kinds == [("NodePool", "cloud"), ("ResourcePolicy", "web")]
    finally:
        setup.kubectl("delete", "-f", str(USER_ROLES), "--ignore-not-found")


def proc_state(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a live process; None when it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    state, ppid = stat.rpartition(")")[2].split()[:2]
    return None if state in ("Z", "X") else (state, int(ppid))


def listener_pid(setup: Setup, *, other_than: int = 0) -> int:
    """The pid of the agent's webhook listener process once it serves (``webhookReady``)."""
    status = eventually(
        lambda: elastic_status(setup),
        lambda s: (
            bool(s.get("webhookReady"))
            and isinstance(s.get("webhookListenerPid"), int)
            and s["webhookListenerPid"] != other_than
        ),
        what="the webhook served by a listener process",
        within=WITHIN,
    )
    pid: int = status["webhookListenerPid"]
    return pid


def test_the_webhook_listener_process_is_restarted_and_never_outlives_the_agent(
    setup: Setup,
) -> None:
    setup.apply(POLICY)  # probe_create's pods are governed (in hold mode: held)
    process = setup.agent.process
    assert process is not None
    first = listener_pid(setup)
    assert first != process.pid
    assert (proc_state(first) or ("", 0))[1] == process.pid  # the agent's child

    # Killed alone: the agent starts another and is ready again.
    os.kill(first, signal.SIGKILL)
    second = listener_pid(setup, other_than=first)
    _, admitted = probe_create(setup)
    assert gates(admitted) == [WAITING_GATE]

    # The agent SIGKILLed alone (not its process group): the child sees its pipe close, ends.
    os.kill(process.pid, signal.SIGKILL)
    eventually(
        lambda: proc_state(second),
        lambda state: state is None,
        what=f"listener process {second} gone after the agent's SIGKILL",
        within=30.0,
    )
    process.kill()  # reaps the agent
    setup.agent.start()
    setup.agent.wait_ready()
    third = listener_pid(setup)

    # A clean stop (SIGTERM to the group) stops the child with the agent.
    restarted = setup.agent.process
    assert restarted is not None
    restarted.stop()
    eventually(
        lambda: proc_state(third),
        lambda state: state is None,
        what=f"listener process {third} gone after the agent's stop",
        within=30.0,
    )
    setup.agent.start()
    setup.agent.wait_ready()
    listener_pid(setup)
