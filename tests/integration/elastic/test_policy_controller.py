"""The ResourcePolicy controller against a real member cluster (scheduler, controllers, kwok).

Each test builds its own "site" of kwok nodes: ``local`` nodes that hold few pods (their
``pods`` capacity), ``cloud`` nodes and one ``virtual`` node, labelled per unit, so the units
have a real meaning: the scheduler runs out of room on local nodes and spills to the next
unit the released pod allows. The webhook is not part of this test: its hold-mode admission
(``units.admit(hold=True)``: the ``elastic.edgefleet.io/policy`` annotation and our scheduling
gate; nothing else for a pod without its own required node affinity) is in the Deployments'
pod templates. The ReplicaSet controller, the scheduler and kwok are the real ones, so
scale-in order is the ReplicaSet controller's reading of our pod-deletion-cost.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import prometheus_client
import pytest

from edge_agent.cluster.elastic.events import EventRecorder, EventSettings
from edge_agent.cluster.elastic.policy_controller import (
    PolicyController,
    PolicyControllerSettings,
)
from edge_agent.cluster.member_api import MemberApi
from edge_agent.cluster.member_watch import Informer, InformerSettings
from fleet_model.elastic.units import DELETION_COST, WAITING_GATE
from tests.harness import member
from tests.harness.waiting import eventually, eventually_async

pytestmark = [pytest.mark.kube, pytest.mark.timeout(600)]

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[3]
CRDS = REPO / "packaging" / "kubernetes" / "elastic" / "40-elastic-crds.yaml"
GROUP = "elastic.edgefleet.io"
POLICIES = f"/apis/{GROUP}/v1alpha1"
SITE = "edgefleet.test/site"
UNIT = "edgefleet.test/unit"
WITHIN = 180.0
"""Seconds for pods to be placed: rounds of release, scheduling and kwok on two busy cores."""
INFORMERS = InformerSettings(backoff_initial=0.05, backoff_max=0.5)
SETTINGS = PolicyControllerSettings(status_min_interval=0.2, backoff_max=2.0)
"""Status rate limit lowered so a test sees the final status soon; the rules are the same."""
EVENTS = EventSettings(repeat_write_seconds=0.0)
"""Every repeat of an Event written at once, so a test reads its count (the recorder's own
aggregation is tested with the autoscaler's driver); still one object per message."""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[member.MemberCluster]:
    # No harness nodes: every node belongs to a test's site and to one unit of it.
    with member.running_member(
        "policy", tmp_path_factory.mktemp("member-policy"), member.MemberSpec(nodes=0)
    ) as started:
        started.kubectl("apply", "-f", str(CRDS))
        started.kubectl(
            "wait",
            "--for=condition=Established",
            f"crd/resourcepolicies.{GROUP}",
            "--timeout=120s",
        )
        eventually(
            lambda: started.kubectl("get", "resourcepolicies", "-A", check=False),
            lambda done: done.returncode == 0,
            what="resourcepolicies in discovery",
            within=60.0,
            every=0.5,
        )
        yield started


@contextlib.asynccontextmanager
async def running_controller(
    api: MemberApi, *, registry: prometheus_client.CollectorRegistry | None = None
) -> AsyncIterator[PolicyController]:
    """Three informers and the controller, as the agent runs them, for the block."""
    pods = Informer(api, "/api/v1/pods", settings=INFORMERS)
    nodes = Informer(api, "/api/v1/nodes", settings=INFORMERS)
    policies = Informer(api, f"{POLICIES}/resourcepolicies", settings=INFORMERS)
    controller = PolicyController(
        api=api,
        pods=pods,
        nodes=nodes,
        policies=policies,
        settings=SETTINGS,
        registry=registry,
        events=EventRecorder(api, settings=EVENTS),
    )
    async with asyncio.TaskGroup() as group:
        tasks = [
            group.create_task(informer.run(), name=f"test.informer.{name}")
            for name, informer in (("pods", pods), ("nodes", nodes), ("policies", policies))
        ]
        tasks.append(group.create_task(controller.run(), name="test.elastic.policy"))
        try:
            yield controller
        finally:
            for task in tasks:
                task.cancel()


async def until(
    probe: Callable[[], T], check: Callable[[T], bool], *, what: str, within: float = WITHIN
) -> T:
    """``eventually`` for a blocking probe, without blocking the loop the controller runs in."""
    return await eventually_async(
        lambda: asyncio.to_thread(probe), check, what=what, within=within, every=0.25
    )


async def kubectl(cluster: member.MemberCluster, *args: str, stdin: str | None = None) -> str:
    return (await asyncio.to_thread(cluster.kubectl, *args, stdin=stdin)).stdout


# ---------------------------------------------------------------- the sites


def make_site(
    cluster: member.MemberCluster,
    *,
    local: int = 2,
    local_pods: int = 2,
    cloud: int = 2,
    cloud_pods: int = 5,
    virtual: int = 1,
) -> str:
    """Nodes ``<site>-<unit>-<i>`` labelled with the site and their unit; the site's name."""
    site = f"s{secrets.token_hex(3)}"
    made = []
    for unit, count, pods in (
        ("local", local, local_pods),
        ("cloud", cloud, cloud_pods),
        ("virtual", virtual, 110),
    ):
        for index in range(count):
            name = f"{site}-{unit}-{index}"
            cluster.add_node(
                name,
                labels={SITE: site, UNIT: unit},
                capacity={"cpu": "4", "memory": "8Gi", "pods": str(pods)},
            )
            made.append(name)
    cluster.wait_nodes_ready(made, within=120.0)
    return site


def unit_of(node: str | None) -> str:
    return "pending" if not node else node.split("-")[1]


def namespace(cluster: member.MemberCluster) -> str:
    name = f"rp-{secrets.token_hex(3)}"
    cluster.api("POST", "/api/v1/namespaces", {"metadata": {"name": name}})
    # The ServiceAccount admission plugin refuses pods until the namespace's account exists.
    eventually(
        lambda: cluster.plane.request("GET", f"/api/v1/namespaces/{name}/serviceaccounts/default")[
            0
        ],
        lambda status: status == 200,
        what=f"the default service account of {name}",
        within=60.0,
        every=0.25,
    )
    return name


def policy(
    name: str,
    ns: str,
    site: str,
    *,
    app: str = "web",
    cloud_max: int | None = 4,
    units: tuple[str, ...] = ("local", "cloud", "virtual"),
    **spec: Any,
) -> str:
    made = []
    for unit in units:
        entry: dict[str, Any] = {"name": unit, "nodeSelector": {SITE: site, UNIT: unit}}
        if unit == "cloud" and cloud_max is not None:
            entry["max"] = cloud_max
        made.append(entry)
    body = {
        "apiVersion": f"{GROUP}/v1alpha1",
        "kind": "ResourcePolicy",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "selector": {"matchLabels": {"app": app}},
            "units": made,
            "matchLabelKeys": ["pod-template-hash"],
            **spec,
        },
    }
    return json.dumps(body)


def deployment(
    name: str, ns: str, *, replicas: int, policy_name: str, app: str = "web", surge: str = "25%"
) -> str:
    body = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": app}},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": surge, "maxUnavailable": 0},
            },
            "template": {
                "metadata": {
                    "labels": {"app": app},
                    # What the webhook's hold-mode admission adds (units.admit(hold=True)).
                    "annotations": {"elastic.edgefleet.io/policy": policy_name},
                },
                "spec": {
                    "schedulingGates": [{"name": WAITING_GATE}],
                    "terminationGracePeriodSeconds": 0,
                    "containers": [{"name": "main", "image": f"example/{app}:1"}],
                },
            },
        },
    }
    return json.dumps(body)


class Pods(list[dict[str, Any]]):
    """Pod objects that print as a summary (a failed wait shows it, not pages of JSON)."""

    def __repr__(self) -> str:
        names = {p["metadata"]["name"]: unit_of(p["spec"].get("nodeName")) for p in self}
        return f"Pods({placement(self)}, gated={gated(self)}, {names})"


def pods_of(cluster: member.MemberCluster, ns: str, app: str = "web") -> Pods:
    """The app's live pods (terminating ones are on their way out)."""
    items = cluster.api("GET", f"/api/v1/namespaces/{ns}/pods?labelSelector=app%3D{app}")["items"]
    return Pods(p for p in items if p["metadata"].get("deletionTimestamp") is None)


def placement(pods: list[dict[str, Any]]) -> dict[str, int]:
    return dict(Counter(unit_of(p["spec"].get("nodeName")) for p in pods))


def gated(pods: list[dict[str, Any]]) -> int:
    return sum(
        1
        for p in pods
        if any(g.get("name") == WAITING_GATE for g in p["spec"].get("schedulingGates") or ())
    )


def policy_object(cluster: member.MemberCluster, ns: str, name: str) -> dict[str, Any]:
    found: dict[str, Any] = cluster.api(
        "GET", f"{POLICIES}/namespaces/{ns}/resourcepolicies/{name}"
    )
    return found


def unit_counts(status: dict[str, Any]) -> dict[str, int]:
    return {u["name"]: u["pods"] for u in status.get("units") or ()}


def condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    for found in status.get("conditions") or ():
        if found.get("type") == kind:
            return dict(found)
    return {}


async def until_placed(
    cluster: member.MemberCluster, ns: str, expected: dict[str, int], app: str = "web"
) -> list[dict[str, Any]]:
    return await until(
        lambda: pods_of(cluster, ns, app),
        lambda pods: placement(pods) == expected,
        what=f"pods of {app} placed {expected}",
    )


async def until_status(
    cluster: member.MemberCluster, ns: str, name: str, check: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    return await until(
        lambda: policy_object(cluster, ns, name).get("status") or {},
        check,
        what=f"the status of policy {name}",
    )


def policy_events(cluster: member.MemberCluster, ns: str, name: str) -> list[dict[str, Any]]:
    """The Events about ResourcePolicy ``name`` (``kubectl describe resourcepolicy`` shows)."""
    selector = f"involvedObject.kind%3DResourcePolicy%2CinvolvedObject.name%3D{name}"
    found: list[dict[str, Any]] = cluster.api(
        "GET", f"/api/v1/namespaces/{ns}/events?fieldSelector={selector}"
    )["items"]
    return found


def told(events: list[dict[str, Any]], reason: str) -> dict[str, int]:
    """Message -> count of the Events with ``reason``."""
    return {e["message"]: e["count"] for e in events if e["reason"] == reason}


async def until_told(
    cluster: member.MemberCluster,
    ns: str,
    name: str,
    check: Callable[[list[dict[str, Any]]], bool],
) -> list[dict[str, Any]]:
    return await until(
        lambda: policy_events(cluster, ns, name), check, what=f"the events of policy {name}"
    )


# ---------------------------------------------------------------- the tests


async def test_units_fill_in_order_and_empty_in_reverse(
    cluster: member.MemberCluster, api: MemberApi
) -> None:
    site = make_site(cluster)
    ns = namespace(cluster)
    cluster.kubectl("apply", "-f", "-", stdin=policy("web", ns, site))
    registry = prometheus_client.CollectorRegistry()
    async with running_controller(api, registry=registry):
        await kubectl(
            cluster, "apply", "-f", "-", stdin=deployment("web", ns, replicas=10, policy_name="web")
        )
        # Two local nodes hold 4 pods; the cloud unit takes 4 (its max); the rest is virtual.
        pods = await until_placed(cluster, ns, {"local": 4, "cloud": 4, "virtual": 2})
        status = await until_status(
            cluster, ns, "web", lambda s: unit_counts(s) == {"local": 4, "cloud": 4, "virtual": 2}
        )
        assert status["units"][1] == {"name": "cloud", "pods": 4, "max": 4}
        assert condition(status, "Accepted")["status"] == "True"
        # What it did, as Events on the policy: ten releases in few Events (one per choice of
        # units, its count the pods), and the cloud unit at its max once.
        events = await until_told(
            cluster, ns, "web", lambda found: sum(told(found, "Released").values()) == 10
        )
        choices = told(events, "Released")
        assert len(choices) <= 2
        assert (
            choices.get(
                "pods released from the gate to units local, cloud, virtual "
                "(preferred in that order)",
                0,
            )
            >= 4
        )
        at_max = told(events, "UnitAtMax")
        assert len(at_max) == 1
        ((message, count),) = at_max.items()
        assert message.startswith("unit cloud holds 4 pods with pod-template-hash=")
        assert message.endswith("its max is 4: new pods go to local, virtual")
        assert count == 1
        assert {e["type"] for e in events} == {"Normal"}
        assert {e["source"]["component"] for e in events} == {"edgefleet-elastic"}
        (group,) = status["groups"]
        assert set(group["labels"]) == {"pod-template-hash"}
        assert (group["outside"], group["waiting"]) == (0, 0)
        # Every pod carries its cost: local above cloud above virtual.
        pods = await until(
            lambda: pods_of(cluster, ns),
            lambda found: all(DELETION_COST in p["metadata"].get("annotations", {}) for p in found),
            what="a pod-deletion-cost on every pod",
        )
        costs: dict[str, list[int]] = {}
        for pod in pods:
            unit = unit_of(pod["spec"]["nodeName"])
            costs.setdefault(unit, []).append(int(pod["metadata"]["annotations"][DELETION_COST]))
        assert min(costs["local"]) > max(costs["cloud"])
        assert min(costs["cloud"]) > max(costs["virtual"])
        # Scale in: the virtual pods go first, then the cloud ones.
        await kubectl(cluster, "scale", "deployment/web", "-n", ns, "--replicas=8")
        await until_placed(cluster, ns, {"local": 4, "cloud": 4})
        await kubectl(cluster, "scale", "deployment/web", "-n", ns, "--replicas=3")
        await until_placed(cluster, ns, {"local": 3})
        await until_status(
            cluster, ns, "web", lambda s: unit_counts(s) == {"local": 3, "cloud": 0, "virtual": 0}
        )
    released = registry.get_sample_value("edge_agent_elastic_policy_releases_total")
    assert released == 10
    # No release was refused: none was tried twice on a stale cache.
    assert registry.get_sample_value(
        "edge_agent_elastic_policy_errors_total", {"kind": "release"}
    ) in (None, 0.0)
    assert (registry.get_sample_value("edge_agent_elastic_policy_cost_patches_total") or 0) >= 10


async def test_a_second_rollout_counts_on_its_own(
    cluster: member.MemberCluster, api: MemberApi
) -> None:
    site = make_site(cluster, cloud_pods=5)  # the cloud holds both rollouts' pods: 10
    ns = namespace(cluster)
    cluster.kubectl("apply", "-f", "-", stdin=policy("web", ns, site))
    async with running_controller(api):
        await kubectl(
            cluster,
            "apply",
            "-f",
            "-",
            stdin=deployment("web", ns, replicas=8, policy_name="web", surge="100%"),
        )
        first = await until_placed(cluster, ns, {"local": 4, "cloud": 4})
        old_hash = first[0]["metadata"]["labels"]["pod-template-hash"]
        # A template change: 8 new pods at once beside the 8 old ones (maxSurge 100%). Local is
        # full of old pods; the new group has nothing in the cloud yet, so 4 go there, not 0.
        await kubectl(
            cluster,
            "patch",
            "deployment/web",
            "-n",
            ns,
            "--type=merge",
            "-p",
            json.dumps({"spec": {"template": {"metadata": {"labels": {"rollout": "2"}}}}}),
        )
        pods = await until(
            lambda: pods_of(cluster, ns),
            lambda found: (
                len(found) == 8
                and all(p["metadata"]["labels"]["pod-template-hash"] != old_hash for p in found)
                and gated(found) == 0
                and all(p["spec"].get("nodeName") for p in found)
            ),
            what="the second rollout done",
        )
        assert placement(pods) == {"cloud": 4, "virtual": 4}
        new_hash = pods[0]["metadata"]["labels"]["pod-template-hash"]
        status = await until_status(
            cluster, ns, "web", lambda s: unit_counts(s) == {"local": 0, "cloud": 4, "virtual": 4}
        )
        (group,) = status["groups"]
        assert group["labels"] == {"pod-template-hash": new_hash}
        assert [u["pods"] for u in group["units"]] == [0, 4, 4]


async def test_timeout_opens_the_next_unit_for_a_stuck_pod(
    cluster: member.MemberCluster, api: MemberApi
) -> None:
    site = make_site(cluster, local=1, local_pods=2, cloud=1, cloud_pods=10, virtual=0)
    ns = namespace(cluster)
    cluster.kubectl(
        "apply",
        "-f",
        "-",
        stdin=policy(
            "web",
            ns,
            site,
            cloud_max=None,
            units=("local", "cloud"),
            whenTryNextUnits={"policy": "TimeoutOrExceedMax", "timeoutSeconds": 3},
        ),
    )
    async with running_controller(api):
        await kubectl(
            cluster, "apply", "-f", "-", stdin=deployment("web", ns, replicas=3, policy_name="web")
        )

        def unschedulable(pods: list[dict[str, Any]]) -> list[str]:
            return [
                p["metadata"]["name"]
                for p in pods
                if any(
                    c.get("type") == "PodScheduled" and c.get("reason") == "Unschedulable"
                    for c in p.get("status", {}).get("conditions") or ()
                )
            ]

        # Only local is open: the third pod does not fit there and stays unschedulable...
        stuck = await until(
            lambda: unschedulable(pods_of(cluster, ns)),
            lambda names: len(names) == 1,
            what="one pod unschedulable on the local unit",
        )
        # ...until its timeout: it is deleted, and its replacement goes to the cloud.
        pods = await until_placed(cluster, ns, {"local": 2, "cloud": 1})
        assert stuck[0] not in {p["metadata"]["name"] for p in pods}
        status = await until_status(
            cluster, ns, "web", lambda s: unit_counts(s) == {"local": 2, "cloud": 1}
        )
        assert status["groups"][0]["openedThrough"] == "cloud"


async def test_timeouts_open_three_units_one_after_the_other_and_say_so(
    cluster: member.MemberCluster, api: MemberApi
) -> None:
    """Three units open in order by timeouts, also past a first unit without max.

    Local (no max) holds 1 pod, cloud (no max) 1, virtual the rest: every released pod's unit
    is local, yet a pod stuck with local and cloud open opens virtual.
    """
    site = make_site(cluster, local=1, local_pods=1, cloud=1, cloud_pods=1, virtual=1)
    ns = namespace(cluster)
    cluster.kubectl(
        "apply",
        "-f",
        "-",
        stdin=policy(
            "web",
            ns,
            site,
            cloud_max=None,
            whenTryNextUnits={"policy": "TimeoutOrExceedMax", "timeoutSeconds": 3},
        ),
    )
    async with running_controller(api):
        await kubectl(
            cluster, "apply", "-f", "-", stdin=deployment("web", ns, replicas=3, policy_name="web")
        )
        await until_placed(cluster, ns, {"local": 1, "cloud": 1, "virtual": 1})
        status = await until_status(
            cluster, ns, "web", lambda s: unit_counts(s) == {"local": 1, "cloud": 1, "virtual": 1}
        )
        assert status["groups"][0]["openedThrough"] == "virtual"
        events = await until_told(
            cluster, ns, "web", lambda found: len(told(found, "UnitOpened")) == 2
        )
        opened = told(events, "UnitOpened")
        assert sorted(m.rsplit(": ", 1)[1] for m in opened) == [
            "unit cloud opened",
            "unit virtual opened",
        ]
        assert all("stayed unschedulable for 3s" in m for m in opened)
        assert set(opened.values()) == {1}
        deleted = told(events, "StuckPodDeleted")
        assert sum(deleted.values()) >= 2
        assert all("so their owners recreate them" in m for m in deleted)


async def test_invalid_and_overlapping_policies_say_so_and_others_keep_working(
    cluster: member.MemberCluster, api: MemberApi
) -> None:
    site = make_site(cluster, local=1, local_pods=4, cloud=1, virtual=0)
    ns = namespace(cluster)
    # No units at all: the CRD's schema refuses it at once.
    refused = await asyncio.to_thread(
        cluster.kubectl,
        "apply",
        "-f",
        "-",
        stdin=policy("none", ns, site, units=()),
        check=False,
    )
    assert refused.returncode != 0
    assert "spec.units" in refused.stderr
    # A selector the schema lets through but that is no label selector: In without values.
    bad_selector = json.loads(policy("badsel", ns, site, app="broken"))
    bad_selector["spec"]["selector"] = {"matchExpressions": [{"key": "app", "operator": "In"}]}
    # A unit whose node selector has a key that is no label key.
    bad_unit = json.loads(policy("badunit", ns, site, app="held"))
    bad_unit["spec"]["units"][0]["nodeSelector"] = {"not a key!": "x"}
    for document in (bad_selector, bad_unit):
        cluster.kubectl("apply", "-f", "-", stdin=json.dumps(document))
    cluster.kubectl("apply", "-f", "-", stdin=policy("api", ns, site, app="api"))
    async with running_controller(api):
        sel = await until_status(
            cluster, ns, "badsel", lambda s: condition(s, "Accepted").get("status") == "False"
        )
        accepted = condition(sel, "Accepted")
        assert accepted["reason"] == "InvalidSpec"
        assert "/spec/selector/matchExpressions/0" in accepted["message"]
        assert "units" not in sel
        unit = await until_status(
            cluster, ns, "badunit", lambda s: condition(s, "Accepted").get("status") == "False"
        )
        assert "/spec/units/0/nodeSelector" in condition(unit, "Accepted")["message"]
        # The invalid policy's pods wait for it to be fixed; the valid policy's pods run.
        await kubectl(
            cluster,
            "apply",
            "-f",
            "-",
            stdin=deployment("held", ns, replicas=2, policy_name="badunit", app="held"),
        )
        await kubectl(
            cluster,
            "apply",
            "-f",
            "-",
            stdin=deployment("api", ns, replicas=2, policy_name="api", app="api"),
        )
        await until_placed(cluster, ns, {"local": 2}, app="api")
        held = await until(
            lambda: pods_of(cluster, ns, "held"),
            lambda pods: len(pods) == 2,
            what="the held deployment's pods",
        )
        assert gated(held) == 2
        # Fixed: accepted, and its pods are released.
        await kubectl(cluster, "apply", "-f", "-", stdin=policy("badunit", ns, site, app="held"))
        await until_placed(cluster, ns, {"local": 2}, app="held")
        await until_status(
            cluster,
            ns,
            "badunit",
            lambda s: (
                condition(s, "Accepted").get("status") == "True"
                and unit_counts(s) == {"local": 2, "cloud": 0, "virtual": 0}
            ),
        )
        # A younger policy selecting the api pods too: it says who governs them.
        await kubectl(cluster, "apply", "-f", "-", stdin=policy("api-2", ns, site, app="api"))
        young = await until_status(
            cluster, ns, "api-2", lambda s: condition(s, "Overlapping").get("status") == "True"
        )
        assert "api (2 pods)" in condition(young, "Overlapping")["message"]
        assert unit_counts(young) == {"local": 0, "cloud": 0, "virtual": 0}
        older = policy_object(cluster, ns, "api")["status"]
        assert condition(older, "Overlapping")["status"] == "False"
        # The broken selector's policy is still refused, and said so once.
        assert (
            condition(policy_object(cluster, ns, "badsel")["status"], "Accepted")[
                "lastTransitionTime"
            ]
            == accepted["lastTransitionTime"]
        )
        # As Warnings, each once however many passes saw it (not one per pass).
        overlap = await until_told(
            cluster, ns, "api-2", lambda found: bool(told(found, "Overlapping"))
        )
        assert told(overlap, "Overlapping") == {
            "pods this policy selects are governed by older policies of the namespace: api; "
            "it leaves those pods to them": 1
        }
        assert {e["type"] for e in overlap} == {"Warning"}
        for name, where in (
            ("badsel", "/spec/selector/matchExpressions/0"),
            ("badunit", "/spec/units/0/nodeSelector"),
        ):
            ((message, count),) = told(policy_events(cluster, ns, name), "InvalidSpec").items()
            assert message.startswith("policy refused: ")
            assert where in message
            assert count == 1
        assert told(policy_events(cluster, ns, "api"), "Overlapping") == {}


async def test_a_restarted_controller_catches_up(
    cluster: member.MemberCluster, api: MemberApi
) -> None:
    site = make_site(cluster)
    ns = namespace(cluster)
    cluster.kubectl("apply", "-f", "-", stdin=policy("web", ns, site))
    async with running_controller(api):
        await kubectl(
            cluster, "apply", "-f", "-", stdin=deployment("web", ns, replicas=4, policy_name="web")
        )
        await until_placed(cluster, ns, {"local": 4})
    # The controller is down: new pods are held at the gate and stay there.
    await kubectl(cluster, "scale", "deployment/web", "-n", ns, "--replicas=10")
    waiting = await until(
        lambda: pods_of(cluster, ns),
        lambda pods: len(pods) == 10,
        what="ten pods of web",
    )
    assert placement(waiting) == {"local": 4, "pending": 6}
    assert gated(waiting) == 6
    async with running_controller(api):
        await until_placed(cluster, ns, {"local": 4, "cloud": 4, "virtual": 2})
        await until_status(
            cluster, ns, "web", lambda s: unit_counts(s) == {"local": 4, "cloud": 4, "virtual": 2}
        )
        await until(
            lambda: pods_of(cluster, ns),
            lambda found: all(DELETION_COST in p["metadata"].get("annotations", {}) for p in found),
            what="a pod-deletion-cost on every pod",
        )
