"""``plan_pass``: the writes of one ResourcePolicy controller pass, from cached objects.

Sans-IO: objects as the informers hold them (by ``(namespace, name)``), a ``Memory`` of what the
controller wrote, a time; the plan's patches are applied with jsonpatch to check what the API
server would store.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import jsonpatch
import pytest

from edge_agent.cluster.elastic.policy_controller import (
    Memory,
    Opened,
    PassPlan,
    PolicyControllerSettings,
    _pods_read,
    _Sent,
    plan_pass,
)
from edge_agent.cluster.member_watch import Key
from fleet_model.elastic.units import (
    ANNOTATION_POLICY,
    ANNOTATION_THROUGH,
    DELETION_COST,
    WAITING_GATE,
)
from fleet_model.times import format_time

T0 = 1_800_000_000.0
NS = "shop"
SETTINGS = PolicyControllerSettings()
LOCAL, CLOUD, VIRTUAL = {"site": "dc1"}, {"pool": "cloud"}, {"type": "virtual-kubelet"}
UNITS = [
    {"name": "local", "nodeSelector": LOCAL},
    {"name": "cloud", "nodeSelector": CLOUD, "max": 4},
    {"name": "virtual", "nodeSelector": VIRTUAL},
]


def node(name: str, labels: Mapping[str, str]) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": dict(labels)}}


NODES = {
    ("", n["metadata"]["name"]): n
    for n in (node("local-1", LOCAL), node("cloud-1", CLOUD), node("virtual-1", VIRTUAL))
}


def policy(
    name: str = "web",
    *,
    units: Any = None,
    created: str = "2027-01-15T08:00:00Z",
    status: dict[str, Any] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "elastic.edgefleet.io/v1alpha1",
        "kind": "ResourcePolicy",
        "metadata": {
            "name": name,
            "namespace": NS,
            "uid": f"uid-{name}",
            "generation": 2,
            "creationTimestamp": created,
        },
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "units": UNITS if units is None else units,
            **spec,
        },
    }
    if status is not None:
        obj["status"] = status
    return obj


def pod(
    name: str,
    *,
    created: float = T0,
    gated: bool = False,
    node: str | None = None,
    owned: bool = True,
    annotations: Mapping[str, str] | None = None,
    unschedulable_since: float | None = None,
    labels: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "name": name,
        "namespace": NS,
        "uid": f"uid-{name}",
        "labels": dict(labels or {"app": "web", "pod-template-hash": "h1"}),
        "creationTimestamp": format_time(created),
        "annotations": {ANNOTATION_POLICY: "web", **(annotations or {})},
    }
    if owned:
        metadata["ownerReferences"] = [
            {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-h1", "controller": True}
        ]
    spec: dict[str, Any] = {"containers": [{"name": "c", "image": "i"}]}
    if gated:
        spec["schedulingGates"] = [{"name": WAITING_GATE}]
    if node is not None:
        spec["nodeName"] = node
    out: dict[str, Any] = {"metadata": metadata, "spec": spec, "status": {"phase": "Pending"}}
    if unschedulable_since is not None:
        out["status"]["conditions"] = [
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "lastTransitionTime": format_time(unschedulable_since),
            }
        ]
    return out


def keyed(*objects: dict[str, Any]) -> dict[Key, dict[str, Any]]:
    return {(o["metadata"].get("namespace", ""), o["metadata"]["name"]): o for o in objects}


def plan(
    policies: dict[Key, dict[str, Any]],
    pods: dict[Key, dict[str, Any]],
    *,
    memory: Memory | None = None,
    now: float = T0 + 5,
    settings: PolicyControllerSettings = SETTINGS,
) -> PassPlan:
    return plan_pass(
        policies=policies,
        pods=pods,
        nodes=NODES,
        memory=memory or Memory(),
        now=now,
        settings=settings,
    )


def applied(obj: dict[str, Any], patch: list[dict[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = jsonpatch.apply_patch(copy.deepcopy(obj), patch)
    return result


def gated_pods(count: int) -> list[dict[str, Any]]:
    return [pod(f"p{i:02}", created=T0 + i, gated=True) for i in range(count)]


# ---------------------------------------------------------------- releases


def test_releases_the_oldest_until_a_unit_with_max_could_be_overfilled() -> None:
    pods = gated_pods(10)
    result = plan(keyed(policy()), keyed(*pods))
    # cloud has max 4: four pods in flight could all land there, so the fifth waits.
    assert [r.name for r in result.releases] == ["p00", "p01", "p02", "p03"]
    first = result.releases[0]
    assert first.patch[0] == {"op": "test", "path": "/metadata/uid", "value": "uid-p00"}
    released = applied(pods[0], first.patch)
    assert "schedulingGates" not in released["spec"] or not released["spec"]["schedulingGates"]
    preferred = released["spec"]["affinity"]["nodeAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ]
    assert [p["preference"]["matchExpressions"][0]["key"] for p in preferred] == [
        "site",
        "pool",
        "type",
    ]
    assert released["metadata"]["annotations"]["elastic.edgefleet.io/unit"] == "local"
    # The uid test stops a patch meant for another pod of the same name.
    other = copy.deepcopy(pods[0])
    other["metadata"]["uid"] = "someone-else"
    with pytest.raises(jsonpatch.JsonPatchTestFailed):
        applied(other, first.patch)


def test_released_pods_the_cache_has_not_seen_are_not_released_again_nor_replaced() -> None:
    pods = gated_pods(10)
    first = plan(keyed(policy()), keyed(*pods))
    memory = Memory()
    for release in first.releases:
        index = int(release.name[1:])
        memory.released[(NS, release.name)] = applied(pods[index], release.patch)
    # The cache still shows all ten at the gate: the four count as in flight, nothing else goes.
    again = plan(keyed(policy()), keyed(*pods), memory=memory)
    assert again.releases == ()
    # Once they are bound (three local, one cloud), the next four go.
    bound = [
        {**p, "spec": {**applied(p, r.patch)["spec"], "nodeName": n}}
        for p, r, n in zip(
            pods[:4], first.releases, ["local-1", "local-1", "local-1", "cloud-1"], strict=True
        )
    ]
    cache = keyed(*bound, *pods[4:])
    memory.prune(pods=cache, policies=keyed(policy()), now=T0 + 6, settle=30)
    assert memory.released == {}
    assert [r.name for r in plan(keyed(policy()), cache, memory=memory).releases] == [
        "p04",
        "p05",
        "p06",
    ]


def test_a_release_refused_waits_for_its_back_off() -> None:
    pods = gated_pods(2)
    memory = Memory(refused={("release", NS, "p00"): (1, T0 + 9)})
    result = plan(keyed(policy()), keyed(*pods), memory=memory, now=T0 + 5)
    assert [r.name for r in result.releases] == ["p01"]
    assert result.wake_at == T0 + 9
    later = plan(keyed(policy()), keyed(*pods), memory=memory, now=T0 + 10)
    assert [r.name for r in later.releases] == ["p00", "p01"]


def test_the_release_bound_truncates_the_pass() -> None:
    units = [{"name": "local", "nodeSelector": LOCAL}]  # no max: no waiting for pods in flight
    settings = PolicyControllerSettings(max_releases=3)
    result = plan(keyed(policy(units=units)), keyed(*gated_pods(5)), settings=settings)
    assert len(result.releases) == 3
    assert result.truncated
    assert not plan(keyed(policy(units=units)), keyed(*gated_pods(2)), settings=settings).truncated


def test_an_invalid_policy_holds_its_pods_and_another_namespace_still_works() -> None:
    broken = policy(units=[])
    fine = policy("api")
    fine["metadata"]["namespace"] = "other"
    moved = pod("q", gated=True, created=T0 - 600)
    moved["metadata"]["namespace"] = "other"
    moved["metadata"]["annotations"][ANNOTATION_POLICY] = "api"
    result = plan(keyed(broken, fine), keyed(*gated_pods(2), moved), now=T0 + 60)
    assert [(r.namespace, r.name) for r in result.releases] == [("other", "q")]
    assert result.invalid == 1
    (invalid,) = [s for s in result.statuses if s.name == "web"]
    assert not invalid.valid
    (accepted,) = invalid.status["conditions"]
    assert accepted["type"] == "Accepted"
    assert accepted["status"] == "False"
    assert accepted["reason"] == "InvalidSpec"
    assert "/spec/units" in accepted["message"]
    assert "non-empty" in accepted["message"]


# ---------------------------------------------------------------- orphans


def test_a_pod_held_for_a_deleted_policy_is_released_after_the_grace() -> None:
    orphan = pod("o", gated=True, created=T0)
    soon = plan({}, keyed(orphan), now=T0 + 10)
    assert soon.releases == ()
    assert soon.wake_at == T0 + SETTINGS.orphan_grace_seconds
    later = plan({}, keyed(orphan), now=T0 + SETTINGS.orphan_grace_seconds)
    (release,) = later.releases
    released = applied(orphan, release.patch)
    assert released["spec"]["schedulingGates"] == []
    assert "affinity" not in released["spec"]
    # Its policy there but invalid: it keeps waiting for the fix.
    assert plan(keyed(policy(units=[])), keyed(orphan), now=T0 + 3600).releases == ()


# ---------------------------------------------------------------- deletion costs


def test_costs_go_to_bound_pods_only_and_are_not_repeated() -> None:
    pods = [
        pod("a", node="local-1", created=T0),
        pod("b", node="cloud-1", created=T0 + 1),
        pod("c", node="virtual-1", created=T0 + 2),
        pod("d", created=T0 + 3),  # released, not bound yet
    ]
    result = plan(keyed(policy()), keyed(*pods))
    costs = {c.name: c.cost for c in result.costs}
    assert set(costs) == {"a", "b", "c"}
    assert costs["a"] > costs["b"] > costs["c"] > 0
    memory = Memory(
        costs={(NS, c.name): _Sent(uid=c.uid, value=c.cost, at=T0) for c in result.costs}
    )
    assert plan(keyed(policy()), keyed(*pods), memory=memory).costs == ()
    # Once the cache shows them the memory goes, and nothing is written either.
    shown = [
        {**p, "metadata": {**p["metadata"], "annotations": {DELETION_COST: str(costs[n])}}}
        for p, n in zip(pods[:3], "abc", strict=True)
    ]
    memory.prune(pods=keyed(*shown), policies=keyed(policy()), now=T0 + 6, settle=30)
    assert memory.costs == {}
    assert plan(keyed(policy()), keyed(*shown)).costs == ()


# ---------------------------------------------------------------- status


def test_status_is_written_when_it_differs_and_not_more_often_than_allowed() -> None:
    pods = [pod("a", node="local-1"), pod("b", node="cloud-1")]
    first = plan(keyed(policy()), keyed(*pods))
    (write,) = first.statuses
    assert write.valid
    assert [(u["name"], u["pods"]) for u in write.status["units"]] == [
        ("local", 1),
        ("cloud", 1),
        ("virtual", 0),
    ]
    assert write.patch == {"status": {**write.status, "groupsOmitted": None}}
    # Stored as written: nothing to do.
    stored = policy(status=write.status)
    assert plan(keyed(stored), keyed(*pods)).statuses == ()
    # It changes again right after a write: held back until the interval is over.
    memory = Memory(status_at={(NS, "web"): T0 + 5})
    more = [*pods, pod("c", node="virtual-1")]
    held = plan(keyed(stored), keyed(*more), memory=memory, now=T0 + 5.5)
    assert held.statuses == ()
    assert held.wake_at == T0 + 5 + SETTINGS.status_min_interval
    (later,) = plan(keyed(stored), keyed(*more), memory=memory, now=T0 + 7).statuses
    assert later.status["units"][2]["pods"] == 1


def test_an_invalid_policy_drops_the_units_it_had() -> None:
    valid = plan(keyed(policy()), keyed(pod("a", node="local-1"))).statuses[0].status
    broken = policy(units=[], status=valid)
    (write,) = plan(keyed(broken), {}).statuses
    assert write.patch["status"]["units"] is None
    assert write.patch["status"]["groups"] is None
    accepted = [c for c in write.status["conditions"] if c["type"] == "Accepted"]
    assert accepted[0]["status"] == "False"


def test_the_younger_of_two_overlapping_policies_reports_the_overlap() -> None:
    old = policy("old", created="2027-01-01T00:00:00Z")
    young = policy("young", created="2027-02-01T00:00:00Z")
    pods = [pod("a", node="local-1")]
    statuses = {s.name: s.status for s in plan(keyed(old, young), keyed(*pods)).statuses}

    def overlapping(status: dict[str, Any]) -> dict[str, Any]:
        return next(c for c in status["conditions"] if c["type"] == "Overlapping")

    assert overlapping(statuses["old"])["status"] == "False"
    assert overlapping(statuses["young"])["status"] == "True"
    assert "old (1 pods)" in overlapping(statuses["young"])["message"]
    assert statuses["young"]["units"][0]["pods"] == 0
    assert statuses["old"]["units"][0]["pods"] == 1


# ---------------------------------------------------------------- TimeoutOrExceedMax


TIMEOUT = {"policy": "TimeoutOrExceedMax", "timeoutSeconds": 10}
TWO_UNITS = [
    {"name": "local", "nodeSelector": LOCAL},
    {"name": "cloud", "nodeSelector": CLOUD},
]


def stuck(name: str, annotations: Mapping[str, str] | None = None, **kwargs: Any) -> dict[str, Any]:
    return pod(
        name,
        annotations={"elastic.edgefleet.io/unit": "local", **(annotations or {})},
        unschedulable_since=T0,
        **kwargs,
    )


def test_a_pod_stuck_past_the_timeout_is_deleted_and_the_next_unit_opened() -> None:
    policies = keyed(policy(units=TWO_UNITS, whenTryNextUnits=TIMEOUT))
    running = pod("a", node="local-1")
    early = plan(policies, keyed(running, stuck("s")), now=T0 + 5)
    assert early.deletions == ()
    assert early.wake_at == T0 + 10
    late = plan(policies, keyed(running, stuck("s")), now=T0 + 10)
    assert [(d.name, d.uid) for d in late.deletions] == [("s", "uid-s")]
    (status,) = late.statuses
    assert status.status["groups"][0]["openedThrough"] == "cloud"
    assert late.opened[(NS, "web")] == Opened(uid="uid-web", groups={(): 1})
    # Its replacement, held at the gate, is released with the cloud open.
    memory = Memory(opened=dict(late.opened))
    replacement = pod("r", gated=True)
    (release,) = plan(policies, keyed(running, replacement), memory=memory, now=T0 + 11).releases
    assert release.opened == 1
    terms = applied(replacement, release.patch)["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]["nodeSelectorTerms"]
    assert [t["matchExpressions"][0]["key"] for t in terms] == ["site", "pool"]


def test_an_opening_outlives_the_moment_its_group_has_no_pods() -> None:
    policies = keyed(policy(units=TWO_UNITS, whenTryNextUnits=TIMEOUT))
    late = plan(policies, keyed(stuck("s")), now=T0 + 10)
    assert len(late.deletions) == 1
    memory = Memory(opened=dict(late.opened))
    # The stuck pod is gone from the cache, its replacement not there yet.
    gap = plan(policies, {}, memory=memory, now=T0 + 12)
    assert gap.opened[(NS, "web")] == Opened(uid="uid-web", groups={(): 1}, vanished={(): T0 + 12})
    assert gap.wake_at == T0 + 12 + SETTINGS.settle_seconds
    memory = Memory(opened=dict(gap.opened))
    (release,) = plan(policies, keyed(pod("r", gated=True)), memory=memory, now=T0 + 13).releases
    assert release.opened == 1
    # A group gone for good loses its opening: a new rollout starts from the top.
    over = plan(policies, {}, memory=memory, now=T0 + 12 + SETTINGS.settle_seconds)
    assert over.opened[(NS, "web")] == Opened(uid="uid-web", groups={})


def test_the_opening_survives_a_restart_through_the_status() -> None:
    policies = keyed(policy(units=TWO_UNITS, whenTryNextUnits=TIMEOUT))
    running = pod("a", node="local-1")
    late = plan(policies, keyed(running, stuck("s")), now=T0 + 10)
    restarted = keyed(
        policy(units=TWO_UNITS, whenTryNextUnits=TIMEOUT, status=late.statuses[0].status)
    )
    cache = keyed(running, pod("r", gated=True))
    (release,) = plan(restarted, cache, now=T0 + 11).releases
    assert release.opened == 1


def test_stuck_pods_nobody_recreates_or_released_under_the_opening_stay() -> None:
    policies = keyed(policy(units=TWO_UNITS, whenTryNextUnits=TIMEOUT))
    assert plan(policies, keyed(stuck("bare", owned=False)), now=T0 + 10).deletions == ()
    # Released with every unit open (what the pod says, so a restarted controller knows it
    # too): deleting it widens nothing.
    opened = Memory(opened={(NS, "web"): Opened(uid="uid-web", groups={(): 1})})
    tried_all = stuck("s", annotations={ANNOTATION_THROUGH: "cloud"})
    assert plan(policies, keyed(tried_all), memory=opened, now=T0 + 10).deletions == ()
    assert plan(policies, keyed(tried_all), now=T0 + 10).deletions == ()
    # One released before the opening is deleted.
    tried_local = stuck("s", annotations={ANNOTATION_THROUGH: "local"})
    assert len(plan(policies, keyed(tried_local), memory=opened, now=T0 + 10).deletions) == 1


def test_three_units_open_one_after_the_other_through_released_pods() -> None:
    """Units open one after the other, also past a first unit without max.

    Every released pod's unit is then local: the units it was let try (not its unit) decide
    that a stuck pod opens virtual after cloud.
    """
    policies = keyed(policy(whenTryNextUnits=TIMEOUT))
    memory = Memory(opened={(NS, "web"): Opened(uid="uid-web", groups={(): 1})})
    held = pod("r", gated=True)
    (release,) = plan(policies, keyed(held), memory=memory, now=T0).releases
    assert (release.unit, release.opened) == ("local", 1)
    released = applied(held, release.patch)
    released["status"]["conditions"] = stuck("x")["status"]["conditions"]
    late = plan(policies, keyed(released), memory=memory, now=T0 + 10)
    assert [d.name for d in late.deletions] == ["r"]
    assert late.opened[(NS, "web")] == Opened(uid="uid-web", groups={(): 2})


def test_a_pod_being_deleted_is_left_out_until_the_cache_drops_it() -> None:
    policies = keyed(policy(units=TWO_UNITS, whenTryNextUnits=TIMEOUT))
    memory = Memory(deletions={(NS, "s"): _Sent(uid="uid-s", value=None, at=T0 + 10)})
    result = plan(policies, keyed(stuck("s")), memory=memory, now=T0 + 11)
    assert result.deletions == ()
    assert result.statuses[0].status["units"] == [
        {"name": "local", "pods": 0},
        {"name": "cloud", "pods": 0},
    ]


# ---------------------------------------------------------------- memory and settings


def test_memory_forgets_what_is_gone_or_too_old() -> None:
    memory = Memory(
        released={(NS, "gone"): pod("gone")},
        costs={(NS, "a"): _Sent(uid="uid-a", value=5, at=T0)},
        deletions={(NS, "a"): _Sent(uid="uid-a", value=None, at=T0)},
        statuses={(NS, "web"): _Sent(uid="uid-web", value={"units": []}, at=T0)},
        status_at={(NS, "gone"): T0},
        opened={(NS, "web"): Opened(uid="old-uid", groups={(): 1})},
        refused={("status", NS, "web"): (1, T0), ("cost", NS, "gone"): (1, T0)},
    )
    memory.prune(pods=keyed(pod("a")), policies=keyed(policy()), now=T0 + 31, settle=30)
    assert memory == Memory(refused={("status", NS, "web"): (1, T0)})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_releases", 0),
        ("write_concurrency", 0),
        ("resync_seconds", 0),
        ("min_pass_interval", -1),
        ("backoff_initial", 60),
    ],
)
def test_settings_refuse_nonsense(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=field):
        PolicyControllerSettings(**{field: value})


# ---------------------------------------------------------------- events


def notes(result: PassPlan) -> list[tuple[str, str, str, str]]:
    return [(n.name, n.type, n.reason, n.message) for n in result.notes]


def remembered(result: PassPlan, memory: Memory | None = None) -> Memory:
    """The memory after the pass's writes succeeded (what the controller keeps)."""
    memory = memory or Memory()
    memory.opened.update(result.opened)
    memory.noted.update(result.noted)
    return memory


def test_each_release_carries_one_event_that_aggregates_by_unit() -> None:
    result = plan(keyed(policy()), keyed(*gated_pods(3)))
    found = {(r.note.reason, r.note.message) for r in result.releases if r.note is not None}
    assert len(result.releases) == 3
    assert found == {
        (
            "Released",
            "pods released from the gate to units local, cloud, virtual (preferred in that order)",
        )
    }
    assert result.releases[0].note is not None
    assert result.releases[0].note.involved() == {
        "apiVersion": "elastic.edgefleet.io/v1alpha1",
        "kind": "ResourcePolicy",
        "metadata": {"name": "web", "namespace": NS, "uid": "uid-web"},
    }


def test_a_unit_reaching_its_max_is_told_once_and_again_only_after_it_had_room() -> None:
    full = [pod(f"c{i}", node="cloud-1") for i in range(4)]
    first = plan(keyed(policy()), keyed(*full))
    assert notes(first) == [
        (
            "web",
            "Normal",
            "UnitAtMax",
            "unit cloud holds 4 pods, its max is 4: new pods go to local, virtual",
        )
    ]
    memory = remembered(first)
    assert notes(plan(keyed(policy()), keyed(*full), memory=memory)) == []
    # One goes: room again (nothing to say); back at max: told again.
    memory = remembered(plan(keyed(policy()), keyed(*full[:3]), memory=memory), memory)
    assert [n[2] for n in notes(plan(keyed(policy()), keyed(*full), memory=memory))] == [
        "UnitAtMax"
    ]


def test_every_unit_at_max_says_new_pods_wait_and_groups_are_named() -> None:
    units = [{"name": "cloud", "nodeSelector": CLOUD, "max": 1}]
    spec = policy(units=units, matchLabelKeys=["pod-template-hash"])
    result = plan(keyed(spec), keyed(pod("c", node="cloud-1")))
    assert notes(result) == [
        (
            "web",
            "Normal",
            "UnitAtMax",
            (
                "unit cloud holds 1 pods with pod-template-hash=h1, its max is 1: every unit is at "
                "its max: new pods wait at the gate"
            ),
        )
    ]


def test_an_invalid_policy_warns_once_per_change_of_its_refusal() -> None:
    broken = policy(units=[])
    first = plan(keyed(broken), {})
    ((name, type_, reason, message),) = notes(first)
    assert (name, type_, reason) == ("web", "Warning", "InvalidSpec")
    assert "/spec/units" in message
    memory = remembered(first)
    assert notes(plan(keyed(broken), {}, memory=memory, now=T0 + 100)) == []
    # Another mistake is another Warning; fixed and broken again, a Warning again.
    other = policy(units=[{"name": "a"}])
    changed = plan(keyed(other), {}, memory=memory)
    assert [n[2] for n in notes(changed)] == ["InvalidSpec"]
    memory = remembered(changed, memory)
    memory = remembered(plan(keyed(policy()), {}, memory=memory), memory)
    assert [n[2] for n in notes(plan(keyed(broken), {}, memory=memory))] == ["InvalidSpec"]


def test_an_overlap_warns_once_per_change_of_the_older_policies() -> None:
    old = policy("old", created="2027-01-01T00:00:00Z")
    young = policy("young", created="2027-02-01T00:00:00Z")
    first = plan(keyed(old, young), keyed(pod("a", node="local-1")))
    assert notes(first) == [
        (
            "young",
            "Warning",
            "Overlapping",
            (
                "pods this policy selects are governed by older policies of the namespace: old; "
                "it leaves those pods to them"
            ),
        )
    ]
    memory = remembered(first)
    # More pods of the overlap change its status' counts, not the Warning.
    more = keyed(pod("a", node="local-1"), pod("b", node="local-1"))
    assert notes(plan(keyed(old, young), more, memory=memory)) == []


def test_a_timeout_tells_the_unit_it_opened_and_each_deletion_why() -> None:
    policies = keyed(policy(units=TWO_UNITS, whenTryNextUnits=TIMEOUT))
    late = plan(policies, keyed(stuck("s")), now=T0 + 10)
    assert notes(late) == [
        (
            "web",
            "Normal",
            "UnitOpened",
            "pods stayed unschedulable for 10s on the units through local: unit cloud opened",
        )
    ]
    (deletion,) = late.deletions
    assert deletion.note is not None
    assert (deletion.note.reason, deletion.note.message) == (
        "StuckPodDeleted",
        (
            "deleted pods unschedulable for more than 10s, so their owners recreate them with the "
            "units through cloud open"
        ),
    )
    # The opening is known now: not told again.
    memory = remembered(late)
    assert notes(plan(policies, keyed(pod("r", gated=True)), memory=memory, now=T0 + 11)) == []


def test_a_pass_reads_only_pods_of_policy_namespaces_and_ours_elsewhere() -> None:
    """``_pods_read``: what a change of the pods alone must touch to start a pass."""

    def one(namespace: str, name: str, rv: str, **extra: Any) -> dict[str, Any]:
        return {"metadata": {"namespace": namespace, "name": name, "resourceVersion": rv}, **extra}

    gated = one("other", "g", "1", spec={"schedulingGates": [{"name": WAITING_GATE}]})
    marked = one("other", "m", "1")
    marked["metadata"]["annotations"] = {ANNOTATION_POLICY: "web"}
    pods = {
        ("shop", "a"): one("shop", "a", "1"),
        ("kube-system", "x"): one("kube-system", "x", "1"),
        ("other", "g"): gated,
        ("other", "m"): marked,
    }
    policies = [("shop", "web")]
    read = _pods_read(pods, policies)
    assert {key for key, _ in read} == {("shop", "a"), ("other", "g"), ("other", "m")}
    # A change in a namespace without policy, not ours: the same; in the policy's: not.
    assert (
        _pods_read({**pods, ("kube-system", "x"): one("kube-system", "x", "2")}, policies) == read
    )
    assert (
        _pods_read({**pods, ("kube-system", "y"): one("kube-system", "y", "1")}, policies) == read
    )
    assert _pods_read({**pods, ("shop", "a"): one("shop", "a", "2")}, policies) != read
    # A pod of ours that left (released and gone, or deleted) is a change too.
    assert _pods_read({k: v for k, v in pods.items() if k != ("other", "g")}, policies) != read
