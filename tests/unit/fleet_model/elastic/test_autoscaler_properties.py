"""Autoscaler properties against a toy cluster.

Never over max or under min, shrinking in reverse order, back-off honoured, and the same
inputs in any order give the same decision.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from fleet_model.elastic.autoscaler import (
    Autoscaler,
    CordonAndDrain,
    CreateNodes,
    CreateResult,
    Decision,
    DeleteNode,
    DeleteResult,
    DrainResult,
    Event,
    Outcome,
    Uncordon,
)
from fleet_model.elastic.fit import node_facts, pod_on_node_problem, total_requests
from fleet_model.elastic.nodepool import API_VERSION, POOL_LABEL, NodePool, parse_node_pool
from fleet_model.times import format_time

T0 = 1_800_000_000.0


def pool_of(name: str, priority: int, low: int, high: int, cpu: int) -> NodePool:
    return parse_node_pool(
        {
            "apiVersion": API_VERSION,
            "kind": "NodePool",
            "metadata": {"name": name},
            "spec": {
                "priority": priority,
                "min": low,
                "max": high,
                "node": {"capacity": {"cpu": str(cpu), "memory": "64Gi", "pods": 110}},
                "provider": {"kwok": {}},
                "scaleDown": {"emptyAfterSeconds": 20, "underUsedAfterSeconds": 40},
            },
        }
    )


def pod_of(name: str, cpu: int) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": "default",
            "creationTimestamp": format_time(T0),
            "ownerReferences": [{"kind": "ReplicaSet", "name": "rs", "controller": True}],
        },
        "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": str(cpu)}}}]},
        "status": {
            "phase": "Pending",
            "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}],
        },
    }


@dataclass
class ToyCluster:
    """Providers answer at once (or fail, for the pools told to); a first-fit scheduler."""

    pools: dict[str, NodePool]
    failing: set[str]
    blocked_drains: set[int]
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    pods: dict[str, dict[str, Any]] = field(default_factory=dict)
    serial: int = 0
    drains_seen: int = 0

    def carry_out(self, decision: Decision, now: float) -> list[Event]:
        events: list[Event] = []
        for action in decision.actions:
            if isinstance(action, CreateNodes):
                events.append(self._create(action, now))
            elif isinstance(action, CordonAndDrain):
                self.drains_seen += 1
                self.nodes[action.node]["spec"]["unschedulable"] = True
                if self.drains_seen in self.blocked_drains:
                    events.append(DrainResult(node=action.node, drained=False, message="PDB"))
                    continue
                for pod in self.pods.values():
                    if pod["spec"].get("nodeName") == action.node:
                        del pod["spec"]["nodeName"]  # evicted and recreated by its ReplicaSet
                        pod["status"] = pod_of("x", 1)["status"]
                events.append(DrainResult(node=action.node, drained=True))
            elif isinstance(action, Uncordon):
                self.nodes[action.node]["spec"]["unschedulable"] = False
            elif isinstance(action, DeleteNode):
                del self.nodes[action.node]
                events.append(DeleteResult(node=action.node, outcome=Outcome.DELETED))
        return events

    def _create(self, action: CreateNodes, now: float) -> CreateResult:
        if action.pool in self.failing:
            return CreateResult(pool=action.pool, outcome=Outcome.FAILED, message="no quota")
        names = []
        for _ in range(action.count):
            self.serial += 1
            name = f"{action.pool}-{self.serial:03d}"
            shape = self.pools[action.pool].node
            self.nodes[name] = {
                "metadata": {
                    "name": name,
                    "labels": dict(shape.labels),
                    "creationTimestamp": format_time(now),
                },
                "spec": {"unschedulable": False},
                "status": {
                    "allocatable": {k: str(v) for k, v in shape.allocatable().items()},
                    "conditions": [{"type": "Ready", "status": "True"}],
                },
            }
            names.append(name)
        return CreateResult(pool=action.pool, outcome=Outcome.CREATED, nodes=tuple(names))

    def schedule(self) -> None:
        for pod in sorted(self.pods.values(), key=lambda p: p["metadata"]["name"]):
            if pod["spec"].get("nodeName"):
                continue
            for name in sorted(self.nodes):
                here = [p for p in self.pods.values() if p["spec"].get("nodeName") == name]
                facts = node_facts(self.nodes[name])
                if pod_on_node_problem(pod, facts, total_requests(here)) is None:
                    pod["spec"]["nodeName"] = name
                    pod["status"] = {"phase": "Running"}
                    break

    def created(self, node: str) -> str:
        return str(self.nodes[node]["metadata"]["creationTimestamp"])

    def pool_nodes(self, pool: str) -> int:
        return sum(1 for n in self.nodes.values() if n["metadata"]["labels"][POOL_LABEL] == pool)


_pool_specs = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=2),  # priority: ties happen
        st.integers(min_value=0, max_value=2),  # min
        st.integers(min_value=0, max_value=2),  # max above min: small, so pods spill over
        st.sampled_from([2, 4]),  # cpu per node
    ),
    min_size=2,
    max_size=3,
)


@settings(max_examples=60, deadline=None)
@given(
    specs=_pool_specs,
    failing=st.sets(st.integers(min_value=0, max_value=2), max_size=1),
    load=st.lists(st.integers(min_value=1, max_value=4), min_size=4, max_size=20),
    steps=st.lists(st.integers(min_value=1, max_value=40), min_size=8, max_size=12),
    load_falls_at=st.integers(min_value=2, max_value=4),
    blocked=st.sets(st.integers(min_value=1, max_value=6), max_size=2),
)
def test_pools_stay_within_bounds_shrink_in_reverse_and_decide_alike(
    *,
    specs: list[tuple[int, int, int, int]],
    failing: set[int],
    load: list[int],
    steps: list[int],
    load_falls_at: int,
    blocked: set[int],
) -> None:
    pools = [
        pool_of(f"pool-{i}", priority, low, low + extra, cpu)
        for i, (priority, low, extra, cpu) in enumerate(specs)
    ]
    by_name = {pool.name: pool for pool in pools}
    world = ToyCluster(
        pools=by_name,
        failing={f"pool-{i}" for i in failing},
        blocked_drains=blocked,
        pods={f"p{i:02d}": pod_of(f"p{i:02d}", cpu) for i, cpu in enumerate(load)},
    )
    scaler, twin = Autoscaler(), Autoscaler()
    rank = {p.name: (-p.priority, p.name) for p in pools}
    backoff: dict[str, float] = {}
    events: list[Event] = []
    now = T0
    for index, dt in enumerate(steps):
        now += dt
        if index == load_falls_at:
            world.pods.clear()
        nodes, pods = list(world.nodes.values()), list(world.pods.values())
        decision = scaler.step(now=now, pools=pools, nodes=nodes, pods=pods, events=events)
        shuffled = twin.step(
            now=now, pools=pools[::-1], nodes=nodes[::-1], pods=pods[::-1], events=events
        )
        assert shuffled == decision

        for action in decision.actions:
            if isinstance(action, CreateNodes):
                assert backoff.get(action.pool, -1.0) <= now, "a pool backing off was asked"
        drained = [a for a in decision.actions if isinstance(a, CordonAndDrain)]
        # Scale-down order: the reverse of scale-up order across pools, newest node first.
        order = [(rank[a.pool], world.created(a.node)) for a in drained]
        assert order == sorted(order, reverse=True)
        for status in decision.pools:
            pool = by_name[status.name]
            if any(a.pool == status.name for a in drained):
                assert status.nodes - status.removing >= pool.min
            assert status.nodes + status.creating <= pool.max
            if status.backoff_until is not None:
                backoff[status.name] = status.backoff_until

        events = world.carry_out(decision, now)
        for pool in pools:
            assert world.pool_nodes(pool.name) <= pool.max
        world.schedule()


def test_the_toy_cluster_reaches_a_steady_state_with_its_pods_placed() -> None:
    # The property above must be able to fail: check the toy cluster really runs pods.
    pools = [pool_of("a", 1, 0, 3, 4), pool_of("b", 0, 0, 3, 4)]
    world = ToyCluster(
        pools={p.name: p for p in pools},
        failing={"a"},
        blocked_drains=set(),
        pods={f"p{i}": pod_of(f"p{i}", 2) for i in range(6)},
    )
    scaler = Autoscaler()
    events: list[Event] = []
    for step in range(5):
        decision = scaler.step(
            now=T0 + step,
            pools=pools,
            nodes=list(world.nodes.values()),
            pods=list(world.pods.values()),
            events=events,
        )
        events = world.carry_out(decision, T0 + step)
        world.schedule()
    assert world.pool_nodes("a") == 0
    assert world.pool_nodes("b") == 3
    assert all(p["spec"].get("nodeName") for p in world.pods.values())
