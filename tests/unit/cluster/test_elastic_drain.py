"""The pure parts of a drain: which pods go, the Eviction sent, what a refusal says."""

from __future__ import annotations

from typing import Any

import pytest

from edge_agent.cluster.elastic.drain import (
    CORDON_ANNOTATION,
    DrainSettings,
    cordoned_by_us,
    evictable,
    eviction_body,
    refusal_message,
)


def pod(name: str, node: str = "n1", **meta: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "shop", "uid": f"uid-{name}", **meta},
        "spec": {"nodeName": node},
    }


def owner(kind: str, *, controller: bool = True) -> list[dict[str, Any]]:
    return [{"kind": kind, "name": "x", "controller": controller}]


def test_only_the_nodes_movable_pods_are_evicted() -> None:
    pods = [
        pod("web-b", ownerReferences=owner("ReplicaSet")),
        pod("web-a", ownerReferences=owner("ReplicaSet")),
        pod("bare"),  # no controller: evicted all the same, as kubectl drain --force would
        pod("done", ownerReferences=owner("Job")),
        pod("elsewhere", node="n2"),
        pod("pending", node=""),
        pod("agent", ownerReferences=owner("DaemonSet")),
        pod("static", annotations={"kubernetes.io/config.mirror": "abc"}),
        # A DaemonSet that is an owner but not the controller does not make it node-bound.
        pod("adopted", ownerReferences=owner("DaemonSet", controller=False)),
    ]
    names = [p["metadata"]["name"] for p in evictable(pods, "n1")]
    assert names == ["adopted", "bare", "done", "web-a", "web-b"]


def test_malformed_pods_are_skipped_not_fatal() -> None:
    pods: list[Any] = [{"spec": {"nodeName": "n1"}}, {"metadata": "x", "spec": None}, pod("ok")]
    assert [p["metadata"]["name"] for p in evictable(pods, "n1")] == ["ok"]


def test_the_eviction_is_for_this_very_pod() -> None:
    assert eviction_body(pod("web-a")) == {
        "apiVersion": "policy/v1",
        "kind": "Eviction",
        "metadata": {"name": "web-a", "namespace": "shop"},
        "deleteOptions": {"preconditions": {"uid": "uid-web-a"}},
    }


def test_a_budgets_refusal_names_the_budget() -> None:
    # The Status kube-apiserver answers a refused eviction with (429).
    status = {
        "kind": "Status",
        "status": "Failure",
        "message": "Cannot evict pod as it would violate the pod's disruption budget.",
        "reason": "TooManyRequests",
        "details": {
            "causes": [
                {
                    "reason": "DisruptionBudget",
                    "message": "The disruption budget web needs 2 healthy pods and has 2 currently",
                }
            ]
        },
        "code": 429,
    }
    assert refusal_message(status) == (
        "Cannot evict pod as it would violate the pod's disruption budget. "
        "The disruption budget web needs 2 healthy pods and has 2 currently"
    )
    assert refusal_message(None) == "no Status message"
    assert refusal_message({"message": "x" * 1000}) == "x" * 300


def test_only_our_mark_counts_as_our_cordon() -> None:
    assert cordoned_by_us({"metadata": {"annotations": {CORDON_ANNOTATION: "edgefleet-elastic"}}})
    assert not cordoned_by_us({"metadata": {"annotations": {CORDON_ANNOTATION: "someone"}}})
    assert not cordoned_by_us({"metadata": {}, "spec": {"unschedulable": True}})


def test_settings_are_checked() -> None:
    DrainSettings(pdb_wait_seconds=0)
    for bad in (
        {"timeout_seconds": 0.0},
        {"eviction_retry_seconds": float("inf")},
        {"pdb_wait_seconds": -1.0},
        {"max_parallel_evictions": 0},
        {"write_attempts": 0},
    ):
        with pytest.raises(ValueError, match="must be"):
            DrainSettings(**bad)
