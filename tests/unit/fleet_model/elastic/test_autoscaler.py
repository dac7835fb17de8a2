"""The autoscaler as synchronous scripts: pools grow by priority, fall back, shrink in reverse."""

from __future__ import annotations

import math
from typing import Any

import pytest

from fleet_model.elastic.autoscaler import (
    Autoscaler,
    AutoscalerSettings,
    CordonAndDrain,
    CreateNodes,
    CreateResult,
    Decision,
    DeleteNode,
    DeleteResult,
    DrainResult,
    Outcome,
    Uncordon,
    pool_status_document,
)
from fleet_model.elastic.nodepool import API_VERSION, POOL_LABEL, NodePool, parse_node_pool
from fleet_model.times import format_time

T0 = 1_800_000_000.0


def make_pool(
    name: str,
    priority: int,
    *,
    low: int = 0,
    high: int = 10,
    cpu: str = "4",
    taints: list[dict[str, str]] | None = None,
    provider: dict[str, Any] | None = None,
    scale_down: dict[str, Any] | None = None,
) -> NodePool:
    spec: dict[str, Any] = {
        "priority": priority,
        "min": low,
        "max": high,
        "node": {
            "labels": {"tier": name},
            "taints": taints or [],
            "capacity": {"cpu": cpu, "memory": "16Gi", "pods": 110},
        },
        "provider": provider or {"kwok": {}},
        "scaleDown": scale_down or {"emptyAfterSeconds": 60, "underUsedAfterSeconds": 120},
    }
    doc = {"apiVersion": API_VERSION, "kind": "NodePool", "metadata": {"name": name}, "spec": spec}
    return parse_node_pool(doc)


def make_node(
    name: str,
    pool: str | None,
    *,
    created: float = T0,
    cpu: str = "4",
    ready: bool = True,
    unschedulable: bool = False,
) -> dict[str, Any]:
    labels = {POOL_LABEL: pool, "tier": pool} if pool else {}
    return {
        "metadata": {"name": name, "labels": labels, "creationTimestamp": format_time(created)},
        "spec": {"unschedulable": unschedulable},
        "status": {
            "allocatable": {"cpu": cpu, "memory": "16Gi", "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def make_pod(
    name: str,
    *,
    cpu: str = "1",
    node: str | None = None,
    owner: str | None = "ReplicaSet",
    created: float = T0,
    **spec: Any,
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": "default",
        "creationTimestamp": format_time(created),
    }
    if owner:
        meta["ownerReferences"] = [{"kind": owner, "name": "o", "controller": True}]
    body: dict[str, Any] = {
        "containers": [{"name": "c", "resources": {"requests": {"cpu": cpu}}}],
        **spec,
    }
    status: dict[str, Any] = {"phase": "Pending"}
    if node:
        body["nodeName"] = node
        status = {"phase": "Running"}
    else:
        status["conditions"] = [
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}
        ]
    return {"metadata": meta, "spec": body, "status": status}


def pending(count: int, *, cpu: str = "1", prefix: str = "p") -> list[dict[str, Any]]:
    return [make_pod(f"{prefix}{i:03d}", cpu=cpu) for i in range(count)]


def creates(decision: Decision) -> list[tuple[str, int]]:
    return [(a.pool, a.count) for a in decision.actions if isinstance(a, CreateNodes)]


def drains(decision: Decision) -> list[str]:
    return [a.node for a in decision.actions if isinstance(a, CordonAndDrain)]


def reasons(decision: Decision) -> list[str]:
    return [r.reason for r in decision.reasons]


LOCAL, CLOUD, VIRTUAL = make_pool("local", 100), make_pool("cloud", 50), make_pool("virtual", 0)


# ---------------------------------------------------------------- scale-up


def test_pending_pods_are_bin_packed_onto_the_highest_priority_pool() -> None:
    scaler = Autoscaler()
    decision = scaler.step(now=T0, pools=[VIRTUAL, CLOUD, LOCAL], nodes=[], pods=pending(10))
    # 10 one-cpu pods on four-cpu nodes: three nodes, all of the top pool.
    assert creates(decision) == [("local", 3)]
    assert "ScaleUp" in reasons(decision)
    assert decision.wake_at == T0 + 30 + 30  # kwok timeout + outcome grace


def test_a_create_in_flight_is_not_repeated_for_the_same_pods() -> None:
    scaler = Autoscaler()
    pods = pending(10)
    assert creates(scaler.step(now=T0, pools=[LOCAL], nodes=[], pods=pods)) == [("local", 3)]
    waiting = scaler.step(now=T0 + 1, pools=[LOCAL], nodes=[], pods=pods)
    assert creates(waiting) == []
    assert waiting.wake_at == T0 + 60  # the create's deadline: no polling while it runs
    created = CreateResult(pool="local", outcome=Outcome.CREATED, nodes=("l1", "l2", "l3"))
    decision = scaler.step(now=T0 + 2, pools=[LOCAL], nodes=[], pods=pods, events=[created])
    assert creates(decision) == []
    assert "NodesCreated" in reasons(decision)
    # Registered but not Ready yet: still capacity on its way, nothing more is made.
    coming = [make_node(n, "local", created=T0 + 3, ready=False) for n in ("l1", "l2", "l3")]
    assert creates(scaler.step(now=T0 + 3, pools=[LOCAL], nodes=coming, pods=pods)) == []
    assert decision.pools[0].creating == 3


def test_pods_that_fit_existing_room_start_nothing() -> None:
    scaler = Autoscaler()
    nodes = [make_node("busy", None), make_node("l1", "local")]
    decision = scaler.step(now=T0, pools=[LOCAL], nodes=nodes, pods=pending(8))
    assert creates(decision) == []


def test_max_is_respected_and_the_rest_goes_to_the_next_pool() -> None:
    scaler = Autoscaler()
    small = make_pool("local", 100, high=2)
    nodes = [make_node("l1", "local", created=T0 - 100)]
    full = [make_pod(f"r{i}", node="l1") for i in range(4)]
    decision = scaler.step(now=T0, pools=[small, CLOUD], nodes=nodes, pods=full + pending(10))
    assert creates(decision) == [("local", 1), ("cloud", 2)]


def test_equal_priorities_are_ordered_by_name() -> None:
    scaler = Autoscaler()
    b, a = make_pool("b", 5), make_pool("a", 5)
    assert creates(scaler.step(now=T0, pools=[b, a], nodes=[], pods=pending(1))) == [("a", 1)]


def test_a_pod_the_top_pool_cannot_take_goes_to_the_next_and_says_why_if_none() -> None:
    scaler = Autoscaler()
    tainted = make_pool("local", 100, taints=[{"key": "gpu", "effect": "NoSchedule"}])
    huge = make_pod("huge", cpu="64")
    decision = scaler.step(now=T0, pools=[tainted, CLOUD], nodes=[], pods=[*pending(1), huge])
    assert creates(decision) == [("cloud", 1)]
    [why] = [r for r in decision.reasons if r.kind == "Pod"]
    assert (why.name, why.reason, why.warning) == ("huge", "NotTriggerScaleUp", True)
    assert why.message == "local: untolerated taint gpu:NoSchedule; cloud: Insufficient cpu"


def test_a_failed_provider_backs_the_pool_off_and_pods_fall_back_to_the_next() -> None:
    scaler = Autoscaler(AutoscalerSettings(backoff_initial_seconds=30, backoff_max_seconds=100))
    pods = pending(2)
    pools = [LOCAL, CLOUD]
    assert creates(scaler.step(now=T0, pools=pools, nodes=[], pods=pods)) == [("local", 1)]
    failed = CreateResult(pool="local", outcome=Outcome.FAILED, message="quota exceeded")
    decision = scaler.step(now=T0 + 5, pools=pools, nodes=[], pods=pods, events=[failed])
    assert creates(decision) == [("cloud", 1)]
    [event] = [r for r in decision.reasons if r.reason == "ProviderFailed"]
    assert event.message == "create of 1 nodes: quota exceeded; pool skipped for 30s"
    assert decision.pools[0].backoff_until == T0 + 35
    # Cloud fails too (timed out): its back-off starts; local's ends first and is tried again.
    timed_out = CreateResult(pool="cloud", outcome=Outcome.TIMED_OUT)
    decision = scaler.step(now=T0 + 10, pools=pools, nodes=[], pods=pods, events=[timed_out])
    assert creates(decision) == []
    assert "ProviderTimedOut" in reasons(decision)
    assert decision.wake_at == T0 + 35
    assert creates(scaler.step(now=T0 + 34, pools=pools, nodes=[], pods=pods)) == []
    assert creates(scaler.step(now=T0 + 35, pools=pools, nodes=[], pods=pods)) == [("local", 1)]
    # A second failure in a row doubles the back-off, up to the max.
    again = CreateResult(pool="local", outcome=Outcome.FAILED)
    decision = scaler.step(now=T0 + 36, pools=[LOCAL], nodes=[], pods=pods, events=[again])
    assert decision.pools[0].backoff_until == T0 + 36 + 60


def test_a_create_with_no_outcome_times_out_by_itself() -> None:
    command = make_pool("cloud", 50, provider={"command": {"path": "/bin/c", "timeoutSeconds": 10}})
    scaler = Autoscaler(AutoscalerSettings(outcome_grace_seconds=5))
    decision = scaler.step(now=T0, pools=[command, VIRTUAL], nodes=[], pods=pending(1))
    assert decision.wake_at == T0 + 15
    assert (
        creates(scaler.step(now=T0 + 14, pools=[command, VIRTUAL], nodes=[], pods=pending(1))) == []
    )
    decision = scaler.step(now=T0 + 15, pools=[command, VIRTUAL], nodes=[], pods=pending(1))
    assert "ProviderTimedOut" in reasons(decision)
    assert creates(decision) == [("virtual", 1)]


def test_a_pool_below_min_grows_to_min() -> None:
    scaler = Autoscaler()
    floor = make_pool("local", 100, low=2)
    decision = scaler.step(now=T0, pools=[floor], nodes=[make_node("l1", "local")], pods=[])
    assert creates(decision) == [("local", 1)]
    assert "BelowMin" in reasons(decision)


def test_nodes_created_per_step_are_capped() -> None:
    scaler = Autoscaler(AutoscalerSettings(max_nodes_created_per_step=2, recheck_seconds=1))
    decision = scaler.step(now=T0, pools=[LOCAL, CLOUD], nodes=[], pods=pending(20, cpu="4"))
    assert creates(decision) == [("local", 2)]  # never spill to cloud because of the cap
    assert decision.wake_at == T0 + 1


def test_created_nodes_that_never_register_stop_counting() -> None:
    scaler = Autoscaler(AutoscalerSettings(node_registration_seconds=100))
    scaler.step(now=T0, pools=[LOCAL], nodes=[], pods=pending(1))
    done = CreateResult(pool="local", outcome=Outcome.CREATED, nodes=("l1",))
    decision = scaler.step(now=T0 + 1, pools=[LOCAL], nodes=[], pods=pending(1), events=[done])
    assert decision.wake_at == T0 + 101
    decision = scaler.step(now=T0 + 101, pools=[LOCAL], nodes=[], pods=pending(1))
    assert "NodeNotRegistered" in reasons(decision)
    assert creates(decision) == [("local", 1)]


# ---------------------------------------------------------------- scale-down


def test_empty_nodes_go_in_reverse_priority_order_newest_first_never_below_min() -> None:
    scaler = Autoscaler()
    local = make_pool("local", 100, low=1)
    nodes = [
        make_node("l1", "local", created=T0 - 300),
        make_node("l2", "local", created=T0 - 200),
        make_node("c1", "cloud", created=T0 - 300),
        make_node("c2", "cloud", created=T0 - 100),
        make_node("v1", "virtual", created=T0 - 300),
        make_node("other", None),
    ]
    pools = [local, CLOUD, VIRTUAL]
    decision = scaler.step(now=T0, pools=pools, nodes=nodes, pods=[])
    assert drains(decision) == []
    assert decision.wake_at == T0 + 60
    decision = scaler.step(now=T0 + 60, pools=pools, nodes=nodes, pods=[])
    assert drains(decision) == ["v1", "c2", "c1", "l2"]  # l1 stays: local's min is 1
    assert decision.pools[0].removing == 1


def test_daemonset_and_mirror_pods_do_not_keep_a_node() -> None:
    scaler = Autoscaler()
    pods = [
        make_pod("ds", node="c1", owner="DaemonSet"),
        make_pod("static", node="c1", owner=None)
        | {
            "metadata": {
                "name": "static",
                "namespace": "kube-system",
                "annotations": {"kubernetes.io/config.mirror": "x"},
            }
        },
        make_pod("app", node="c2"),
    ]
    nodes = [make_node("c1", "cloud"), make_node("c2", "cloud")]
    scaler.step(now=T0, pools=[CLOUD], nodes=nodes, pods=pods)
    assert drains(scaler.step(now=T0 + 60, pools=[CLOUD], nodes=nodes, pods=pods)) == ["c1"]


def test_drain_then_delete_and_a_blocked_drain_uncordons() -> None:
    scaler = Autoscaler()
    nodes = [make_node("c1", "cloud"), make_node("c2", "cloud")]
    scaler.step(now=T0, pools=[CLOUD], nodes=nodes, pods=[])
    assert drains(scaler.step(now=T0 + 60, pools=[CLOUD], nodes=nodes, pods=[])) == ["c2", "c1"]
    events = [
        DrainResult(node="c2", drained=True),
        DrainResult(node="c1", drained=False, message="Cannot evict pod: PodDisruptionBudget web"),
    ]
    decision = scaler.step(now=T0 + 61, pools=[CLOUD], nodes=nodes, pods=[], events=events)
    assert decision.actions == (
        DeleteNode(node="c2", pool="cloud"),
        Uncordon(node="c1", pool="cloud"),
    )
    [blocked] = [r for r in decision.reasons if r.reason == "DrainBlocked"]
    assert blocked.message.startswith("Cannot evict pod: PodDisruptionBudget web")
    assert blocked.warning
    # c1's cool-down restarts; c2 is deleted and leaves the list.
    gone = DeleteResult(node="c2", outcome=Outcome.DELETED)
    decision = scaler.step(now=T0 + 62, pools=[CLOUD], nodes=nodes[:1], pods=[], events=[gone])
    assert decision.actions == ()
    assert decision.wake_at == T0 + 61 + 60  # the timer restarted in the step that gave up


def test_a_drain_that_never_reports_is_given_up() -> None:
    scaler = Autoscaler(AutoscalerSettings(drain_timeout_seconds=50))
    nodes = [make_node("c1", "cloud")]
    scaler.step(now=T0, pools=[CLOUD], nodes=nodes, pods=[])
    decision = scaler.step(now=T0 + 60, pools=[CLOUD], nodes=nodes, pods=[])
    assert decision.wake_at == T0 + 110
    decision = scaler.step(now=T0 + 110, pools=[CLOUD], nodes=nodes, pods=[])
    assert decision.actions == (Uncordon(node="c1", pool="cloud"),)
    assert "DrainTimedOut" in reasons(decision)


def test_a_failed_delete_is_retried_after_the_pool_back_off() -> None:
    scaler = Autoscaler(AutoscalerSettings(backoff_initial_seconds=20))
    nodes = [make_node("c1", "cloud")]
    scaler.step(now=T0, pools=[CLOUD], nodes=nodes, pods=[])
    scaler.step(now=T0 + 60, pools=[CLOUD], nodes=nodes, pods=[])
    scaler.step(
        now=T0 + 61,
        pools=[CLOUD],
        nodes=nodes,
        pods=[],
        events=[DrainResult(node="c1", drained=True)],
    )
    failed = DeleteResult(node="c1", outcome=Outcome.FAILED, message="API error")
    decision = scaler.step(now=T0 + 62, pools=[CLOUD], nodes=nodes, pods=[], events=[failed])
    assert "DeleteFailed" in reasons(decision)
    assert decision.wake_at == T0 + 82
    decision = scaler.step(now=T0 + 82, pools=[CLOUD], nodes=nodes, pods=[])
    assert decision.actions == (DeleteNode(node="c1", pool="cloud"),)


def test_no_scale_down_while_the_pool_has_a_create_in_flight() -> None:
    scaler = Autoscaler()
    cloud = make_pool("cloud", 50, cpu="8", scale_down={"emptyAfterSeconds": 10})
    nodes = [make_node("c1", "cloud")]
    big = make_pod("big", cpu="8")
    assert creates(scaler.step(now=T0, pools=[cloud], nodes=nodes, pods=[big])) == [("cloud", 1)]
    assert drains(scaler.step(now=T0 + 20, pools=[cloud], nodes=nodes, pods=[big])) == []
    done = CreateResult(pool="cloud", outcome=Outcome.CREATED, nodes=("c2",))
    decision = scaler.step(now=T0 + 21, pools=[cloud], nodes=nodes, pods=[big], events=[done])
    assert drains(decision) == []  # c2 has not registered yet: still a create in flight
    nodes = [*nodes, make_node("c2", "cloud", cpu="8", created=T0 + 22)]
    placed = make_pod("big", cpu="8", node="c2")
    assert drains(scaler.step(now=T0 + 22, pools=[cloud], nodes=nodes, pods=[placed])) == ["c1"]


def test_an_under_used_node_goes_only_if_its_pods_fit_elsewhere() -> None:
    scaler = Autoscaler()
    nodes = [make_node("c1", "cloud", created=T0 - 10), make_node("c2", "cloud")]
    pods = [make_pod("a", node="c1", cpu="2500m"), make_pod("b", node="c2", cpu="1")]
    scaler.step(now=T0, pools=[CLOUD], nodes=nodes, pods=pods)
    # c2 (newest, 25 %) is under-used and b fits on c1; c1 (62.5 %) is not under-used.
    assert drains(scaler.step(now=T0 + 120, pools=[CLOUD], nodes=nodes, pods=pods)) == ["c2"]
    scaler = Autoscaler()
    bare = [make_pod("a", node="c1", cpu="3500m"), make_pod("b", node="c2", cpu="1", owner=None)]
    scaler.step(now=T0, pools=[CLOUD], nodes=nodes, pods=bare)
    # b has no controller (nobody would recreate it) and would not fit on c1 anyway.
    assert drains(scaler.step(now=T0 + 120, pools=[CLOUD], nodes=nodes, pods=bare)) == []


def test_nodes_of_no_known_pool_are_never_touched() -> None:
    scaler = Autoscaler()
    nodes = [make_node("mine", None), make_node("stray", "deleted-pool")]
    scaler.step(now=T0, pools=[CLOUD], nodes=nodes, pods=[])
    assert scaler.step(now=T0 + 10_000, pools=[CLOUD], nodes=nodes, pods=[]).actions == ()


def test_two_removals_never_count_on_the_same_free_room() -> None:
    scaler = Autoscaler()
    nodes = [
        make_node("c1", "cloud", created=T0 - 30),
        make_node("c2", "cloud", created=T0 - 20),
        make_node("c3", "cloud", created=T0 - 10),
    ]
    pods = [
        make_pod("a", node="c1"),
        make_pod("b", node="c2"),
        make_pod("c", node="c3", cpu="3"),
    ]
    scaler.step(now=T0, pools=[CLOUD], nodes=nodes, pods=pods)
    # c2 (newest under-used) goes and its pod is counted onto c1; c1 must then stay, though
    # its own pod would fit in c3's last free cpu (which b could also have taken).
    assert drains(scaler.step(now=T0 + 120, pools=[CLOUD], nodes=nodes, pods=pods)) == ["c2"]


def test_pod_events_per_step_are_capped() -> None:
    scaler = Autoscaler(AutoscalerSettings(max_pod_reasons_per_step=3))
    decision = scaler.step(now=T0, pools=[LOCAL], nodes=[], pods=pending(10, cpu="64"))
    assert [r.name for r in decision.reasons if r.kind == "Pod"] == ["p000", "p001", "p002"]


def test_more_pods_wait_for_a_busy_pool_without_polling_or_spilling() -> None:
    scaler = Autoscaler()
    assert creates(scaler.step(now=T0, pools=[LOCAL, CLOUD], nodes=[], pods=pending(4))) == [
        ("local", 1)
    ]
    # Four more pods need a second node; local's create is still running: they wait for it
    # (not cloud), and the next wake-up is that create's deadline, not a poll.
    decision = scaler.step(now=T0 + 1, pools=[LOCAL, CLOUD], nodes=[], pods=pending(8))
    assert creates(decision) == []
    assert decision.wake_at == T0 + 60
    done = CreateResult(pool="local", outcome=Outcome.CREATED, nodes=("l1",))
    decision = scaler.step(
        now=T0 + 2, pools=[LOCAL, CLOUD], nodes=[], pods=pending(8), events=[done]
    )
    assert creates(decision) == [("local", 1)]


@pytest.mark.parametrize(
    "bad",
    [
        {"max_nodes_created_per_step": 0},
        {"backoff_initial_seconds": 0.0},
        {"recheck_seconds": math.inf},
    ],
)
def test_settings_are_validated(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        AutoscalerSettings(**bad)


def test_an_empty_node_a_pending_pod_fits_on_is_kept() -> None:
    scaler = Autoscaler()
    nodes = [make_node("c1", "cloud"), make_node("c2", "cloud")]
    scaler.step(now=T0, pools=[CLOUD], nodes=nodes, pods=[])
    # A pod goes pending just as both nodes' cool-down ends: the node it fits on stays.
    late = make_pod("late", cpu="3")
    decision = scaler.step(now=T0 + 60, pools=[CLOUD], nodes=nodes, pods=[late])
    assert creates(decision) == []
    assert drains(decision) == ["c2"]


def test_the_pool_status_document_says_what_the_pool_is_doing() -> None:
    scaler = Autoscaler(AutoscalerSettings(backoff_initial_seconds=30))
    small = make_pool("local", 100, high=1)
    decision = scaler.step(now=T0, pools=[small], nodes=[], pods=pending(1))
    doc = pool_status_document(small, decision.pools[0], now=T0)
    assert (doc["nodes"], doc["creating"], doc["removing"]) == (0, 1, 0)
    by_type = {c["type"]: c for c in doc["conditions"]}
    assert by_type["ScalingUp"]["status"] == "True"
    assert by_type["ProviderReady"]["reason"] == "Ready"
    assert (by_type["AtMax"]["status"], by_type["AtMax"]["message"]) == ("True", "1 of 1 nodes")
    failed = CreateResult(pool="local", outcome=Outcome.FAILED, message="quota exceeded")
    decision = scaler.step(now=T0 + 5, pools=[small], nodes=[], pods=[], events=[failed])
    later = pool_status_document(small, decision.pools[0], conditions=doc["conditions"], now=T0 + 5)
    by_type = {c["type"]: c for c in later["conditions"]}
    assert by_type["ProviderReady"]["status"] == "False"
    assert by_type["ProviderReady"]["message"] == (
        f"create of 1 nodes: quota exceeded; next try {format_time(T0 + 35)}"
    )
    assert by_type["ProviderReady"]["lastTransitionTime"] == format_time(T0 + 5)
    assert by_type["AtMax"]["lastTransitionTime"] == format_time(T0 + 5)  # True -> False
    assert [c["type"] for c in later["conditions"]] == ["ScalingUp", "ProviderReady", "AtMax"]
    decision = scaler.step(now=T0 + 40, pools=[small], nodes=[], pods=[])
    again = pool_status_document(
        small, decision.pools[0], conditions=later["conditions"], now=T0 + 40
    )
    by_type = {c["type"]: c for c in again["conditions"]}
    assert (by_type["ProviderReady"]["status"], by_type["ProviderReady"]["reason"]) == (
        "True",
        "Retrying",
    )
    assert by_type["ScalingUp"]["lastTransitionTime"] == format_time(T0 + 5)


def test_a_pool_deleted_mid_create_leaves_nothing_behind() -> None:
    scaler = Autoscaler(AutoscalerSettings(node_registration_seconds=50))
    assert creates(scaler.step(now=T0, pools=[CLOUD], nodes=[], pods=pending(1))) == [("cloud", 1)]
    done = CreateResult(pool="cloud", outcome=Outcome.CREATED, nodes=("c1",))
    decision = scaler.step(now=T0 + 1, pools=[], nodes=[], pods=pending(1), events=[done])
    assert decision.pools == ()
    assert decision.wake_at == T0 + 51  # c1 still expected: it may register yet
    nodes = [make_node("c1", "cloud")]
    decision = scaler.step(now=T0 + 2, pools=[], nodes=nodes, pods=[])
    assert decision.wake_at is None
    assert scaler.step(now=T0 + 5000, pools=[], nodes=nodes, pods=[]).actions == ()
    assert scaler._pools == {}
    assert scaler._nodes == {}


# ---------------------------------------------------------------- nodes on their way


def tainted(node: dict[str, Any], key: str) -> dict[str, Any]:
    node["spec"]["taints"] = [{"key": key, "effect": "NoSchedule"}]
    return node


@pytest.mark.parametrize(
    "taint",
    [
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/unreachable",
        "node.cloudprovider.kubernetes.io/uninitialized",
    ],
)
def test_a_ready_node_that_still_carries_a_not_ready_taint_is_not_ready(taint: str) -> None:
    """A node tainted not-ready is capacity on its way, not a node no pod fits.

    Ready is reported a moment before the control plane lifts the taint; judged by that
    taint no pod fits the node, and a second node would be created for the same pods.
    """
    scaler = Autoscaler()
    pods = pending(3)
    assert creates(scaler.step(now=T0, pools=[LOCAL], nodes=[], pods=pods)) == [("local", 1)]
    created = CreateResult(pool="local", outcome=Outcome.CREATED, nodes=("l1",))
    scaler.step(now=T0 + 1, pools=[LOCAL], nodes=[], pods=pods, events=[created])
    settling = [tainted(make_node("l1", "local", created=T0 + 2), taint)]
    decision = scaler.step(now=T0 + 3, pools=[LOCAL], nodes=settling, pods=pods)
    assert creates(decision) == []
    # Tainted long past node_ready_seconds it is no capacity at all: the pods need a node.
    old = tainted(make_node("l0", "local", created=T0 - 1000), taint)
    assert creates(scaler.step(now=T0 + 4, pools=[LOCAL], nodes=[old], pods=pods)) == [("local", 1)]


def test_a_registering_node_pending_pods_count_on_is_not_scaled_in() -> None:
    """A node slower to become Ready than the pool's empty cool-down is kept.

    Removing it would undo the scale-up, and the next step would create a node for the same
    pods again.
    """
    scaler = Autoscaler()
    pool = make_pool("cloud", 50, scale_down={"emptyAfterSeconds": 10})
    pods = pending(3)
    assert creates(scaler.step(now=T0, pools=[pool], nodes=[], pods=pods)) == [("cloud", 1)]
    created = CreateResult(pool="cloud", outcome=Outcome.CREATED, nodes=("c1",))
    scaler.step(now=T0 + 1, pools=[pool], nodes=[], pods=pods, events=[created])
    registering = [make_node("c1", "cloud", created=T0 + 2, ready=False)]
    for now in (T0 + 2, T0 + 20, T0 + 200):
        decision = scaler.step(now=now, pools=[pool], nodes=registering, pods=pods)
        assert (creates(decision), drains(decision)) == ([], [])
    # The pods went elsewhere (deleted): the node is empty from now on, a whole cool-down.
    assert drains(scaler.step(now=T0 + 201, pools=[pool], nodes=registering, pods=[])) == []
    assert drains(scaler.step(now=T0 + 211, pools=[pool], nodes=registering, pods=[])) == ["c1"]
