"""The node pool autoscaler: one sans-IO state machine (no I/O, no clock, no randomness).

The driver (the cluster-mode agent) calls ``Autoscaler.step(now=..., pools=..., nodes=...,
pods=..., events=...)`` with its watch caches (plain dicts as the API server returns them) and
the outcomes of what it did since the last step; it carries out the returned actions, turns the
reasons into Kubernetes Events and conditions, and calls again at ``wake_at`` or on any change.

Rules:

* A node belongs to the pool named by its label ``elastic.edgefleet.io/pool``; nodes of no
  known pool are never touched. Pools grow in ``scale_up_order`` (priority high to low, ties by
  name) and shrink in exactly the reverse order.
* A pool's size is its nodes (not being deleted), plus the nodes of a create in flight, plus
  nodes a provider reported created that have not registered yet. A create never takes a pool
  over ``max``; a pool below ``min`` is grown to ``min``.
* A node is Ready when its Ready condition is True and it carries none of the taints the
  control plane puts on a node it has not taken in or has lost (``NOT_READY_TAINTS``): kwok or
  a kubelet reports Ready a moment before the node lifecycle controller lifts
  ``node.kubernetes.io/not-ready``, and judged by that taint no pod fits the node.
* Scale-up: pending pods (no ``spec.nodeName``, condition PodScheduled=False with reason
  Unschedulable, not being deleted), at most ``max_pending_pods_per_step`` of them, taken by pod
  priority (high first), then age, namespace and name. A pod that fits the free room of an
  existing ready, schedulable node, or of a node on its way (in flight, unregistered, or
  registered but not Ready yet for less than ``node_ready_seconds``), starts nothing: the
  scheduler or the coming node will take it (this is what keeps a second step from adding a
  second node for the same pods). A node a pending pod is counted onto (existing, or registered
  and on its way) is in use: its scale-down timers restart and it is not removed, so a scale-up
  is neither undone while its node registers nor repeated. Else it goes to the first pool in
  order whose new node fits it (fit.py) and that has room below ``max``, first-fit onto the
  nodes planned this step; pools backing off are skipped. If that first pool is busy (a create
  in flight) the pod waits for it rather than spilling over to a lower pool. At most
  ``max_nodes_created_per_step`` nodes are planned per step. One ``CreateNodes`` per pool with
  its count. Only fit.py's filters are simulated (requests, taints, node selector and affinity;
  not pod affinity, topology spread, host ports or volumes): a pod the scheduler refuses for
  another reason but that fits an existing node by these rules starts nothing.
* Provider outcomes: ``CREATED`` (with the new nodes' names, maybe fewer than asked) ends the
  create and resets the pool's failures. ``FAILED`` and ``TIMED_OUT`` end it and back the pool
  off for ``backoff_initial_seconds`` doubling per consecutive failure up to
  ``backoff_max_seconds``; while backing off the pool is skipped, so its pods fall back to the
  next pool. A create with no outcome after the provider's timeout plus ``outcome_grace_seconds``
  counts as TIMED_OUT.
* Scale-down: a node whose only pods are DaemonSet and mirror pods is empty; one whose requests
  (cpu or memory, the larger share of allocatable) are below the pool's ``utilizationBelow`` is
  under-used. A node empty for ``emptyAfterSeconds``, or under-used for
  ``underUsedAfterSeconds`` and every pod of it has a controller and fits on another node, is a
  candidate. Timers count from the first step that saw the node so, and restart when it is
  not. Candidates are removed lowest-priority pool first (ties: reverse name order), newest
  node first (ties: reverse name order), never taking a pool below ``min``, never while that
  pool has a create in flight or unregistered nodes, at most ``max_nodes_removed_per_step``
  per step. The free room an under-used node's pods are counted onto is taken for the rest of
  the step, and a node counted on is not removed in the same step; nor is a node a pending
  pod was counted onto (removing it would only make the next step create one).
* Removing is ``CordonAndDrain`` then, when the driver reports ``DrainResult(drained=True)``,
  ``DeleteNode``. A drain that is blocked (a PodDisruptionBudget) or not reported within
  ``drain_timeout_seconds`` gives ``Uncordon`` and a warning; the node's timers restart. A
  delete that fails backs the pool off and is retried when the back-off ends.
* Bounded: at most ``max_pending_pods_per_step`` pods simulated, ``max_pod_reasons_per_step``
  pod Events and ``max_moves_simulated_per_step`` under-used nodes tried per step; what a cap
  leaves waits for a step ``recheck_seconds`` later. Messages quoted from providers are cut
  to ``MAX_MESSAGE`` characters.
* Every step is deterministic: same state and inputs (in any order), same outputs, in the
  same order. Nothing is random: ties go by name.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from fractions import Fraction
from typing import Any

from fleet_model.cluster import next_condition, put_condition
from fleet_model.elastic.fit import (
    NodeFacts,
    Resources,
    node_facts,
    pod_requests,
    pool_node_facts,
    resource_problem,
    selection_problem,
    total_requests,
)
from fleet_model.elastic.nodepool import (
    MAX_POOL_NODES,
    POOL_LABEL,
    CommandProvider,
    NodePool,
    scale_down_order,
    scale_up_order,
)
from fleet_model.times import format_time, parse_time

__all__ = [
    "NOT_READY_TAINTS",
    "Action",
    "Autoscaler",
    "AutoscalerSettings",
    "CordonAndDrain",
    "CreateNodes",
    "CreateResult",
    "Decision",
    "DeleteNode",
    "DeleteResult",
    "DrainResult",
    "Event",
    "Outcome",
    "PoolStatus",
    "Reason",
    "Uncordon",
    "pool_status_document",
]

MAX_MESSAGE = 1024
"""Characters kept of a provider's or drain's message (it goes into an Event)."""
NOT_READY_TAINTS = frozenset(
    {
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/unreachable",
        "node.kubernetes.io/network-unavailable",
        "node.cloudprovider.kubernetes.io/uninitialized",
    }
)
"""Taints that make a node with Ready=True not ready yet (or no more): the control plane's,
never a pool's own."""


@dataclass(frozen=True, kw_only=True, slots=True)
class AutoscalerSettings:
    max_nodes_created_per_step: int = 50
    """Nodes planned in one step over all pools: bounds one mistake's bill, yet 500 pods of
    ten per node need a single step."""
    max_pending_pods_per_step: int = 1000
    """Pending pods simulated per step; the rest wait for the next step (woken at once)."""
    max_pod_reasons_per_step: int = 100
    """Pod Events (NotTriggerScaleUp) per step: 500 pods that fit nowhere must not become 500
    Events every step; the first ones (by the pending order) say what the rest would."""
    max_nodes_removed_per_step: int = 10
    """Nodes cordoned and drained in one step (Cluster Autoscaler removes up to 10 empty ones)."""
    backoff_initial_seconds: float = 30.0
    """Seconds a pool is skipped after its provider's first failure."""
    backoff_max_seconds: float = 600.0
    """Doubling stops here: a pool down for long is retried every ten minutes."""
    kwok_timeout_seconds: float = 30.0
    """Seconds a kwok create may take (writing Node objects; the command provider has its own)."""
    outcome_grace_seconds: float = 30.0
    """Seconds past the provider's timeout before a create with no outcome counts as timed out
    (the driver kills the command at its timeout, so an outcome should always come)."""
    node_registration_seconds: float = 300.0
    """Seconds a created node may take to show up as a Node object before it stops counting."""
    node_ready_seconds: float = 300.0
    """Seconds a new, not yet Ready node of a pool counts as capacity on its way."""
    drain_timeout_seconds: float = 600.0
    """Seconds a drain may take before the node is uncordoned and the removal given up."""
    max_moves_simulated_per_step: int = 50
    """Under-used nodes whose pods are test-moved elsewhere in one step (each costs a pass
    over every node); the rest wait for the next step."""
    recheck_seconds: float = 1.0
    """Seconds to the next step when pods were left for later (per-step caps)."""

    def __post_init__(self) -> None:
        for name, value in (
            ("max_nodes_created_per_step", self.max_nodes_created_per_step),
            ("max_pending_pods_per_step", self.max_pending_pods_per_step),
            ("max_pod_reasons_per_step", self.max_pod_reasons_per_step),
            ("max_nodes_removed_per_step", self.max_nodes_removed_per_step),
            ("max_moves_simulated_per_step", self.max_moves_simulated_per_step),
        ):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, not {value}")
        for name, seconds in (
            ("backoff_initial_seconds", self.backoff_initial_seconds),
            ("backoff_max_seconds", self.backoff_max_seconds),
            ("kwok_timeout_seconds", self.kwok_timeout_seconds),
            ("outcome_grace_seconds", self.outcome_grace_seconds),
            ("node_registration_seconds", self.node_registration_seconds),
            ("node_ready_seconds", self.node_ready_seconds),
            ("drain_timeout_seconds", self.drain_timeout_seconds),
            ("recheck_seconds", self.recheck_seconds),
        ):
            if not 0 < seconds < math.inf:
                raise ValueError(f"{name} must be a positive number of seconds, not {seconds}")


# ---------------------------------------------------------------- inputs


class Outcome(StrEnum):
    CREATED = "Created"
    DELETED = "Deleted"
    FAILED = "Failed"
    TIMED_OUT = "TimedOut"


@dataclass(frozen=True, kw_only=True, slots=True)
class CreateResult:
    """What came of a ``CreateNodes``: CREATED (``nodes``: the names made), FAILED, TIMED_OUT."""

    pool: str
    outcome: Outcome
    nodes: tuple[str, ...] = ()
    message: str = ""


@dataclass(frozen=True, kw_only=True, slots=True)
class DeleteResult:
    """What came of a ``DeleteNode``: DELETED, FAILED or TIMED_OUT."""

    node: str
    outcome: Outcome
    message: str = ""


@dataclass(frozen=True, kw_only=True, slots=True)
class DrainResult:
    """What came of a ``CordonAndDrain``: every pod evicted, or not.

    ``message`` says why not: a PodDisruptionBudget's refusal as the Eviction API gave it.
    """

    node: str
    drained: bool
    message: str = ""


Event = CreateResult | DeleteResult | DrainResult


# ---------------------------------------------------------------- outputs


@dataclass(frozen=True, kw_only=True, slots=True)
class CreateNodes:
    pool: str
    count: int


@dataclass(frozen=True, kw_only=True, slots=True)
class CordonAndDrain:
    node: str
    pool: str


@dataclass(frozen=True, kw_only=True, slots=True)
class DeleteNode:
    node: str
    pool: str


@dataclass(frozen=True, kw_only=True, slots=True)
class Uncordon:
    node: str
    pool: str


Action = CreateNodes | CordonAndDrain | DeleteNode | Uncordon


@dataclass(frozen=True, kw_only=True, slots=True)
class Reason:
    """One thing worth an Event: about ``kind``/``name`` (NodePool, Node or Pod)."""

    kind: str
    name: str
    namespace: str = ""
    reason: str
    """CamelCase, as Kubernetes Events' reasons are."""
    message: str
    warning: bool = False


@dataclass(frozen=True, kw_only=True, slots=True)
class PoolStatus:
    """A pool's figures after the step, for its status and conditions."""

    name: str
    nodes: int
    """Registered nodes, those being removed included."""
    creating: int
    """Nodes of a create in flight plus created nodes not registered yet."""
    removing: int
    backoff_until: float | None
    """When a failed pool is tried again; None when it is not backing off."""
    last_error: str = ""
    """What the provider's last failure said ("" once a create succeeds)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Decision:
    actions: tuple[Action, ...]
    reasons: tuple[Reason, ...]
    pools: tuple[PoolStatus, ...]
    wake_at: float | None
    """Call ``step`` again at this time at the latest (None: only on change)."""


# ---------------------------------------------------------------- state


class _Phase(StrEnum):
    DRAINING = "draining"
    DELETING = "deleting"


@dataclass(kw_only=True, slots=True)
class _PoolState:
    in_flight: int = 0
    in_flight_deadline: float = 0.0
    expected: dict[str, float] = field(default_factory=dict)
    """Created node name -> when it stops counting if it never registers."""
    failures: int = 0
    backoff_until: float = -math.inf
    last_error: str = ""


@dataclass(kw_only=True, slots=True)
class _NodeState:
    pool: str
    empty_since: float | None = None
    under_since: float | None = None
    phase: _Phase | None = None
    deadline: float = math.inf
    """Draining: when the drain is given up. Deleting: when DeleteNode is sent again."""


@dataclass(kw_only=True, slots=True)
class _Node:
    name: str
    pool: str
    facts: NodeFacts
    created: float
    ready: bool
    pods: list[Mapping[str, Any]] = field(default_factory=list)
    used: Resources = field(default_factory=dict)
    """The requests of ``pods``, summed once per step."""


@dataclass(kw_only=True, slots=True)
class _Bin:
    """A node's free room while a step packs pods onto it."""

    facts: NodeFacts
    free: dict[str, int]
    """Allocatable minus requests, in the scheduler's units (cpu in millicores, the rest in
    whole units, each rounded up as MilliValue/Value do): ints, so packing 500 pods is fast."""
    node: str | None = None
    """The existing (maybe still registering) node this is the room of; None: a planned one."""


def _whole(resources: Mapping[str, Fraction]) -> dict[str, int]:
    return {
        name: math.ceil(amount * 1000) if name == "cpu" else math.ceil(amount)
        for name, amount in resources.items()
    }


def _bin(facts: NodeFacts, used: Mapping[str, Fraction], node: str | None = None) -> _Bin:
    free = _whole(facts.allocatable)
    for name, amount in _whole(used).items():
        free[name] = free.get(name, 0) - amount
    return _Bin(facts=facts, free=free, node=node)


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _meta(obj: Mapping[str, Any]) -> dict[str, Any]:
    return _dict(obj.get("metadata"))


def _created(obj: Mapping[str, Any]) -> float:
    return parse_time(_meta(obj).get("creationTimestamp")) or 0.0


def _pod_key(pod: Mapping[str, Any]) -> str:
    meta = _meta(pod)
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


def _is_pending_unschedulable(pod: Mapping[str, Any]) -> bool:
    if _dict(pod.get("spec")).get("nodeName") or _meta(pod).get("deletionTimestamp"):
        return False
    conditions = _dict(pod.get("status")).get("conditions")
    return any(
        _dict(c).get("type") == "PodScheduled"
        and _dict(c).get("status") == "False"
        and _dict(c).get("reason") == "Unschedulable"
        for c in (conditions if isinstance(conditions, list) else [])
    )


def _is_running_on_node(pod: Mapping[str, Any]) -> bool:
    phase = _dict(pod.get("status")).get("phase")
    return bool(_dict(pod.get("spec")).get("nodeName")) and phase not in {"Succeeded", "Failed"}


def _controller_kind(pod: Mapping[str, Any]) -> str | None:
    owners = _meta(pod).get("ownerReferences")
    for owner in owners if isinstance(owners, list) else []:
        if _dict(owner).get("controller") is True:
            return str(_dict(owner).get("kind", ""))
    return None


def _is_node_bound(pod: Mapping[str, Any]) -> bool:
    """A DaemonSet or mirror (static) pod: it lives and dies with its node."""
    annotations = _dict(_meta(pod).get("annotations"))
    return _controller_kind(pod) == "DaemonSet" or "kubernetes.io/config.mirror" in annotations


def _is_ready(node: Mapping[str, Any]) -> bool:
    taints = _dict(node.get("spec")).get("taints")
    if any(
        _dict(t).get("key") in NOT_READY_TAINTS
        for t in (taints if isinstance(taints, list) else [])
    ):
        return False
    conditions = _dict(node.get("status")).get("conditions")
    return any(
        _dict(c).get("type") == "Ready" and _dict(c).get("status") == "True"
        for c in (conditions if isinstance(conditions, list) else [])
    )


def _pod_priority(pod: Mapping[str, Any]) -> int:
    priority = _dict(pod.get("spec")).get("priority")
    return priority if isinstance(priority, int) and not isinstance(priority, bool) else 0


def _utilization(node: _Node) -> Fraction:
    shares = [
        node.used.get(name, Fraction(0)) / node.facts.allocatable[name]
        for name in ("cpu", "memory")
        if node.facts.allocatable.get(name, Fraction(0)) > 0
    ]
    return max(shares, default=Fraction(0))


def _subtract_fits(
    bins: list[_Bin], pod: Mapping[str, Any], requests: dict[str, int], seen: dict[int, bool]
) -> _Bin | None:
    """First-fit ``pod`` into ``bins``: the bin that takes it (its room taken), or None.

    ``requests`` in ``_Bin.free``'s units. Resources first (cheap), then selection, remembered
    in ``seen`` per facts object: the nodes a pool would create share one, so a pod is judged
    once per pool, not once per node.
    """
    for room in bins:
        free = room.free
        if any(free.get(name, 0) < amount for name, amount in requests.items()):
            continue
        key = id(room.facts)
        if key not in seen:
            seen[key] = selection_problem(pod, room.facts) is None
        if seen[key]:
            for name, amount in requests.items():
                free[name] -= amount
            return room
    return None


@dataclass(kw_only=True, slots=True)
class _Step:
    """What one step works on and what it has decided so far."""

    now: float
    known: dict[str, NodePool]
    templates: dict[str, NodeFacts] = field(default_factory=dict)
    """The facts of a node each pool would create (one object per pool and step)."""
    seen: dict[str, _Node] = field(default_factory=dict)
    actions: list[Action] = field(default_factory=list)
    reasons: list[Reason] = field(default_factory=list)
    later: bool = False
    """Something was left for a later step (a per-step cap): wake again soon."""
    pod_events_left: int = 0
    wanted: set[str] = field(default_factory=set)
    """Existing nodes a pending pod was counted onto: not removed in this step."""

    def pool_event(self, pool: str, reason: str, message: str, *, warning: bool = False) -> None:
        self.reasons.append(
            Reason(kind="NodePool", name=pool, reason=reason, message=message, warning=warning)
        )

    def node_event(self, node: str, reason: str, message: str, *, warning: bool = False) -> None:
        self.reasons.append(
            Reason(kind="Node", name=node, reason=reason, message=message, warning=warning)
        )

    def pod_event(self, pod: Mapping[str, Any], reason: str, message: str) -> None:
        if self.pod_events_left <= 0:
            return  # the same pods are reported again on a later step
        self.pod_events_left -= 1
        meta = _meta(pod)
        self.reasons.append(
            Reason(
                kind="Pod",
                name=str(meta.get("name", "")),
                namespace=str(meta.get("namespace", "")),
                reason=reason,
                message=message[:MAX_MESSAGE],
                warning=True,
            )
        )


class Autoscaler:
    """The state that lasts between steps: creates in flight, back-offs, node timers."""

    def __init__(self, settings: AutoscalerSettings | None = None) -> None:
        self.settings = settings or AutoscalerSettings()
        self._pools: dict[str, _PoolState] = {}
        self._nodes: dict[str, _NodeState] = {}

    # ------------------------------------------------------------ the step

    def step(
        self,
        *,
        now: float,
        pools: Sequence[NodePool],
        nodes: Iterable[Mapping[str, Any]],
        pods: Iterable[Mapping[str, Any]],
        events: Iterable[Event] = (),
    ) -> Decision:
        """Apply ``events``, then decide; see the rules at the top of the module."""
        known = {pool.name: pool for pool in scale_up_order(pools)}
        templates = {name: pool_node_facts(pool) for name, pool in known.items()}
        step = _Step(
            now=now,
            known=known,
            templates=templates,
            pod_events_left=self.settings.max_pod_reasons_per_step,
        )
        for name in step.known:
            self._pools.setdefault(name, _PoolState())
        for event in events:
            if isinstance(event, CreateResult):
                self._created(step, event)
            elif isinstance(event, DrainResult):
                self._drained(step, event)
            else:
                self._deleted(step, event)
        for name in [n for n in self._pools if n not in known]:
            if not self._pools[name].in_flight and not self._pools[name].expected:
                del self._pools[name]  # a deleted pool: nothing of it is on its way
        self._index_nodes(step, nodes)
        pending = self._index_pods(step, pods)
        self._deadlines(step)
        self._scale_up(step, pending)
        self._scale_down(step)
        return Decision(
            actions=tuple(step.actions),
            reasons=tuple(step.reasons),
            pools=tuple(self._status(step, name) for name in step.known),
            wake_at=self._wake_at(step),
        )

    # ------------------------------------------------------------ events

    def _backoff(self, name: str, now: float, why: str) -> float:
        state = self._pools.setdefault(name, _PoolState())
        state.failures += 1
        state.last_error = why[:MAX_MESSAGE]
        delay = min(
            self.settings.backoff_max_seconds,
            self.settings.backoff_initial_seconds * 2 ** min(state.failures - 1, 32),
        )
        state.backoff_until = now + delay
        return state.backoff_until

    def _created(self, step: _Step, event: CreateResult) -> None:
        state = self._pools.setdefault(event.pool, _PoolState())
        asked, state.in_flight = state.in_flight, 0
        if event.outcome is Outcome.CREATED:
            state.failures = 0
            state.backoff_until = -math.inf
            state.last_error = ""
            deadline = step.now + self.settings.node_registration_seconds
            # A late outcome (its create timed out here already) still made real nodes.
            made = event.nodes[: asked or MAX_POOL_NODES]
            for name in made:
                state.expected[name] = deadline
            step.pool_event(event.pool, "NodesCreated", f"created {len(made)} of {asked} nodes")
            return
        why = f"create of {asked} nodes: {event.message[:MAX_MESSAGE] or event.outcome.value}"
        until = self._backoff(event.pool, step.now, why)
        timed_out = event.outcome is Outcome.TIMED_OUT
        step.pool_event(
            event.pool,
            "ProviderTimedOut" if timed_out else "ProviderFailed",
            f"{why}; pool skipped for {until - step.now:g}s",
            warning=True,
        )

    def _drained(self, step: _Step, event: DrainResult) -> None:
        node = self._nodes.get(event.node)
        if node is None or node.phase is not _Phase.DRAINING:
            return
        if event.drained:
            self._delete(step, event.node, node)
        else:
            self._give_up_drain(step, event.node, node, "DrainBlocked", event.message)

    def _deleted(self, step: _Step, event: DeleteResult) -> None:
        node = self._nodes.get(event.node)
        if node is None or node.phase is not _Phase.DELETING:
            return
        if event.outcome is Outcome.DELETED:
            node.deadline = math.inf  # gone from the node list soon; forgotten then
            return
        why = f"delete of {event.node}: {event.message[:MAX_MESSAGE] or event.outcome.value}"
        node.deadline = self._backoff(node.pool, step.now, why)
        step.node_event(event.node, "DeleteFailed", f"{why}; retried after the pool's back-off")

    def _provider_timeout(self, pool: NodePool | None) -> float:
        if pool is not None and isinstance(pool.provider, CommandProvider):
            return float(pool.provider.timeout_seconds)
        return self.settings.kwok_timeout_seconds

    def _delete(self, step: _Step, name: str, node: _NodeState) -> None:
        node.phase = _Phase.DELETING
        timeout = self._provider_timeout(step.known.get(node.pool))
        node.deadline = step.now + timeout + self.settings.outcome_grace_seconds
        step.actions.append(DeleteNode(node=name, pool=node.pool))

    @staticmethod
    def _give_up_drain(step: _Step, name: str, node: _NodeState, reason: str, why: str) -> None:
        node.phase = None
        node.deadline = math.inf
        node.empty_since = node.under_since = None  # wait a whole cool-down before a new try
        step.actions.append(Uncordon(node=name, pool=node.pool))
        step.node_event(
            name,
            reason,
            f"{why[:MAX_MESSAGE] or 'drain did not finish'}; node uncordoned and kept",
            warning=True,
        )

    # ------------------------------------------------------------ observing

    def _index_nodes(self, step: _Step, nodes: Iterable[Mapping[str, Any]]) -> None:
        seen: dict[str, _Node] = {}
        for doc in nodes:
            facts = node_facts(doc)
            if not facts.name:
                continue
            seen[facts.name] = _Node(
                name=facts.name,
                pool=facts.labels.get(POOL_LABEL, ""),
                facts=facts,
                created=_created(doc),
                ready=_is_ready(doc),
            )
        step.seen = dict(sorted(seen.items()))
        for name in [n for n in self._nodes if n not in seen or seen[n].pool not in step.known]:
            del self._nodes[name]
        for node in step.seen.values():
            if node.pool in step.known:
                self._nodes.setdefault(node.name, _NodeState(pool=node.pool))
        for pool_name, state in self._pools.items():
            for name, deadline in sorted(state.expected.items()):
                if name in seen:
                    del state.expected[name]
                elif deadline <= step.now:
                    del state.expected[name]
                    step.pool_event(
                        pool_name,
                        "NodeNotRegistered",
                        f"node {name} was created but never registered",
                        warning=True,
                    )

    @staticmethod
    def _index_pods(step: _Step, pods: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
        pending: list[Mapping[str, Any]] = []
        for pod in pods:
            if _is_running_on_node(pod):
                node = step.seen.get(str(_dict(pod.get("spec")).get("nodeName")))
                if node is not None:
                    node.pods.append(pod)
            elif _is_pending_unschedulable(pod):
                pending.append(pod)
        for node in step.seen.values():
            node.used = total_requests(node.pods)
        pending.sort(key=lambda pod: (-_pod_priority(pod), _created(pod), _pod_key(pod)))
        return pending

    def _deadlines(self, step: _Step) -> None:
        for name, state in self._pools.items():
            if state.in_flight and state.in_flight_deadline <= step.now:
                state.in_flight = 0
                why = "no outcome of the create in time"
                until = self._backoff(name, step.now, why)
                step.pool_event(
                    name,
                    "ProviderTimedOut",
                    f"{why}; pool skipped for {until - step.now:g}s",
                    warning=True,
                )
        for name, node in self._nodes.items():
            if node.deadline > step.now:
                continue
            if node.phase is _Phase.DRAINING:
                self._give_up_drain(step, name, node, "DrainTimedOut", "")
            elif node.phase is _Phase.DELETING:
                self._delete(step, name, node)

    # ------------------------------------------------------------ scale-up

    def _size(self, step: _Step, pool: str) -> int:
        """Nodes the pool has or will have, not counting those being removed."""
        state = self._pools[pool]
        present = sum(
            1
            for node in step.seen.values()
            if node.pool == pool and self._nodes[node.name].phase is None
        )
        return present + state.in_flight + len(state.expected)

    def _leaving(self, name: str) -> bool:
        state = self._nodes.get(name)
        return state is not None and state.phase is not None

    def _bins(self, step: _Step) -> list[_Bin]:
        """Room on existing nodes, then on nodes on their way, in a fixed order."""
        bins: list[_Bin] = []
        coming: list[_Bin] = []
        for node in step.seen.values():
            if self._leaving(node.name):
                continue
            if node.ready and not node.facts.unschedulable:
                bins.append(_bin(node.facts, node.used, node.name))
            elif (
                node.pool in step.known
                and not node.ready
                and step.now - node.created < self.settings.node_ready_seconds
            ):
                # A registering node carries not-ready taints: judge it by its pool's shape.
                template = step.templates[node.pool]
                coming.append(_bin(template, node.used, node.name))
        for name, template in step.templates.items():
            state = self._pools[name]
            count = state.in_flight + len(state.expected)
            coming.extend(_bin(template, {}) for _ in range(count))
        return bins + coming

    def _scale_up(self, step: _Step, pending: list[Mapping[str, Any]]) -> None:
        plan = _Plan(
            cap=self.settings.max_nodes_created_per_step,
            room={name: pool.max - self._size(step, name) for name, pool in step.known.items()},
            bins=self._bins(step),
        )
        self._grow_to_min(step, plan)
        step.later = step.later or len(pending) > self.settings.max_pending_pods_per_step
        for pod in pending[: self.settings.max_pending_pods_per_step]:
            try:
                exact = pod_requests(pod)
            except ValueError as error:
                step.pod_event(pod, "NotTriggerScaleUp", f"unreadable requests: {error}")
                continue
            judged: dict[int, bool] = {}
            taken = _subtract_fits(plan.bins, pod, _whole(exact), judged)
            if taken is not None:
                if taken.node is not None:
                    step.wanted.add(taken.node)
                continue
            why = self._place(step, plan, pod, exact, judged)
            if why:
                step.pod_event(pod, "NotTriggerScaleUp", "; ".join(why))
        for name, new in plan.planned.items():
            if not new:
                continue
            state = self._pools[name]
            state.in_flight = len(new)
            timeout = self._provider_timeout(step.known[name])
            state.in_flight_deadline = step.now + timeout + self.settings.outcome_grace_seconds
            step.actions.append(CreateNodes(pool=name, count=len(new)))
            step.pool_event(name, "ScaleUp", f"creating {len(new)} nodes")

    def _grow_to_min(self, step: _Step, plan: _Plan) -> None:
        for name, pool in step.known.items():
            short = pool.min - self._size(step, name)
            if short <= 0 or self._backing_off(step, name) or self._pools[name].in_flight:
                continue
            count = plan.open(name, step.templates[name], short)
            step.later = step.later or count < short
            if count:
                step.pool_event(name, "BelowMin", f"adding {count} nodes to reach min {pool.min}")

    def _backing_off(self, step: _Step, name: str) -> bool:
        return self._pools[name].backoff_until > step.now

    def _place(
        self,
        step: _Step,
        plan: _Plan,
        pod: Mapping[str, Any],
        requests: Resources,
        judged: dict[int, bool],
    ) -> list[str]:
        """Put ``pod`` on a planned node of the first pool that takes it; [] or why none does."""
        whole = _whole(requests)
        why: list[str] = []
        for name, pool in step.known.items():
            template = step.templates[name]
            problem = selection_problem(pod, template) or resource_problem(requests, template, {})
            if problem is not None:
                why.append(f"{name}: {problem}")
            elif self._backing_off(step, name):
                why.append(f"{name}: backing off after a provider failure")
            elif _subtract_fits(plan.planned.get(name, []), pod, whole, judged) is not None:
                return []
            elif plan.room[name] <= 0:
                why.append(f"{name}: at max ({pool.max} nodes)")
            elif self._pools[name].in_flight:
                # Wait for the create in flight (its outcome wakes us); never spill past a
                # slow pool to a lower one.
                return []
            elif plan.cap <= 0:
                step.later = True
                return []
            else:
                plan.open(name, template, 1)
                _subtract_fits(plan.planned[name][-1:], pod, whole, judged)
                return []
        return why or ["no node pools"]

    # ------------------------------------------------------------ scale-down

    def _timers(self, step: _Step, node: _Node, pool: NodePool) -> str | None:
        """Update the node's timers; "empty" or "under-used" once it is a candidate."""
        state = self._nodes[node.name]
        if node.name in step.wanted:
            # Pending pods count on it (maybe while it registers): in use, whatever it runs.
            state.empty_since = state.under_since = None
            return None
        workload = [pod for pod in node.pods if not _is_node_bound(pod)]
        if workload:
            state.empty_since = None
        elif state.empty_since is None:
            state.empty_since = step.now
        under = pool.scale_down.utilization_below > 0 and (
            _utilization(node) < pool.scale_down.utilization_below
        )
        if not under:
            state.under_since = None
        elif state.under_since is None:
            state.under_since = step.now
        if state.empty_since is not None and (
            step.now - state.empty_since >= pool.scale_down.empty_after_seconds
        ):
            return "empty"
        if state.under_since is not None and (
            step.now - state.under_since >= pool.scale_down.under_used_after_seconds
        ):
            return "under-used"
        return None

    def _movable(
        self, node: _Node, destinations: dict[str, _Bin], receivers: set[str]
    ) -> str | None:
        """Why the node's pods cannot move elsewhere, or None if they all fit on other nodes.

        ``destinations`` is the free room of the nodes that stay, shared by the whole step: the
        room a removal counts on is taken (and its nodes become ``receivers``), so two removals
        never count on the same room, and a node counted on is not removed in the same step.
        """
        trial = {
            name: _Bin(facts=room.facts, free=dict(room.free))
            for name, room in destinations.items()
            if name != node.name
        }
        bins = list(trial.values())
        for pod in node.pods:
            if _is_node_bound(pod):
                continue
            if _controller_kind(pod) is None:
                return f"pod {_pod_key(pod)} has no controller to recreate it"
            try:
                requests = _whole(pod_requests(pod))
            except ValueError:
                return f"pod {_pod_key(pod)} has unreadable requests"
            if _subtract_fits(bins, pod, requests, {}) is None:
                return f"pod {_pod_key(pod)} fits on no other node"
        for name, room in trial.items():
            if room.free != destinations[name].free:
                receivers.add(name)
        destinations.update(trial)
        return None

    def _candidates(self, step: _Step) -> list[tuple[_Node, str]]:
        """Nodes due for removal, in removal order (rules on top)."""
        order = {
            pool.name: index for index, pool in enumerate(scale_down_order(step.known.values()))
        }
        candidates: list[tuple[_Node, str]] = []
        for node in step.seen.values():
            pool = step.known.get(node.pool)
            if pool is None or self._leaving(node.name):
                continue
            kind = self._timers(step, node, pool)
            if kind is not None:
                candidates.append((node, kind))
        # Reverse of scale-up order, newest first; ties by name, reversed like the pools'.
        candidates.sort(key=lambda c: (order[c[0].pool], -c[0].created, _Reversed(c[0].name)))
        return candidates

    def _scale_down(self, step: _Step) -> None:
        remaining = {name: self._size(step, name) for name in step.known}
        destinations = {
            node.name: _bin(node.facts, node.used)
            for node in step.seen.values()
            if node.ready and not node.facts.unschedulable and not self._leaving(node.name)
        }
        receivers: set[str] = set()
        removed = simulated = 0
        for node, kind in self._candidates(step):
            if removed >= self.settings.max_nodes_removed_per_step:
                step.later = True
                return
            pool, state = step.known[node.pool], self._pools[node.pool]
            if state.in_flight or state.expected:
                continue  # a create in flight: pods may be on their way to this node
            if remaining[node.pool] - 1 < pool.min or node.name in receivers | step.wanted:
                continue
            if kind == "under-used":
                if simulated >= self.settings.max_moves_simulated_per_step:
                    step.later = True
                    continue
                simulated += 1
                if self._movable(node, destinations, receivers) is not None:
                    continue
            destinations.pop(node.name, None)
            remaining[node.pool] -= 1
            removed += 1
            node_state = self._nodes[node.name]
            node_state.phase = _Phase.DRAINING
            node_state.deadline = step.now + self.settings.drain_timeout_seconds
            step.actions.append(CordonAndDrain(node=node.name, pool=node.pool))
            step.node_event(
                node.name,
                "ScaleDown",
                f"{kind} node of pool {node.pool}: cordon, drain, then delete",
            )

    # ------------------------------------------------------------ status and time

    def _status(self, step: _Step, name: str) -> PoolStatus:
        state = self._pools[name]
        mine = [node for node in step.seen.values() if node.pool == name]
        return PoolStatus(
            name=name,
            nodes=len(mine),
            creating=state.in_flight + len(state.expected),
            removing=sum(1 for node in mine if self._leaving(node.name)),
            backoff_until=state.backoff_until if state.backoff_until > step.now else None,
            last_error=state.last_error,
        )

    def _node_deadlines(self, step: _Step) -> list[float]:
        times: list[float] = []
        for node in self._nodes.values():
            pool = step.known.get(node.pool)
            if node.phase is not None:
                times.append(node.deadline)
            elif pool is not None:
                if node.empty_since is not None:
                    times.append(node.empty_since + pool.scale_down.empty_after_seconds)
                if node.under_since is not None:
                    times.append(node.under_since + pool.scale_down.under_used_after_seconds)
        return times

    def _wake_at(self, step: _Step) -> float | None:
        times = self._node_deadlines(step)
        if step.later:
            times.append(step.now + self.settings.recheck_seconds)
        for state in self._pools.values():
            if state.in_flight:
                times.append(state.in_flight_deadline)
            times.extend(state.expected.values())
            times.append(state.backoff_until)
        future = [t for t in times if step.now < t < math.inf]
        return min(future) if future else None


@dataclass(kw_only=True, slots=True)
class _Plan:
    """The nodes a step plans to create, per pool, and what room is left."""

    cap: int
    """Nodes that may still be planned this step."""
    room: dict[str, int]
    """Nodes each pool may still grow by before its max."""
    bins: list[_Bin]
    """Existing and coming nodes' free room."""
    planned: dict[str, list[_Bin]] = field(default_factory=dict)

    def open(self, pool: str, template: NodeFacts, count: int) -> int:
        """Plan up to ``count`` new nodes of ``pool``; how many were planned."""
        count = max(0, min(count, self.cap, self.room[pool]))
        self.planned.setdefault(pool, []).extend(_bin(template, {}) for _ in range(count))
        self.cap -= count
        self.room[pool] -= count
        return count


@dataclass(frozen=True, slots=True)
class _Reversed:
    """Sorts strings in reverse order inside an ascending sort key."""

    text: str

    def __lt__(self, other: _Reversed) -> bool:
        return self.text > other.text


def pool_status_document(
    pool: NodePool,
    status: PoolStatus,
    *,
    conditions: Iterable[Mapping[str, Any]] = (),
    now: float,
) -> dict[str, Any]:
    """The NodePool's ``status`` for ``status`` (``conditions``: the ones stored now).

    Conditions: ``ScalingUp`` (a create in flight or nodes not registered yet),
    ``ProviderReady`` (False while the pool backs off after a failure, with what the provider
    said), ``AtMax`` (no room to grow). ``lastTransitionTime`` moves only when a status does.
    """
    current = list(conditions)
    staying = status.nodes - status.removing + status.creating
    if status.creating:
        scaling = ("ScalingUp", True, "Creating", f"{status.creating} nodes on their way")
    else:
        scaling = ("ScalingUp", False, "Idle", "no create in flight")
    if status.backoff_until is not None:
        retry = format_time(status.backoff_until)
        provider = ("ProviderReady", False, "BackingOff", f"{status.last_error}; next try {retry}")
    elif status.last_error:
        provider = ("ProviderReady", True, "Retrying", f"last failure: {status.last_error}")
    else:
        provider = ("ProviderReady", True, "Ready", "no failure since the last create")
    full = staying >= pool.max
    at_max = ("AtMax", full, "AtMax" if full else "BelowMax", f"{staying} of {pool.max} nodes")
    wanted = [scaling, provider, at_max]
    out: list[dict[str, Any]] = [dict(c) for c in current]
    for type_, true, reason, message in wanted:
        condition = next_condition(
            current,
            type_=type_,
            status="True" if true else "False",
            reason=reason,
            message=message[:MAX_MESSAGE],
            now=now,
        )
        out = put_condition(out, condition)
    return {
        "nodes": status.nodes,
        "creating": status.creating,
        "removing": status.removing,
        "conditions": out,
    }
