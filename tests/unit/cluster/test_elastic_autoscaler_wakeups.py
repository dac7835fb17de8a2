"""Which pod changes wake the NodePool autoscaler for a step (``autoscaler_driver._pods_seen``).

A step is a synchronous pass over every pod on the agent's loop; a change of the pods that
changes nothing a step reads must not start one. These are the rules of that comparison.
"""

from __future__ import annotations

from typing import Any

from edge_agent.cluster.elastic.autoscaler_driver import _pods_seen


def pod(
    name: str,
    *,
    node: str | None = None,
    phase: str = "Running",
    unschedulable: bool = False,
    generation: int = 1,
    **status: Any,
) -> dict[str, Any]:
    conditions = (
        [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}]
        if unschedulable
        else []
    )
    return {
        "metadata": {
            "name": name,
            "namespace": "shop",
            "uid": f"uid-{name}",
            "generation": generation,
        },
        "spec": {"nodeName": node} if node else {},
        "status": {"phase": phase, "conditions": conditions, **status},
    }


def cache(*pods: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(p["metadata"]["namespace"], p["metadata"]["name"]): p for p in pods}


def test_a_pending_unschedulable_pod_always_needs_a_step() -> None:
    pods = cache(pod("a", node="n1"), pod("b", unschedulable=True))
    assert _pods_seen(pods, any_pool_node=False) is None
    assert _pods_seen(pods, any_pool_node=True) is None


def test_a_gated_or_deleting_unbound_pod_is_not_pending_for_the_autoscaler() -> None:
    gated = pod("g")
    gated["status"]["conditions"] = [
        {"type": "PodScheduled", "status": "False", "reason": "SchedulingGated"}
    ]
    deleting = pod("d", unschedulable=True)
    deleting["metadata"]["deletionTimestamp"] = "2030-01-01T00:00:00Z"
    assert _pods_seen(cache(gated, deleting), any_pool_node=True) == frozenset()


def test_without_pool_nodes_bound_pods_do_not_matter() -> None:
    before = _pods_seen(cache(pod("a", node="n1")), any_pool_node=False)
    after = _pods_seen(cache(pod("a", node="n1"), pod("b", node="n2")), any_pool_node=False)
    assert before == after == frozenset()


def test_with_pool_nodes_a_pod_bound_moved_or_resized_matters_a_status_update_does_not() -> None:
    base = _pods_seen(cache(pod("a", node="n1")), any_pool_node=True)
    assert base == frozenset({("shop", "a", "uid-a", "n1", 1)})
    # Status only (conditions, IPs, ready): the same to a step.
    assert _pods_seen(cache(pod("a", node="n1", podIP="10.0.0.1")), any_pool_node=True) == base
    assert _pods_seen(cache(pod("a", node="n1"), pod("b", node="n2")), any_pool_node=True) != base
    assert _pods_seen(cache(pod("a", node="n2")), any_pool_node=True) != base
    assert _pods_seen(cache(pod("a", node="n1", generation=2)), any_pool_node=True) != base
    # A pod that ended no longer takes room: it leaves the view.
    assert (
        _pods_seen(cache(pod("a", node="n1", phase="Succeeded")), any_pool_node=True) == frozenset()
    )
