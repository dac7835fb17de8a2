"""Would a pod fit on a node: the part of kube-scheduler's filters the autoscaler simulates.

Rules (k8s.io/kubernetes ``pkg/scheduler/framework/plugins``, checked in this order; the first
that fails is the reason returned):

1. ``NodeUnschedulable``: a cordoned node (``spec.unschedulable``) takes only pods that
   tolerate ``node.kubernetes.io/unschedulable:NoSchedule``.
2. ``NodeAffinity``: every ``spec.nodeSelector`` pair is a node label, and, when the pod has
   required node affinity, at least one of its ``nodeSelectorTerms`` matches (terms are ORed,
   the expressions of a term ANDed; an empty term matches nothing). Operators In, NotIn,
   Exists, DoesNotExist, Gt, Lt (``fleet_model.labels`` semantics: NotIn and DoesNotExist
   match a node without the label; Gt/Lt need an integer label). ``matchFields`` knows
   ``metadata.name`` only; a node not created yet has no name, so such a term never matches it.
3. ``TaintToleration``: every NoSchedule and NoExecute taint is tolerated (PreferNoSchedule is
   a preference, not a filter). A toleration with an empty key and operator Exists tolerates
   every taint; an empty effect matches every effect; Exists ignores the value; Equal (the
   default) needs the same value.
4. ``NodeResourcesFit``: requests of the pod plus those of the pods already on the node do not
   exceed the node's allocatable, for every resource the pod asks for (``pods`` counts 1 per
   pod). A pod's request is, per resource, max(sum of its containers + its sidecars (init
   containers with ``restartPolicy: Always``), every plain init container + the sidecars
   started before it), plus ``spec.overhead`` — the scheduler's rule (KEP-753).

Inputs are plain dicts as the API server returns them; quantities are exact (``Fraction``).
A quantity the API server would not have accepted raises ``ValueError`` from
``pod_requests``; the fit functions turn it into a reason instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from fleet_model.cluster import parse_quantity
from fleet_model.elastic.nodepool import NodePool
from fleet_model.labels import LabelRequirement, Op

__all__ = [
    "UNSCHEDULABLE_TAINT",
    "NodeFacts",
    "Resources",
    "fit_problem",
    "node_facts",
    "pod_on_node_problem",
    "pod_requests",
    "pool_node_facts",
    "resource_problem",
    "selection_problem",
    "total_requests",
]

Resources = dict[str, Fraction]
"""Resource name (as in ``status.allocatable``: ``cpu`` in cores, ``memory`` in bytes, ``pods``)
to an exact amount."""

UNSCHEDULABLE_TAINT = "node.kubernetes.io/unschedulable"
MAX_CONTAINERS = 256
"""Containers (plain + init) counted per pod: the API server takes far fewer in practice."""
MAX_TERMS = 64
"""Node selector terms and expressions read per pod; a bound, not a Kubernetes limit."""
MAX_REASON = 200
"""Characters of an input quoted in a reason (it goes into an Event)."""
_FILTERING_EFFECTS = frozenset({"NoSchedule", "NoExecute"})
_OPERATORS = {
    "In": Op.IN,
    "NotIn": Op.NOT_IN,
    "Exists": Op.EXISTS,
    "DoesNotExist": Op.NOT_EXISTS,
    "Gt": Op.GREATER,
    "Lt": Op.LESS,
}


@dataclass(frozen=True, kw_only=True, slots=True)
class NodeFacts:
    """What fit needs of a node, existing or to be created."""

    name: str | None
    """None for a node a pool would create (its name is not known yet)."""
    labels: Mapping[str, str] = field(default_factory=dict)
    taints: tuple[tuple[str, str, str], ...] = ()
    """(key, value, effect) of each taint."""
    allocatable: Mapping[str, Fraction] = field(default_factory=dict)
    unschedulable: bool = False


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: object, limit: int) -> list[Any]:
    return value[:limit] if isinstance(value, list) else []


def _quantities(value: object) -> Resources:
    out: Resources = {}
    for name, text in _dict(value).items():
        out[str(name)] = parse_quantity(text)
    return out


def node_facts(node: Mapping[str, Any]) -> NodeFacts:
    """A Node object's facts; allocatable falls back to capacity; garbage amounts count as 0."""
    metadata, spec, status = (_dict(node.get(key)) for key in ("metadata", "spec", "status"))
    allocatable: Resources = {}
    source = _dict(status.get("allocatable")) or _dict(status.get("capacity"))
    for name, text in source.items():
        try:
            allocatable[str(name)] = parse_quantity(text)
        except ValueError:
            allocatable[str(name)] = Fraction(0)
    labels = {str(k): str(v) for k, v in _dict(metadata.get("labels")).items()}
    taints = tuple(
        (str(t.get("key", "")), str(t.get("value", "")), str(t.get("effect", "")))
        for t in _list(spec.get("taints"), MAX_TERMS)
        if isinstance(t, dict)
    )
    node_name = metadata.get("name")
    return NodeFacts(
        name=node_name if isinstance(node_name, str) else "",
        labels=labels,
        taints=taints,
        allocatable=allocatable,
        unschedulable=spec.get("unschedulable") is True,
    )


def pool_node_facts(pool: NodePool) -> NodeFacts:
    """The facts of a node ``pool`` would create."""
    return NodeFacts(
        name=None,
        labels=dict(pool.node.labels),
        taints=tuple((t.key, t.value, str(t.effect)) for t in pool.node.taints),
        allocatable=pool.node.allocatable(),
    )


# ---------------------------------------------------------------- requests


def _add(total: Resources, more: Mapping[str, Fraction]) -> None:
    for name, amount in more.items():
        total[name] = total.get(name, Fraction(0)) + amount


def _container_requests(container: object) -> Resources:
    resources = _dict(_dict(container).get("resources"))
    # Kubernetes defaults a missing request to the limit (the API server writes it on create).
    requests = _quantities(resources.get("limits")) | _quantities(resources.get("requests"))
    requests.pop("pods", None)
    return requests


def pod_requests(pod: Mapping[str, Any]) -> Resources:
    """What ``pod`` asks of a node, as the scheduler counts it (rule 4); ``pods`` is 1.

    Raises ValueError when a quantity is not one.
    """
    spec = _dict(pod.get("spec"))
    total: Resources = {}
    for container in _list(spec.get("containers"), MAX_CONTAINERS):
        _add(total, _container_requests(container))
    sidecars: Resources = {}
    init_peak: Resources = {}
    for container in _list(spec.get("initContainers"), MAX_CONTAINERS):
        requests = _container_requests(container)
        if _dict(container).get("restartPolicy") == "Always":
            _add(sidecars, requests)
            continue
        running = dict(sidecars)
        _add(running, requests)
        for name, amount in running.items():
            init_peak[name] = max(init_peak.get(name, Fraction(0)), amount)
    _add(total, sidecars)
    for name, amount in init_peak.items():
        total[name] = max(total.get(name, Fraction(0)), amount)
    _add(total, _quantities(spec.get("overhead")))
    total["pods"] = Fraction(1)
    return {name: amount for name, amount in total.items() if amount}


def total_requests(pods: Iterable[Mapping[str, Any]]) -> Resources:
    """The sum of ``pod_requests``; a pod with unreadable requests counts as one pod."""
    total: Resources = {}
    for pod in pods:
        try:
            _add(total, pod_requests(pod))
        except ValueError:
            _add(total, {"pods": Fraction(1)})
    return total


def resource_problem(
    requests: Mapping[str, Fraction], node: NodeFacts, used: Mapping[str, Fraction]
) -> str | None:
    """Why ``requests`` do not fit in ``node`` with ``used`` already taken, or None (rule 4)."""
    for name in sorted(requests):
        need = requests[name]
        free = node.allocatable.get(name, Fraction(0)) - used.get(name, Fraction(0))
        if need > free:
            return f"Insufficient {name}"
    return None


# ---------------------------------------------------------------- selection


def _requirement(expression: object) -> LabelRequirement | None:
    """A node selector requirement as a label requirement; None if malformed (matches nothing)."""
    item = _dict(expression)
    op = _OPERATORS.get(str(item.get("operator")))
    key = item.get("key")
    values = item.get("values") or []
    if op is None or not isinstance(key, str) or not isinstance(values, list):
        return None
    texts = tuple(str(v) for v in values[:MAX_TERMS])
    if op in {Op.GREATER, Op.LESS}:
        if len(texts) != 1:
            return None
        try:
            int(texts[0])
        except ValueError:
            return None
    return LabelRequirement(key, op, texts)


def _term_matches(term: object, node: NodeFacts) -> bool:
    item = _dict(term)
    expressions = _list(item.get("matchExpressions"), MAX_TERMS)
    fields = _list(item.get("matchFields"), MAX_TERMS)
    if not expressions and not fields:
        return False
    for expression in expressions:
        requirement = _requirement(expression)
        if requirement is None or not requirement.matches(node.labels):
            return False
    for expression in fields:
        requirement = _requirement(expression)
        if requirement is None or requirement.key != "metadata.name" or node.name is None:
            return False
        if not requirement.matches({"metadata.name": node.name}):
            return False
    return True


def _tolerates(tolerations: list[Any], key: str, value: str, effect: str) -> bool:
    for toleration in tolerations:
        item = _dict(toleration)
        if item.get("effect") not in (None, "", effect):
            continue
        operator = item.get("operator") or "Equal"
        wanted = item.get("key") or ""
        if not wanted:
            if operator == "Exists":
                return True
            continue
        if wanted != key:
            continue
        if operator == "Exists" or (operator == "Equal" and (item.get("value") or "") == value):
            return True
    return False


def selection_problem(pod: Mapping[str, Any], node: NodeFacts) -> str | None:
    """Why ``pod`` may not go to ``node`` whatever its free resources, or None (rules 1-3)."""
    spec = _dict(pod.get("spec"))
    tolerations = _list(spec.get("tolerations"), MAX_TERMS)
    if node.unschedulable and not _tolerates(tolerations, UNSCHEDULABLE_TAINT, "", "NoSchedule"):
        return "node is cordoned (unschedulable)"
    for key, value in sorted(_dict(spec.get("nodeSelector")).items()):
        if node.labels.get(key) != value:
            return f"nodeSelector {key}={value} does not match the node's labels"
    required = _dict(
        _dict(_dict(spec.get("affinity")).get("nodeAffinity")).get(
            "requiredDuringSchedulingIgnoredDuringExecution"
        )
    )
    if required:
        terms = _list(required.get("nodeSelectorTerms"), MAX_TERMS)
        if not any(_term_matches(term, node) for term in terms):
            return "required node affinity does not match the node"
    for key, value, effect in node.taints:
        if effect in _FILTERING_EFFECTS and not _tolerates(tolerations, key, value, effect):
            shown = f"{key}={value}" if value else key
            return f"untolerated taint {shown}:{effect}"
    return None


def pod_on_node_problem(
    pod: Mapping[str, Any], node: NodeFacts, used: Mapping[str, Fraction]
) -> str | None:
    """Why ``pod`` does not fit ``node`` where ``used`` is already requested, or None."""
    problem = selection_problem(pod, node)
    if problem is not None:
        return problem
    try:
        requests = pod_requests(pod)
    except ValueError as error:
        return f"unreadable resource requests: {str(error)[:MAX_REASON]}"
    return resource_problem(requests, node, used)


def fit_problem(
    pod: Mapping[str, Any],
    node: NodeFacts | NodePool,
    pods_on_node: Iterable[Mapping[str, Any]] = (),
) -> str | None:
    """Why ``pod`` would not fit on ``node`` next to ``pods_on_node``, or None when it fits.

    ``node`` is an existing node's facts (``node_facts``) or a pool, for a node it would create.
    """
    facts = pool_node_facts(node) if isinstance(node, NodePool) else node
    return pod_on_node_problem(pod, facts, total_requests(pods_on_node))
