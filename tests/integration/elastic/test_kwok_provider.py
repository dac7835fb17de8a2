"""kwok nodes and the elastic CRDs against a real member cluster.

The member runs kube-apiserver, kube-scheduler, kube-controller-manager and kwok; kwok manages
exactly the nodes annotated ``kwok.x-k8s.io/node=fake`` (as kwok's own deployment does), so
a node ``KwokNodes`` writes turns Ready only if kwok adopts it. The CRDs of
``packaging/kubernetes/elastic/`` are applied with the real kubectl, which validates strictly.
"""

from __future__ import annotations

import functools
import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from edge_agent.cluster import credentials
from edge_agent.cluster.elastic.providers import (
    KWOK_ANNOTATION,
    KwokNodes,
    KwokSettings,
    node_name,
)
from edge_agent.cluster.member_api import MemberApi
from edge_agent.cluster.settings import ClusterSettings
from fleet_model.elastic.autoscaler import Outcome
from fleet_model.elastic.nodepool import POOL_LABEL, NodePool, parse_node_pool
from tests.harness import member
from tests.harness.waiting import eventually

pytestmark = [pytest.mark.kube, pytest.mark.timeout(360)]

REPO = Path(__file__).resolve().parents[3]
CRDS = REPO / "packaging" / "kubernetes" / "elastic" / "40-elastic-crds.yaml"
GROUP = "elastic.edgefleet.io"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[member.MemberCluster]:
    spec = member.MemberSpec(
        nodes=1,
        # kwok's own deployment flag, in place of the harness's label selector.
        kwok_manage="all",
        kwok_args=(
            "--manage-all-nodes=false",
            f"--manage-nodes-with-annotation-selector={KWOK_ANNOTATION}=fake",
        ),
    )
    with member.running_member("elastic", tmp_path_factory.mktemp("member-elastic"), spec) as m:
        yield m


def kwok_pool(name: str, **spec: Any) -> NodePool:
    return parse_node_pool(
        {
            "apiVersion": f"{GROUP}/v1alpha1",
            "kind": "NodePool",
            "metadata": {"name": name},
            "spec": {
                "max": 20,
                "node": {
                    "labels": {"tier": "burst", "kubernetes.io/arch": "arm64"},
                    "taints": [{"key": "burst", "value": "yes", "effect": "NoSchedule"}],
                    "capacity": {
                        "cpu": "1500m",
                        "memory": "6Gi",
                        "pods": 17,
                        "nvidia.com/gpu": "2",
                    },
                },
                "provider": {"kwok": {}},
                **spec,
            },
        }
    )


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


def ready(node: dict[str, Any]) -> bool:
    conditions = node.get("status", {}).get("conditions") or ()
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def pool_nodes(cluster: member.MemberCluster, pool: str) -> list[str]:
    listing = cluster.api("GET", f"/api/v1/nodes?labelSelector={POOL_LABEL}%3D{pool}")
    return sorted(item["metadata"]["name"] for item in listing["items"])


async def test_created_nodes_are_adopted_by_kwok_with_the_pools_shape(
    cluster: member.MemberCluster, api: MemberApi
) -> None:
    pool = kwok_pool(unique("burst"))
    result = await KwokNodes(api).create(pool, 2)
    assert result.outcome is Outcome.CREATED, result
    assert result.nodes == (f"{pool.name}-1", f"{pool.name}-2")
    for name in result.nodes:
        node = eventually(
            functools.partial(cluster.node, name),
            ready,
            what=f"kwok making node {name} Ready",
            within=120.0,
            every=0.25,
        )
        labels = node["metadata"]["labels"]
        assert labels[POOL_LABEL] == pool.name
        assert labels["tier"] == "burst"
        assert labels["kubernetes.io/arch"] == "arm64"  # the pool's label wins over ours
        assert labels["kubernetes.io/hostname"] == name
        assert node["metadata"]["annotations"][KWOK_ANNOTATION] == "fake"
        # Kubernetes' own taints (node.kubernetes.io/not-ready until the controller sees the
        # node Ready) come and go; the pool's must be there.
        ours = [t for t in node["spec"]["taints"] if not t["key"].startswith("node.kubernetes.io/")]
        assert ours == [{"key": "burst", "value": "yes", "effect": "NoSchedule"}]
        expected = {"cpu": "1500m", "memory": str(6 * 2**30), "pods": "17", "nvidia.com/gpu": "2"}
        assert node["status"]["capacity"] == expected
        assert node["status"]["allocatable"] == expected
    # The nodes take pods: one that tolerates the taint and asks for the pool runs there.
    # (In "default": its service account exists already; a new namespace's may not yet.)
    pod_name = unique("burst")
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": pod_name, "namespace": "default"},
        "spec": {
            "nodeSelector": {POOL_LABEL: pool.name},
            "tolerations": [{"key": "burst", "operator": "Exists"}],
            "containers": [{"name": "main", "image": "example/app:1"}],
        },
    }
    cluster.kubectl("apply", "-f", "-", stdin=json.dumps(pod))
    try:
        placed = eventually(
            lambda: cluster.api("GET", f"/api/v1/namespaces/default/pods/{pod_name}"),
            lambda found: found.get("status", {}).get("phase") == "Running",
            what="a pod Running on a node of the pool",
            within=120.0,
            every=0.25,
        )
        assert placed["spec"]["nodeName"] in result.nodes
    finally:
        cluster.kubectl("delete", "pod", pod_name, "-n", "default", "--wait=false")


async def test_names_count_on_across_deletes_and_restarts(
    cluster: member.MemberCluster, api: MemberApi
) -> None:
    pool = kwok_pool(unique("web"))
    nodes = KwokNodes(api)
    first = await nodes.create(pool, 2)
    assert first.nodes == (f"{pool.name}-1", f"{pool.name}-2")
    deleted = await nodes.delete(pool, f"{pool.name}-2")
    assert deleted.outcome is Outcome.DELETED, deleted
    assert pool_nodes(cluster, pool.name) == [f"{pool.name}-1"]
    # Not reused while the agent runs, even though -2 is free again.
    again = await nodes.create(pool, 1)
    assert again.nodes == (f"{pool.name}-3",)
    # After a restart the pool's nodes say where to go on from (read page by page).
    restarted = await KwokNodes(api, KwokSettings(list_page=1)).create(pool, 1)
    assert restarted.nodes == (f"{pool.name}-4",)
    # A listing longer than allowed is a failure that says so, not a guess.
    bounded = await KwokNodes(api, KwokSettings(list_page=1, max_list_pages=2)).create(pool, 1)
    assert bounded.outcome is Outcome.FAILED
    assert "more than 2 pages" in bounded.message


async def test_a_taken_name_is_skipped(cluster: member.MemberCluster, api: MemberApi) -> None:
    pool = kwok_pool(unique("taken"))
    # A node of the same name but not of the pool (no pool label): the listing misses it.
    cluster.api(
        "POST",
        "/api/v1/nodes",
        {"apiVersion": "v1", "kind": "Node", "metadata": {"name": f"{pool.name}-1"}},
    )
    result = await KwokNodes(api).create(pool, 2)
    assert result.outcome is Outcome.CREATED, result
    assert result.nodes == (f"{pool.name}-2", f"{pool.name}-3")
    assert pool_nodes(cluster, pool.name) == [f"{pool.name}-2", f"{pool.name}-3"]


async def test_delete_removes_only_the_pools_nodes(
    cluster: member.MemberCluster, api: MemberApi
) -> None:
    pool = kwok_pool(unique("del"))
    nodes = KwokNodes(api)
    (name,) = (await nodes.create(pool, 1)).nodes
    gone = await nodes.delete(pool, name)
    assert gone.outcome is Outcome.DELETED
    assert cluster.plane.request("GET", f"/api/v1/nodes/{name}")[0] == 404
    # A node already gone is deleted: the autoscaler's retry after a lost answer succeeds.
    assert (await nodes.delete(pool, name)).outcome is Outcome.DELETED
    # The harness's own node is no pool's: refused, and still there.
    other = cluster.nodes[0]
    refused = await nodes.delete(pool, other)
    assert refused.outcome is Outcome.FAILED
    assert f"not of pool {pool.name}" in refused.message
    assert cluster.node(other)["metadata"]["name"] == other
    # Nor another pool's node.
    neighbour = kwok_pool(unique("nb"))
    (theirs,) = (await nodes.create(neighbour, 1)).nodes
    assert (await nodes.delete(pool, theirs)).outcome is Outcome.FAILED
    assert pool_nodes(cluster, neighbour.name) == [theirs]


async def test_a_long_pool_name_still_makes_valid_node_names(
    cluster: member.MemberCluster, api: MemberApi
) -> None:
    long_a = "a" * 56 + secrets.token_hex(3) + "x"  # 63 characters
    long_b = long_a[:-1] + "y"
    assert node_name(long_a, 1) != node_name(long_b, 1)
    for name in (long_a, long_b):
        pool = kwok_pool(name)
        result = await KwokNodes(api).create(pool, 1)
        assert result.outcome is Outcome.CREATED, result
        (made,) = result.nodes
        assert len(made) <= 63
        assert cluster.node(made)["metadata"]["labels"]["kubernetes.io/hostname"] == made


async def test_an_unreachable_api_server_is_a_failure_not_a_crash(
    cluster: member.MemberCluster,
) -> None:
    settings = ClusterSettings(kubeconfig=cluster.kubeconfig)
    closed = MemberApi(credentials=credentials.load(settings), settings=settings)  # never opened
    pool = kwok_pool(unique("down"))
    created = await KwokNodes(closed).create(pool, 1)
    assert created.outcome is Outcome.FAILED
    assert "closed" in created.message
    deleted = await KwokNodes(closed).delete(pool, f"{pool.name}-1")
    assert deleted.outcome is Outcome.FAILED


# ---------------------------------------------------------------- the CRDs


@pytest.fixture(scope="module")
def crds(cluster: member.MemberCluster) -> member.MemberCluster:
    cluster.kubectl("apply", "-f", str(CRDS))
    for plural in ("nodepools", "resourcepolicies"):
        cluster.kubectl(
            "wait",
            "--for=condition=Established",
            f"crd/{plural}.{GROUP}",
            "--timeout=120s",
        )
    # Established comes a moment before discovery lists the kinds; kubectl needs the latter.
    eventually(
        lambda: cluster.kubectl("get", "nodepools,resourcepolicies", "-A", check=False),
        lambda done: done.returncode == 0,
        what="the elastic kinds in discovery",
        within=60.0,
        every=0.5,
    )
    return cluster


SAMPLE_POOL = f"""
apiVersion: {GROUP}/v1alpha1
kind: NodePool
metadata: {{name: cloud}}
spec:
  priority: 10
  min: 0
  max: 5
  node:
    labels: {{tier: burst}}
    taints: [{{key: burst, value: "yes", effect: NoSchedule}}]
    capacity: {{cpu: "4", memory: 16Gi, pods: 110, ephemeral-storage: 100Gi}}
  provider:
    command: {{path: /usr/local/bin/cloud-nodes, args: [--region, eu], timeoutSeconds: 300}}
  scaleDown: {{emptyAfterSeconds: 120, underUsedAfterSeconds: 600, utilizationBelow: 0.4}}
"""

SAMPLE_POLICY = f"""
apiVersion: {GROUP}/v1alpha1
kind: ResourcePolicy
metadata: {{name: web, namespace: default}}
spec:
  selector: {{matchLabels: {{app: web}}}}
  units:
  - {{name: local, nodeSelector: {{edgefleet.io/site: dc1}}}}
  - {{name: cloud, nodeSelector: {{matchLabels: {{tier: burst}}}}, max: 4}}
  - name: virtual
    nodeSelector: {{matchExpressions: [{{key: type, operator: In, values: [virtual-kubelet]}}]}}
  whenTryNextUnits: {{policy: LackResourceOrExceedMax, timeoutSeconds: 60}}
  matchLabelKeys: [pod-template-hash]
"""


def test_samples_are_accepted_and_kept_whole(crds: member.MemberCluster) -> None:
    crds.kubectl("apply", "-f", "-", stdin=SAMPLE_POOL)
    crds.kubectl("apply", "-f", "-", stdin=SAMPLE_POLICY)
    stored_pool = json.loads(crds.kubectl("get", "nodepool", "cloud", "-o", "json").stdout)
    # Nothing pruned: what was written is what the agent reads, and it parses.
    assert stored_pool["spec"] == yaml.safe_load(SAMPLE_POOL)["spec"]
    parsed = parse_node_pool(stored_pool)
    assert (parsed.priority, parsed.max) == (10, 5)
    stored_policy = json.loads(
        crds.kubectl("get", "resourcepolicy", "web", "-n", "default", "-o", "json").stdout
    )
    assert stored_policy["spec"] == yaml.safe_load(SAMPLE_POLICY)["spec"]
    # The printer columns and the category work for kubectl users.
    table = crds.kubectl("get", "elastic", "-A").stdout
    assert "nodepool.elastic.edgefleet.io/cloud" in table
    assert "resourcepolicy.elastic.edgefleet.io/web" in table


def test_status_is_a_subresource(crds: member.MemberCluster) -> None:
    crds.kubectl("apply", "-f", "-", stdin=SAMPLE_POOL.replace("name: cloud", "name: st"))
    status = {"status": {"nodes": 2, "creating": 1, "removing": 0, "conditions": []}}
    crds.kubectl(
        "patch", "nodepool", "st", "--subresource=status", "--type=merge", "-p", json.dumps(status)
    )
    # A status written through the main resource is ignored, as for built-in kinds.
    crds.kubectl("patch", "nodepool", "st", "--type=merge", "-p", '{"status": {"nodes": 9}}')
    stored = json.loads(crds.kubectl("get", "nodepool", "st", "-o", "json").stdout)
    assert stored["status"]["nodes"] == 2
    assert stored["status"]["creating"] == 1
    row = crds.kubectl("get", "nodepool", "st", "--no-headers").stdout.split()
    assert row[:5] == ["st", "10", "0", "5", "2"]
    policy = SAMPLE_POLICY.replace("name: web", "name: st")
    crds.kubectl("apply", "-f", "-", stdin=policy)
    crds.kubectl(
        "patch",
        "resourcepolicy",
        "st",
        "-n",
        "default",
        "--subresource=status",
        "--type=merge",
        "-p",
        '{"status": {"units": [{"name": "local", "pods": 3}]}}',
    )
    stored = json.loads(crds.kubectl("get", "resourcepolicy", "st", "-o", "json").stdout)
    assert stored["status"]["units"] == [{"name": "local", "pods": 3}]


def edit(text: str, change: Any) -> str:
    document = yaml.safe_load(text)
    change(document)
    return json.dumps(document)


def set_path(path: str, value: Any) -> Any:
    def change(document: dict[str, Any]) -> None:
        *parents, last = path.split("/")
        target: Any = document
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target[part]
        if value is DELETE:
            del target[last]
        else:
            target[last] = value

    return change


DELETE = object()


@pytest.mark.parametrize(
    ("sample", "path", "value", "expected"),
    [
        (SAMPLE_POOL, "metadata/name", "n" * 64, "metadata.name"),
        (SAMPLE_POOL, "spec/max", -1, "spec.max"),
        (SAMPLE_POOL, "spec/max", DELETE, "spec.max: Required value"),
        (SAMPLE_POOL, "spec/priority", "high", "spec.priority"),
        (SAMPLE_POOL, "spec/provider", {"kwok": {}, "command": {"path": "/x"}}, "spec.provider"),
        (SAMPLE_POOL, "spec/provider", {}, "spec.provider"),
        (SAMPLE_POOL, "spec/provider/command/path", "relative/x", "spec.provider.command.path"),
        (SAMPLE_POOL, "spec/node/taints/0/effect", "Sometimes", "spec.node.taints[0].effect"),
        (SAMPLE_POOL, "spec/node/capacity/pods", DELETE, "pods"),
        (SAMPLE_POOL, "spec/scaleDown/utilizationBelow", 2, "utilizationBelow"),
        (SAMPLE_POOL, "spec/replicas", 3, 'unknown field "spec.replicas"'),
        (SAMPLE_POLICY, "spec/units", [], "spec.units"),
        (SAMPLE_POLICY, "spec/units/0/nodeSelector", DELETE, "nodeSelector"),
        (SAMPLE_POLICY, "spec/units/1/max", -2, "spec.units[1].max"),
        (SAMPLE_POLICY, "spec/whenTryNextUnits/policy", "Never", "whenTryNextUnits.policy"),
        (SAMPLE_POLICY, "spec/matchLabelKeys", ["k"] * 9, "spec.matchLabelKeys"),
        (SAMPLE_POLICY, "spec/unitz", [], 'unknown field "spec.unitz"'),
    ],
)
def test_malformed_objects_are_refused(
    crds: member.MemberCluster, sample: str, path: str, value: Any, expected: str
) -> None:
    bad = edit(
        sample.replace("name: cloud", "name: bad").replace("name: web", "name: bad"),
        set_path(path, value),
    )
    done = crds.kubectl("apply", "-f", "-", stdin=bad, check=False)
    assert done.returncode != 0, done.stdout
    assert expected in done.stderr, done.stderr
