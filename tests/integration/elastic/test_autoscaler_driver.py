"""The NodePool autoscaler's driver against a real member cluster.

The member runs kube-apiserver, kube-scheduler, kube-controller-manager (Deployments,
ReplicaSets, the disruption controller) and kwok, which plays exactly the nodes annotated
``kwok.x-k8s.io/node=fake`` (the nodes ``KwokNodes`` writes). The CRDs are applied with the
real kubectl. Each test runs its own informers and ``NodePoolAutoscaler`` in a TaskGroup, with
NodePools and a Deployment of its own scenario (a label every pool's nodes carry and every pod
needs, and a taint they tolerate), so the harness's node never takes them; everything of the
scenario is deleted afterwards.

The test's own reads of the cluster go through threads (``asyncio.to_thread``): the autoscaler
runs on the test's event loop and must not be held.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import secrets
import stat
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import prometheus_client
import pytest

from edge_agent.cluster.elastic.autoscaler_driver import DriverSettings, NodePoolAutoscaler
from edge_agent.cluster.elastic.drain import (
    CORDON_ANNOTATION,
    CORDONED_BY,
    Drainer,
    DrainSettings,
)
from edge_agent.cluster.elastic.events import EventRecorder, EventSettings
from edge_agent.cluster.elastic.providers import (
    KWOK_ANNOTATION,
    CommandNodes,
    KwokNodes,
    NodeProvider,
    PoolProviders,
)
from edge_agent.cluster.member_api import MemberApi
from edge_agent.cluster.member_watch import Informer, InformerSettings
from fleet_model.elastic.autoscaler import AutoscalerSettings, CreateResult, DeleteResult
from fleet_model.elastic.nodepool import POOL_LABEL, NodePool
from tests.harness import member
from tests.harness.waiting import eventually, eventually_async

pytestmark = [pytest.mark.kube, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[3]
CRDS = REPO / "packaging" / "kubernetes" / "elastic" / "40-elastic-crds.yaml"
GROUP = "elastic.edgefleet.io"
NODEPOOLS = f"/apis/{GROUP}/v1alpha1/nodepools"
SCENARIO = "edgefleet.test/scenario"
TAINT = {"key": "edgefleet.test/elastic", "value": "yes", "effect": "NoSchedule"}
WITHIN = 180.0
"""Seconds: a safety net for two busy cores (a node create, kwok, the scheduler, a drain)."""

DRIVER = DriverSettings(
    min_step_interval_seconds=0.05,
    status_interval_seconds=0.2,
    drain=DrainSettings(timeout_seconds=60.0, pdb_wait_seconds=1.0, eviction_retry_seconds=0.5),
)
"""Quick pacing so the tests wait little; the rules are the same."""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[member.MemberCluster]:
    spec = member.MemberSpec(
        nodes=1,
        kwok_manage="all",
        kwok_args=(
            "--manage-all-nodes=false",
            f"--manage-nodes-with-annotation-selector={KWOK_ANNOTATION}=fake",
        ),
    )
    folder = tmp_path_factory.mktemp("member-autoscaler")
    with member.running_member("autoscaler", folder, spec) as started:
        started.kubectl("apply", "-f", str(CRDS))
        started.kubectl(
            "wait", "--for=condition=Established", f"crd/nodepools.{GROUP}", "--timeout=120s"
        )
        eventually(
            lambda: started.kubectl("get", "nodepools", check=False),
            lambda done: done.returncode == 0,
            what="NodePools in discovery",
            within=60.0,
            every=0.5,
        )
        yield started


@pytest.fixture
def scenario(cluster: member.MemberCluster) -> Iterator[str]:
    """A name for the test's objects; they are all deleted afterwards."""
    name = f"s{secrets.token_hex(3)}"
    yield name
    selector = f"{SCENARIO}={name}"
    cluster.kubectl(
        "delete", "deployments,pdb", "-n", "default", "-l", selector, "--wait=false", check=False
    )
    listed = cluster.api("GET", f"{NODEPOOLS}?labelSelector={quote(selector)}")
    cluster.kubectl("delete", "nodepools", "-l", selector, check=False)
    for pool in listed["items"]:
        pool_selector = f"{POOL_LABEL}={pool['metadata']['name']}"
        cluster.kubectl("delete", "nodes", "-l", pool_selector, "--wait=false", check=False)


# ---------------------------------------------------------------- objects


def pool_doc(
    name: str,
    scenario: str,
    *,
    priority: int,
    provider: dict[str, Any] | None = None,
    low: int = 0,
    high: int = 5,
    labels: dict[str, str] | None = None,
    scale_down: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/v1alpha1",
        "kind": "NodePool",
        "metadata": {"name": name, "labels": {SCENARIO: scenario}},
        "spec": {
            "priority": priority,
            "min": low,
            "max": high,
            "node": {
                "labels": labels if labels is not None else {SCENARIO: scenario},
                "taints": [TAINT],
                "capacity": {"cpu": "2", "memory": "4Gi", "pods": 10},
            },
            "provider": provider or {"kwok": {}},
            "scaleDown": scale_down or {"emptyAfterSeconds": 3600},
        },
    }


def command(path: Path, timeout: int = 30) -> dict[str, Any]:
    return {"command": {"path": str(path), "timeoutSeconds": timeout}}


def deployment(name: str, scenario: str, *, replicas: int, cpu: str) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": "default", "labels": {SCENARIO: scenario}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name, SCENARIO: scenario}},
                "spec": {
                    "nodeSelector": {SCENARIO: scenario},
                    "tolerations": [{"key": TAINT["key"], "operator": "Exists"}],
                    "terminationGracePeriodSeconds": 0,
                    "containers": [
                        {
                            "name": "main",
                            "image": "example/app:1",
                            "resources": {"requests": {"cpu": cpu, "memory": "64Mi"}},
                        }
                    ],
                },
            },
        },
    }


def script(folder: Path, name: str, body: str) -> Path:
    path = folder / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


# ---------------------------------------------------------------- reading the cluster


class Reader:
    """The test's reads, in threads (the autoscaler shares the loop)."""

    def __init__(self, cluster: member.MemberCluster) -> None:
        self.cluster = cluster

    async def get(self, path: str) -> Any:
        return await asyncio.to_thread(self.cluster.api, "GET", path)

    async def kubectl(self, *args: str, stdin: str | None = None) -> None:
        await asyncio.to_thread(self.cluster.kubectl, *args, stdin=stdin)

    async def apply(self, *documents: dict[str, Any]) -> None:
        for document in documents:
            await self.kubectl("apply", "-f", "-", stdin=json.dumps(document))

    async def pool_nodes(self, pool: str) -> list[dict[str, Any]]:
        listing = await self.get(f"/api/v1/nodes?labelSelector={quote(f'{POOL_LABEL}={pool}')}")
        return sorted(listing["items"], key=lambda node: node["metadata"]["name"])

    async def pods(self, app: str) -> list[dict[str, Any]]:
        listing = await self.get(f"/api/v1/namespaces/default/pods?labelSelector=app%3D{app}")
        return [pod for pod in listing["items"] if not pod["metadata"].get("deletionTimestamp")]

    async def pool(self, name: str) -> dict[str, Any]:
        found: dict[str, Any] = await self.get(f"{NODEPOOLS}/{name}")
        return found

    async def events(self, name: str) -> list[dict[str, Any]]:
        selector = quote(f"involvedObject.name={name}")
        listing = await self.get(f"/api/v1/namespaces/default/events?fieldSelector={selector}")
        items: list[dict[str, Any]] = listing["items"]
        return items


def running(pods: list[dict[str, Any]], count: int) -> bool:
    return len(pods) == count and all(
        pod["status"].get("phase") == "Running" and pod["spec"].get("nodeName") for pod in pods
    )


def condition(pool: dict[str, Any], kind: str) -> dict[str, Any]:
    for found in pool.get("status", {}).get("conditions", []):
        if found["type"] == kind:
            return dict(found)
    return {}


def with_reason(reason: str) -> Callable[[list[dict[str, Any]]], bool]:
    return lambda events: any(event["reason"] == reason for event in events)


def the(reason: str, events: list[dict[str, Any]]) -> dict[str, Any]:
    return next(event for event in events if event["reason"] == reason)


async def until(probe: Callable[[], Any], check: Callable[[Any], bool], what: str) -> Any:
    return await eventually_async(probe, check, what=what, within=WITHIN, every=0.25)


# ---------------------------------------------------------------- running the autoscaler


@dataclass
class Running:
    scaler: NodePoolAutoscaler
    recorder: EventRecorder
    registry: prometheus_client.CollectorRegistry

    def metric(self, name: str, **labels: str) -> float:
        value = self.registry.get_sample_value(f"edge_agent_elastic_autoscaler_{name}", labels)
        return value or 0.0


@contextlib.asynccontextmanager
async def autoscaler(
    api: MemberApi,
    *,
    providers: NodeProvider | None = None,
    core: AutoscalerSettings | None = None,
    settings: DriverSettings = DRIVER,
) -> AsyncIterator[Running]:
    """Informers and the autoscaler running for the block (started once all have listed)."""
    informers = InformerSettings(backoff_initial=0.05, backoff_max=0.5)
    pools = Informer(api, NODEPOOLS, settings=informers)
    nodes = Informer(api, "/api/v1/nodes", settings=informers)
    pods = Informer(api, "/api/v1/pods", settings=informers)
    recorder = EventRecorder(api)
    registry = prometheus_client.CollectorRegistry()
    scaler = NodePoolAutoscaler(
        api=api,
        pools=pools,
        nodes=nodes,
        pods=pods,
        providers=providers or PoolProviders(kwok=KwokNodes(api), command=CommandNodes()),
        events=recorder,
        settings=settings,
        core=core,
        registry=registry,
    )
    async with asyncio.TaskGroup() as group:
        tasks = [
            group.create_task(informer.run(), name=f"informer {informer.path}")
            for informer in (pools, nodes, pods)
        ]
        tasks.append(group.create_task(scaler.run(), name="elastic.autoscaler"))
        try:
            await eventually_async(
                lambda: asyncio.sleep(0, scaler.steps),
                lambda steps: steps > 0,
                what="the autoscaler's first step",
                within=WITHIN,
            )
            yield Running(scaler=scaler, recorder=recorder, registry=registry)
        finally:
            for task in tasks:
                task.cancel()


class RecordingProviders:
    """The real providers, noting the order of deletes."""

    def __init__(self, inner: NodeProvider) -> None:
        self.inner = inner
        self.deleted: list[str] = []

    async def create(self, pool: NodePool, count: int) -> CreateResult:
        return await self.inner.create(pool, count)

    async def delete(self, pool: NodePool, node: str) -> DeleteResult:
        self.deleted.append(node)
        return await self.inner.delete(pool, node)


# ---------------------------------------------------------------- scale-up


async def test_pending_pods_grow_the_highest_priority_pool_that_fits(
    cluster: member.MemberCluster, api: MemberApi, scenario: str
) -> None:
    read = Reader(cluster)
    other, first, second = f"{scenario}-gpu", f"{scenario}-a", f"{scenario}-b"
    await read.apply(
        # The highest priority, but its nodes lack the label the pods ask for.
        pool_doc(other, scenario, priority=100, labels={SCENARIO: f"{scenario}-other"}),
        pool_doc(first, scenario, priority=50),
        pool_doc(second, scenario, priority=10),
    )
    async with autoscaler(api) as scaling:
        web = f"{scenario}-web"
        await read.apply(deployment(web, scenario, replicas=3, cpu="500m"))
        pods = await until(lambda: read.pods(web), lambda p: running(p, 3), "3 pods Running")
        nodes = [node["metadata"]["name"] for node in await read.pool_nodes(first)]
        # Three pods of half a core fit one node of two cores: one node, of the first pool.
        assert nodes == [f"{first}-1"]
        assert {pod["spec"]["nodeName"] for pod in pods} == {f"{first}-1"}
        assert await read.pool_nodes(second) == []
        assert await read.pool_nodes(other) == []
        status = await until(
            lambda: read.pool(first),
            lambda p: (
                p.get("status", {}).get("nodes") == 1
                and condition(p, "ScalingUp").get("status") == "False"
            ),
            "the pool's status: one node, no create in flight",
        )
        assert condition(status, "Accepted")["status"] == "True"
        assert condition(status, "ProviderReady")["reason"] == "Ready"
        assert condition(status, "AtMax")["status"] == "False"
        events = await until(
            lambda: read.events(first), with_reason("NodesCreated"), "a NodesCreated event"
        )
        scale_up = the("ScaleUp", events)
        assert scale_up["message"] == "creating 1 nodes"
        assert scale_up["type"] == "Normal"
        assert scale_up["source"]["component"] == "edgefleet-elastic"
        assert scale_up["involvedObject"]["kind"] == "NodePool"
        assert scale_up["involvedObject"]["uid"] == status["metadata"]["uid"]
        assert scaling.metric("nodes_created_total", pool=first) == 1
        assert scaling.metric("nodes_created_total", pool=second) == 0
        assert scaling.metric("steps_total") >= 1


async def test_a_failing_command_provider_falls_back_to_the_next_pool(
    cluster: member.MemberCluster, api: MemberApi, scenario: str, tmp_path: Path
) -> None:
    read = Reader(cluster)
    failing = script(
        tmp_path,
        "cloud-nodes",
        'echo "starting m5.large" >&2\n'
        'echo "error: quota exceeded for m5.large in eu-west-1" >&2\n'
        "exit 3",
    )
    cloud, virtual = f"{scenario}-cloud", f"{scenario}-virtual"
    await read.apply(
        pool_doc(cloud, scenario, priority=50, provider=command(failing)),
        pool_doc(virtual, scenario, priority=10),
    )
    async with autoscaler(api) as scaling:
        web = f"{scenario}-web"
        await read.apply(deployment(web, scenario, replicas=2, cpu="500m"))
        pods = await until(lambda: read.pods(web), lambda p: running(p, 2), "2 pods Running")
        assert {pod["spec"]["nodeName"] for pod in pods} == {f"{virtual}-1"}
        events = await until(
            lambda: read.events(cloud), with_reason("ProviderFailed"), "a ProviderFailed event"
        )
        failed = the("ProviderFailed", events)
        assert failed["type"] == "Warning"
        assert f"{failing} create exited with status 3" in failed["message"]
        assert "quota exceeded for m5.large in eu-west-1" in failed["message"]
        status = await until(
            lambda: read.pool(cloud),
            lambda p: condition(p, "ProviderReady").get("status") == "False",
            "ProviderReady False on the failing pool",
        )
        ready = condition(status, "ProviderReady")
        assert ready["reason"] == "BackingOff"
        assert "quota exceeded" in ready["message"]
        assert status["status"]["nodes"] == 0
        assert await read.pool_nodes(cloud) == []
        labels = {"pool": cloud, "operation": "create", "outcome": "Failed"}
        assert scaling.metric("provider_failures_total", **labels) == 1
        assert scaling.metric("nodes_created_total", pool=virtual) == 1


async def test_bad_providers_and_specs_are_reported_and_other_pools_keep_working(
    cluster: member.MemberCluster, api: MemberApi, scenario: str, tmp_path: Path
) -> None:
    read = Reader(cluster)
    garbage = script(tmp_path, "garbage", 'echo "<html>502 Bad Gateway</html>"')
    hangs = script(tmp_path, "hangs", "exec sleep 120")
    broken, noisy, stuck, kwok = (
        f"{scenario}-broken",
        f"{scenario}-garbage",
        f"{scenario}-stuck",
        f"{scenario}-kwok",
    )
    await read.apply(
        # min above max: the CRD's schema takes it, the autoscaler refuses it.
        pool_doc(broken, scenario, priority=90, low=3, high=1),
        pool_doc(noisy, scenario, priority=40, provider=command(garbage)),
        pool_doc(stuck, scenario, priority=30, provider=command(hangs, timeout=2)),
        pool_doc(kwok, scenario, priority=10),
    )
    async with autoscaler(api) as scaling:
        web = f"{scenario}-web"
        await read.apply(deployment(web, scenario, replicas=2, cpu="500m"))
        pods = await until(lambda: read.pods(web), lambda p: running(p, 2), "2 pods Running")
        assert {pod["spec"]["nodeName"] for pod in pods} == {f"{kwok}-1"}
        # The refused spec: a condition and one Warning event, and no node.
        status = await until(
            lambda: read.pool(broken),
            lambda p: condition(p, "Accepted").get("status") == "False",
            "Accepted False on the invalid pool",
        )
        accepted = condition(status, "Accepted")
        assert accepted["reason"] == "InvalidSpec"
        assert "/spec/min: must not exceed max (1)" in accepted["message"]
        assert accepted["observedGeneration"] == status["metadata"]["generation"]
        events = await until(
            lambda: read.events(broken), with_reason("InvalidSpec"), "an InvalidSpec event"
        )
        assert the("InvalidSpec", events)["type"] == "Warning"
        assert await read.pool_nodes(broken) == []
        # Garbage on stdout and a command that hangs: each says so, in events and status.
        events = await until(
            lambda: read.events(noisy), with_reason("ProviderFailed"), "ProviderFailed (garbage)"
        )
        assert (
            'provider output is not JSON {"nodes": [...]}'
            in the("ProviderFailed", events)["message"]
        )
        events = await until(
            lambda: read.events(stuck), with_reason("ProviderTimedOut"), "ProviderTimedOut"
        )
        assert (
            f"{hangs} create did not finish within 2 s; killed"
            in the("ProviderTimedOut", events)["message"]
        )
        for name in (noisy, stuck):
            status = await until(
                functools.partial(read.pool, name),
                lambda p: condition(p, "ProviderReady").get("status") == "False",
                f"ProviderReady False on {name}",
            )
            assert condition(status, "Accepted")["status"] == "True"
        good = await read.pool(kwok)
        assert condition(good, "Accepted")["status"] == "True"
        assert condition(good, "ProviderReady")["status"] == "True"
        labels = {"pool": stuck, "operation": "create", "outcome": "TimedOut"}
        assert scaling.metric("provider_failures_total", **labels) == 1
        assert scaling.metric("invalid_pools") == 1
        # Fixed, the pool is accepted again.
        fixed = pool_doc(broken, scenario, priority=90, low=0, high=1)
        await read.apply(fixed)
        await until(
            lambda: read.pool(broken),
            lambda p: condition(p, "Accepted").get("status") == "True",
            "Accepted True once the spec is fixed",
        )


# ---------------------------------------------------------------- scale-down


async def test_empty_nodes_are_drained_and_removed_lowest_priority_first(
    cluster: member.MemberCluster, api: MemberApi, scenario: str
) -> None:
    read = Reader(cluster)
    high, low = f"{scenario}-high", f"{scenario}-low"
    quick = {"emptyAfterSeconds": 5}
    await read.apply(
        pool_doc(high, scenario, priority=20, high=1, scale_down=quick),
        pool_doc(low, scenario, priority=10, scale_down=quick),
    )
    recording = RecordingProviders(PoolProviders(kwok=KwokNodes(api), command=CommandNodes()))
    # One removal per step and one at a time, so the order of the deletes is the order the
    # autoscaler chose.
    one_by_one = DriverSettings(
        min_step_interval_seconds=0.05,
        status_interval_seconds=0.2,
        max_provider_calls=1,
        max_drains=1,
        drain=DRIVER.drain,
    )
    core = AutoscalerSettings(max_nodes_removed_per_step=1)
    web = f"{scenario}-web"
    async with autoscaler(api):
        # Three pods of a core on nodes of two: the high pool's only node and one more.
        await read.apply(deployment(web, scenario, replicas=3, cpu="1"))
        pods = await until(lambda: read.pods(web), lambda p: running(p, 3), "3 pods Running")
        assert {pod["spec"]["nodeName"] for pod in pods} == {f"{high}-1", f"{low}-1"}
    # Emptied while no autoscaler runs, so the next one sees both nodes empty from its first
    # step on: both are due in the same step, and the order is the autoscaler's alone.
    await read.kubectl("scale", "deployment", web, "-n", "default", "--replicas=0")
    await until(lambda: read.pods(web), lambda p: p == [], "the pods gone")
    async with autoscaler(api, providers=recording, core=core, settings=one_by_one) as scaling:
        for pool in (low, high):
            await until(
                functools.partial(read.pool_nodes, pool), lambda n: n == [], f"{pool} empty"
            )
        if recording.deleted != [f"{low}-1", f"{high}-1"]:
            # Seen once in a full CI run (2026-12-04), never alone or under a CPU hog: say
            # what the autoscaler did so the next failure explains itself.
            said = {
                node: [
                    (e.get("reason"), e.get("message"), e.get("lastTimestamp"), e.get("count"))
                    for e in await read.events(node)
                ]
                for node in (f"{low}-1", f"{high}-1", low, high)
            }
            pytest.fail(
                f"deleted in the order {recording.deleted}, expected low first; steps "
                f"{scaling.scaler.steps}, skipped {scaling.scaler.skipped}; events: {said}"
            )
        for pool in (low, high):
            events = await until(
                functools.partial(read.events, pool),
                with_reason("NodeDeleted"),
                f"NodeDeleted on {pool}",
            )
            assert the("NodeDeleted", events)["message"] == f"node {pool}-1 drained and deleted"
            await until(
                functools.partial(read.pool, pool),
                lambda p: p["status"]["nodes"] == 0,
                f"{pool}'s status at 0 nodes",
            )
            assert scaling.metric("nodes_deleted_total", pool=pool) == 1
        events = await read.events(f"{low}-1")
        assert the("ScaleDown", events)["message"] == (
            f"empty node of pool {low}: cordon, drain, then delete"
        )


async def test_a_pod_disruption_budget_blocks_a_drain(
    cluster: member.MemberCluster, api: MemberApi, scenario: str
) -> None:
    read = Reader(cluster)
    high, low = f"{scenario}-high", f"{scenario}-low"
    await read.apply(
        # The high pool keeps its one node (min 1): where the low pool's pods could move.
        pool_doc(high, scenario, priority=20, low=1, high=1),
        pool_doc(
            low,
            scenario,
            priority=10,
            scale_down={
                "emptyAfterSeconds": 3600,
                "underUsedAfterSeconds": 5,
                "utilizationBelow": 0.9,
            },
        ),
    )
    async with autoscaler(api) as scaling:
        await until(lambda: read.pool_nodes(high), lambda n: len(n) == 1, "the high pool's min")
        # A filler takes the high node whole, so the budgeted pods go to the low pool.
        filler, web = f"{scenario}-filler", f"{scenario}-web"
        await read.apply(deployment(filler, scenario, replicas=1, cpu="2"))
        placed = await until(lambda: read.pods(filler), lambda p: running(p, 1), "the filler")
        assert placed[0]["spec"]["nodeName"] == f"{high}-1"
        budget = {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": {"name": web, "namespace": "default", "labels": {SCENARIO: scenario}},
            "spec": {"minAvailable": 2, "selector": {"matchLabels": {"app": web}}},
        }
        await read.apply(deployment(web, scenario, replicas=2, cpu="200m"), budget)
        pods = await until(lambda: read.pods(web), lambda p: running(p, 2), "2 web pods Running")
        assert {pod["spec"]["nodeName"] for pod in pods} == {f"{low}-1"}
        await until(
            lambda: read.get(f"/apis/policy/v1/namespaces/default/poddisruptionbudgets/{web}"),
            lambda pdb: (
                pdb.get("status", {}).get("currentHealthy") == 2
                and pdb["status"].get("observedGeneration") == pdb["metadata"]["generation"]
            ),
            "the budget counting both pods",
        )
        # Without the filler the low node is under-used and its pods fit the high node: the
        # autoscaler drains it, and the budget refuses.
        await read.kubectl("delete", "deployment", filler, "-n", "default")
        events = await until(
            lambda: read.events(f"{low}-1"), with_reason("DrainBlocked"), "a DrainBlocked event"
        )
        blocked = the("DrainBlocked", events)
        assert blocked["type"] == "Warning"
        assert "violate the pod's disruption budget" in blocked["message"]
        assert f"The disruption budget {web} needs 2 healthy pods" in blocked["message"]
        assert blocked["message"].endswith("node uncordoned and kept")
        assert "ScaleDown" in {event["reason"] for event in events}
        node = await until(
            lambda: read.get(f"/api/v1/nodes/{low}-1"),
            lambda n: not n["spec"].get("unschedulable"),
            "the low node uncordoned",
        )
        assert CORDON_ANNOTATION not in node["metadata"].get("annotations", {})
        # Nothing was evicted: the same two pods still run there.
        still = await read.pods(web)
        assert {pod["metadata"]["uid"] for pod in still} == {pod["metadata"]["uid"] for pod in pods}
        assert scaling.metric("drains_blocked_total", pool=low) >= 1
        assert scaling.metric("nodes_deleted_total", pool=low) == 0


# ---------------------------------------------------------------- the building blocks


async def test_cordon_marks_and_uncordon_undoes_only_its_own(
    cluster: member.MemberCluster, api: MemberApi, scenario: str
) -> None:
    read = Reader(cluster)
    name = f"{scenario}-plain"
    node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}}
    await asyncio.to_thread(cluster.api, "POST", "/api/v1/nodes", node)
    try:
        drainer = Drainer(api=api, pods=Informer(api, "/api/v1/pods", settings=InformerSettings()))
        assert await drainer.cordon(name) == ""
        found = await read.get(f"/api/v1/nodes/{name}")
        assert found["spec"]["unschedulable"] is True
        assert found["metadata"]["annotations"][CORDON_ANNOTATION] == CORDONED_BY
        assert await drainer.uncordon(name) == ""
        found = await read.get(f"/api/v1/nodes/{name}")
        assert not found["spec"].get("unschedulable")
        assert CORDON_ANNOTATION not in found["metadata"].get("annotations", {})
        # An operator's cordon is neither marked nor undone.
        await read.kubectl("cordon", name)
        assert await drainer.cordon(name) == ""
        assert await drainer.uncordon(name) == ""
        found = await read.get(f"/api/v1/nodes/{name}")
        assert found["spec"]["unschedulable"] is True
        assert CORDON_ANNOTATION not in found["metadata"].get("annotations", {})
        # A node that is gone needs neither.
        assert await drainer.cordon(f"{scenario}-gone") == ""
        assert await drainer.uncordon(f"{scenario}-gone") == ""
        # Our mark left behind by a run that stopped mid-drain: the next run uncordons.
        await read.kubectl("uncordon", name)
        assert await drainer.cordon(name) == ""
        async with autoscaler(api):
            await until(
                lambda: read.get(f"/api/v1/nodes/{name}"),
                lambda n: not n["spec"].get("unschedulable"),
                "the left-over cordon undone at start",
            )
    finally:
        await read.kubectl("delete", "node", name, "--wait=false")


async def test_the_event_recorder_aggregates_repeats_and_is_bounded(
    cluster: member.MemberCluster, api: MemberApi, scenario: str
) -> None:
    read = Reader(cluster)
    configmap = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": scenario, "namespace": "default", "labels": {SCENARIO: scenario}},
    }
    created = await asyncio.to_thread(
        cluster.api, "POST", "/api/v1/namespaces/default/configmaps", configmap
    )
    try:
        obj = {**created, "apiVersion": "v1", "kind": "ConfigMap"}
        recorder = EventRecorder(
            api, settings=EventSettings(repeat_write_seconds=0, burst=4, writes_per_second=0.001)
        )
        for _ in range(3):
            await recorder.emit(obj, type="Warning", reason="TestRepeat", message="the same")
        await recorder.emit(obj, type="Normal", reason="TestRepeat", message="another")
        await recorder.emit(obj, type="Normal", reason="TestRepeat", message="one too many")
        assert (recorder.created, recorder.bumped, recorder.dropped) == (2, 2, 1)
        events = await read.events(scenario)
        by_message = {event["message"]: event for event in events}
        assert set(by_message) == {"the same", "another"}
        same = by_message["the same"]
        assert same["count"] == 3
        assert same["type"] == "Warning"
        assert same["involvedObject"]["uid"] == created["metadata"]["uid"]
        assert same["lastTimestamp"] >= same["firstTimestamp"]
        assert by_message["another"]["count"] == 1
        # Repeats within repeat_write_seconds are counted in memory only.
        quiet = EventRecorder(api, settings=EventSettings(repeat_write_seconds=3600))
        for _ in range(3):
            await quiet.emit(obj, type="Normal", reason="TestQuiet", message="m")
        assert (quiet.created, quiet.bumped, quiet.counted) == (1, 0, 2)
        # A cluster-scoped object's event lives in "default", without a namespace of its own.
        harness_node = await read.get(f"/api/v1/nodes/{cluster.nodes[0]}")
        node = {**harness_node, "apiVersion": "v1", "kind": "Node"}
        await quiet.emit(node, type="Normal", reason="TestNode", message=scenario)
        events = await read.events(cluster.nodes[0])
        mine = [event for event in events if event["message"] == scenario]
        assert len(mine) == 1
        assert mine[0]["metadata"]["namespace"] == "default"
        assert "namespace" not in mine[0]["involvedObject"]
    finally:
        await read.kubectl("delete", "configmap", scenario, "-n", "default")
