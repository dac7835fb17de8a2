"""What a parsed ResourcePolicy does to pods: units, usage, webhook patch, deletion cost, status.

Pure: no I/O; time comes in as ``now``. Pods and nodes are plain dicts as the API server returns
them (``nodes`` is a map node name -> labels). The agent's webhook calls ``admit``; its
controllers call ``count_usage``, ``release_plan``, ``deletion_costs``, ``try_next`` and
``policy_status``.

Rules:

* A node is in the FIRST unit whose node selector matches its labels (``unit_of_node``).
* A pod counts for a unit of its group when it is bound to a node of that unit, or, while not
  yet bound, for the first unit the webhook allowed it (annotation ``elastic.edgefleet.io/unit``):
  a best guess, exact only once it is bound (see "Bursts" below). Terminating pods
  (``deletionTimestamp``) and finished ones (Succeeded, Failed) do not count, as in ACK.
  Pods governed by another policy (see ``policy.governing_policy``) do not count either.
* ``admit`` answers a pod's CREATE with an RFC 6902 JSON patch:

  - the annotation ``elastic.edgefleet.io/policy`` (the policy's name) marks the pod: a pod that
    has it is never patched again (idempotence; also how a user opts a pod out);
  - the allowed units are those not at their ``max`` for the pod's group, narrowed by
    ``whenTryNextUnits`` (policy module). Required node affinity confines the pod to nodes whose
    first unit is allowed: one term per allowed unit, with its selector and the negation of each
    earlier full unit that overlaps it. The pod's own required terms are kept: each is combined
    (ANDed) with each of ours, so none of the user's constraints is dropped;
  - preferred node affinity lists the allowed units in order, weights strictly decreasing
    within 1..100 (roughly geometric, 100 for the first: the scheduler normalises the
    NodeAffinity score by the best feasible node, so the ratio between neighbours is what
    makes it prefer the earlier unit). The pod's own preferred terms are kept, ours appended;
  - the annotation ``elastic.edgefleet.io/unit`` names the first allowed unit (counted for it
    until the pod is bound);
  - under TimeoutOrExceedMax, the annotation ``elastic.edgefleet.io/units-through`` names the
    last unit the policy's order let the pod try, units at their ``max`` included (``opening``):
    what a timeout of this pod must open past (``try_next``). The unit annotation cannot say it:
    it names the first allowed unit, which stays the first (a unit without ``max``) however far
    timeouts opened;
  - when every unit is at its ``max`` (or the units with room can only hold nodes that are
    in earlier, full units) the pod is admitted with the scheduling gate
    ``elastic.edgefleet.io/waiting-for-room`` and no affinity of ours: it stays Pending
    (``SchedulingGated``), deterministically, until the controller ``release``s it.

* Bursts. The webhook decides at creation, before the scheduler has bound the pods created
  just before; if an earlier unit without ``max`` lacks resources, pods it admitted there spill
  to a later unit past its ``max``. ``admit(hold=True)`` avoids that: every pod is admitted at
  the gate, and the controller's ``release_plan`` releases them oldest first, waiting while
  the pods in flight (released, not bound) could fill a unit that has a ``max``: the count of
  bound pods is exact, so ``max`` holds and units fill in order. Releasing sets the affinity
  within Kubernetes' rules for gated pods (required terms may only gain requirements): a held
  pod with its own required terms gets them combined with every unit at admission (their
  number is then fixed) and ``release`` closes the terms of units without room by adding a
  contradicting requirement.

* ``deletion_costs``: ``controller.kubernetes.io/pod-deletion-cost`` so a ReplicaSet's scale-in
  removes pods of the last unit first, and within a unit the newest first (creation time, then
  the larger name first: never at random). Cost = ``(MAX_UNITS - unit index) * COST_SPAN -
  position`` where position counts from the unit's oldest pod, per group; pods in no unit
  (pending, or on a node of no unit) have base 0. Only changed values are returned. Costs of
  older pods do not move when newer ones come or go, so scale-out and scale-in patch few pods.
* The ReplicaSet controller ranks unscheduled and not-ready pods before any cost: the order above
  holds among running pods, which is what a scale-in removes.
"""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fleet_model.cluster import next_condition, put_condition
from fleet_model.elastic.policy import (
    MAX_UNITS,
    GroupKey,
    ResourcePolicy,
    TryNextPolicy,
    disjoint,
    governing_policy,
    group_key,
    negate,
)
from fleet_model.labels import LabelRequirement, Op
from fleet_model.problems import escape
from fleet_model.times import parse_time

__all__ = [
    "ANNOTATION_POLICY",
    "ANNOTATION_TERMS",
    "ANNOTATION_THROUGH",
    "ANNOTATION_UNIT",
    "COST_SPAN",
    "DELETION_COST",
    "MAX_MERGED_TERMS",
    "MAX_RELEASES",
    "MAX_STATUS_GROUPS",
    "WAITING_GATE",
    "Admission",
    "Released",
    "TryNext",
    "Usage",
    "admit",
    "allowed_units",
    "count_usage",
    "deletion_costs",
    "invalid_status",
    "opened_from_status",
    "opening",
    "overlapping",
    "pod_unit",
    "policy_status",
    "preference_weights",
    "release",
    "release_plan",
    "releases",
    "try_next",
    "unit_of_node",
]

ANNOTATION_POLICY = "elastic.edgefleet.io/policy"
ANNOTATION_UNIT = "elastic.edgefleet.io/unit"
ANNOTATION_THROUGH = "elastic.edgefleet.io/units-through"
"""Under TimeoutOrExceedMax: the last unit a pod was let try when admitted or released."""
ANNOTATION_TERMS = "elastic.edgefleet.io/unit-terms"
"""On a held pod with its own required terms: the unit of each term ("-": the user's empty
term), so ``release`` can narrow them by additions only."""
WAITING_GATE = "elastic.edgefleet.io/waiting-for-room"
DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
COST_SPAN = 2**24
"""Deletion-cost room per unit: (MAX_UNITS + 1) spans fit in an int32, and no group has 16 M
pods in one unit (positions beyond are clamped, so only order among those would be lost)."""
MAX_MERGED_TERMS = 256
"""Required node selector terms after combining the pod's own with ours; beyond, ``admit``
leaves the pod alone and says why (the scheduler evaluates every term for every node)."""
MAX_RELEASES = 256
"""Gated pods one ``release_plan`` call releases (one PATCH each): bounded work per step."""
MAX_STATUS_GROUPS = 32
"""Groups listed in a policy's status (a Deployment has one per live rollout; more is noise)."""
MAX_MESSAGE = 1024

_AFFINITY_OPS = {
    Op.EQUALS: "In",
    Op.IN: "In",
    Op.NOT_EQUALS: "NotIn",
    Op.NOT_IN: "NotIn",
    Op.EXISTS: "Exists",
    Op.NOT_EXISTS: "DoesNotExist",
    Op.GREATER: "Gt",
    Op.LESS: "Lt",
}


# ---------------------------------------------------------------- nodes, pods, usage


def unit_of_node(policy: ResourcePolicy, node_labels: Mapping[str, str] | None) -> int | None:
    """The index of the first unit whose node selector matches ``node_labels``, or None."""
    for index, unit in enumerate(policy.units):
        if unit.node_selector.matches(node_labels or {}):
            return index
    return None


def _dict(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def _annotations(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    return _dict(_dict(pod.get("metadata")).get("annotations"))


def _name(pod: Mapping[str, Any]) -> str:
    name = _dict(pod.get("metadata")).get("name")
    return name if isinstance(name, str) else ""


def _created(pod: Mapping[str, Any]) -> float:
    created = parse_time(_dict(pod.get("metadata")).get("creationTimestamp"))
    return created if created is not None else 0.0


def _live(pod: Mapping[str, Any]) -> bool:
    """Counted: not terminating, not finished."""
    if _dict(pod.get("metadata")).get("deletionTimestamp") is not None:
        return False
    return _dict(pod.get("status")).get("phase") not in {"Succeeded", "Failed"}


def _node_name(pod: Mapping[str, Any]) -> str | None:
    node = _dict(pod.get("spec")).get("nodeName")
    return node if isinstance(node, str) and node else None


def _governed(
    policy: ResourcePolicy, pod: Mapping[str, Any], policies: Sequence[ResourcePolicy]
) -> bool:
    if not policy.selects(pod):
        return False
    if not policies:
        return True
    winner = governing_policy(pod, [*policies, policy])
    return winner is not None and (winner.namespace, winner.name) == (
        policy.namespace,
        policy.name,
    )


def pod_unit(
    policy: ResourcePolicy, pod: Mapping[str, Any], nodes: Mapping[str, Mapping[str, str]]
) -> int | None:
    """The unit ``pod`` counts for: its node's unit when bound, else the unit it was admitted to."""
    node = _node_name(pod)
    if node is not None:
        labels = nodes.get(node)
        return None if labels is None else unit_of_node(policy, labels)
    annotations = _annotations(pod)
    if annotations.get(ANNOTATION_POLICY) != policy.name:
        return None
    return policy.unit_index(annotations.get(ANNOTATION_UNIT))


@dataclass(frozen=True, kw_only=True, slots=True)
class Usage:
    """Pods of one policy, per group: how many each unit holds and how many are elsewhere."""

    units: Mapping[GroupKey, tuple[int, ...]] = field(default_factory=dict)
    """Per group, pods per unit (in unit order)."""
    outside: Mapping[GroupKey, int] = field(default_factory=dict)
    """Per group, live pods in no unit: waiting at the gate, or on a node of no unit."""

    def counts(self, group: GroupKey, units: int) -> tuple[int, ...]:
        return self.units.get(group, (0,) * units)


def count_usage(
    policy: ResourcePolicy,
    pods: Iterable[Mapping[str, Any]],
    nodes: Mapping[str, Mapping[str, str]],
    *,
    policies: Sequence[ResourcePolicy] = (),
) -> Usage:
    """Pods per unit per group.

    ``policies``: the namespace's other policies, so pods they govern are left out (empty: every
    pod the selector matches counts).
    """
    units: dict[GroupKey, list[int]] = {}
    outside: Counter[GroupKey] = Counter()
    for pod in pods:
        if not _live(pod) or not _governed(policy, pod, policies):
            continue
        group = group_key(policy, pod)
        counts = units.setdefault(group, [0] * len(policy.units))
        index = pod_unit(policy, pod, nodes)
        if index is None:
            outside[group] += 1
        else:
            counts[index] += 1
    return Usage(units={g: tuple(c) for g, c in units.items()}, outside=dict(outside))


# ---------------------------------------------------------------- the webhook


def _room(policy: ResourcePolicy, counts: Sequence[int]) -> tuple[int, ...]:
    return tuple(
        index
        for index, unit in enumerate(policy.units)
        if unit.max is None or (counts[index] if index < len(counts) else 0) < unit.max
    )


def opening(policy: ResourcePolicy, counts: Sequence[int], *, opened: int = 0) -> int | None:
    """The last unit index the policy's order lets a new pod try, units at ``max`` included.

    None when every unit is at its ``max``. The allowed units are those up to it with room.
    """
    room = _room(policy, counts)
    if not room:
        return None
    match policy.when_try_next.policy:
        case TryNextPolicy.LACK_RESOURCE_OR_EXCEED_MAX:
            return len(policy.units) - 1
        case TryNextPolicy.EXCEED_MAX:
            return room[0]
        case TryNextPolicy.TIMEOUT_OR_EXCEED_MAX:
            return min(max(room[0], opened), len(policy.units) - 1)


def allowed_units(
    policy: ResourcePolicy, counts: Sequence[int], *, opened: int = 0
) -> tuple[int, ...]:
    """The units a new pod of a group with ``counts`` may go to, in order (empty: all full).

    ``opened``: under TimeoutOrExceedMax, the last unit index opened by timeouts (``try_next``).
    """
    last = opening(policy, counts, opened=opened)
    return () if last is None else tuple(i for i in _room(policy, counts) if i <= last)


def _placement_annotations(
    policy: ResourcePolicy, counts: Sequence[int], allowed: Sequence[int], opened: int
) -> dict[str, str]:
    """The annotations of a pod admitted or released to ``allowed`` (rules on top)."""
    values = {ANNOTATION_POLICY: policy.name, ANNOTATION_UNIT: policy.units[allowed[0]].name}
    through = opening(policy, counts, opened=opened)
    if policy.when_try_next.policy is TryNextPolicy.TIMEOUT_OR_EXCEED_MAX and through is not None:
        values[ANNOTATION_THROUGH] = policy.units[through].name
    return values


def preference_weights(count: int) -> tuple[int, ...]:
    """``count`` weights, strictly decreasing from 100, at least 1: geometric from 100 to 1."""
    if count <= 0:
        return ()
    if count == 1:
        return (100,)
    weights = [max(count - i, round(100 ** ((count - 1 - i) / (count - 1)))) for i in range(count)]
    for index in range(count - 2, -1, -1):
        weights[index] = max(weights[index], weights[index + 1] + 1)
    return tuple(weights)


def _requirement_json(requirement: LabelRequirement) -> dict[str, Any]:
    out: dict[str, Any] = {"key": requirement.key, "operator": _AFFINITY_OPS[requirement.op]}
    if requirement.op not in {Op.EXISTS, Op.NOT_EXISTS}:
        out["values"] = list(requirement.values)
    return out


def _consistent(requirements: Sequence[LabelRequirement]) -> bool:
    return not any(disjoint((a,), (b,)) for a, b in itertools.combinations(requirements, 2))


def _exclusion_terms(
    policy: ResourcePolicy, allowed: Sequence[int]
) -> list[tuple[LabelRequirement, ...]] | None:
    """Our required terms (ORed): a node whose first unit is allowed. None: no restriction."""
    allowed_set = set(allowed)
    terms: list[tuple[LabelRequirement, ...]] = []
    for index in allowed:
        own = policy.units[index].node_selector.requirements
        choices: list[list[LabelRequirement]] = []
        for earlier in range(index):
            if earlier in allowed_set:
                continue
            theirs = policy.units[earlier].node_selector.requirements
            if disjoint(own, theirs):
                continue
            choices.append([negate(r) for r in theirs if not disjoint(own, (negate(r),))])
        for picked in itertools.product(*choices):
            term = tuple(dict.fromkeys((*own, *picked)))
            if _consistent(term):
                terms.append(term)
    if any(not term for term in terms):
        return None  # one allowed unit takes every node: nothing to confine
    return terms


def _user_terms(pod: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    required = _dict(_node_affinity(pod).get("requiredDuringSchedulingIgnoredDuringExecution"))
    terms = required.get("nodeSelectorTerms")
    return [_dict(t) for t in terms] if isinstance(terms, list) else []


def _node_affinity(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    return _dict(_dict(_dict(pod.get("spec")).get("affinity")).get("nodeAffinity"))


def _merge_required(
    user: Sequence[Mapping[str, Any]], ours: list[tuple[LabelRequirement, ...]] | None
) -> list[dict[str, Any]] | None:
    """The user's terms AND ours, as terms (None: too many).

    An empty user term matches no node (Kubernetes' rule) and stays as it is: adding to it would
    make it match.
    """
    ours_json = None if ours is None else [[_requirement_json(r) for r in term] for term in ours]
    if ours_json is None:
        return [dict(term) for term in user]
    if not user:
        return [{"matchExpressions": term} for term in ours_json]
    if len(ours_json) > 1 and len(user) * len(ours_json) > MAX_MERGED_TERMS:
        return None
    merged: list[dict[str, Any]] = []
    for term in user:
        found = term.get("matchExpressions")
        expressions = found if isinstance(found, list) else []
        if not expressions and not term.get("matchFields"):
            merged.append(dict(term))
            continue
        for extra in ours_json:
            combined = dict(term)
            combined["matchExpressions"] = [*expressions, *extra]
            merged.append(combined)
    return merged


@dataclass(frozen=True, kw_only=True, slots=True)
class Admission:
    """The webhook's answer for one pod."""

    patch: list[dict[str, Any]]
    """RFC 6902 operations against the pod as received; empty: admit it unchanged."""
    unit: str | None = None
    """The unit the pod was admitted to (counted for it until bound)."""
    waiting: bool = False
    """Every unit was full: the pod carries the gate and waits."""
    reason: str = ""
    """One line for the agent's log or an Event."""


def _annotation_ops(pod: Mapping[str, Any], values: Mapping[str, str]) -> list[dict[str, Any]]:
    metadata = pod.get("metadata")
    if not isinstance(metadata, dict) or not isinstance(metadata.get("annotations"), dict):
        path = "/metadata/annotations" if isinstance(metadata, dict) else "/metadata"
        value: dict[str, Any] = dict(values)
        if not isinstance(metadata, dict):
            value = {"annotations": value}
        return [{"op": "add", "path": path, "value": value}]
    return [
        {"op": "add", "path": f"/metadata/annotations/{escape(key)}", "value": text}
        for key, text in values.items()
    ]


def _affinity_op(pod: Mapping[str, Any], node_affinity: dict[str, Any]) -> dict[str, Any]:
    spec = _dict(pod.get("spec"))
    if isinstance(spec.get("affinity"), dict):
        # "add" on an existing member replaces it (RFC 6902 4.1): the merged value keeps the
        # user's terms, and the pod's other affinities (podAffinity...) are untouched.
        return {"op": "add", "path": "/spec/affinity/nodeAffinity", "value": node_affinity}
    return {"op": "add", "path": "/spec/affinity", "value": {"nodeAffinity": node_affinity}}


def _gate_op(pod: Mapping[str, Any]) -> dict[str, Any]:
    gate = {"name": WAITING_GATE}
    if isinstance(_dict(pod.get("spec")).get("schedulingGates"), list):
        return {"op": "add", "path": "/spec/schedulingGates/-", "value": gate}
    return {"op": "add", "path": "/spec/schedulingGates", "value": [gate]}


def _node_affinity_value(
    pod: Mapping[str, Any], policy: ResourcePolicy, allowed: Sequence[int], *, gated: bool
) -> dict[str, Any] | str:
    """The pod's merged nodeAffinity for ``allowed`` units, or why there is none."""
    terms = _exclusion_terms(policy, allowed) if allowed else []
    if terms == []:
        return _NO_ROOM
    user = _user_terms(pod)
    if gated and terms is not None and any(_term_has_requirements(t) for t in user):
        # A gated pod's required terms may only gain requirements, never grow in number
        # (Kubernetes' rule for scheduling-gated pods): keep the first allowed term only, a
        # subset of the allowed nodes.
        terms = terms[:1]
    merged = _merge_required(user, terms)
    if merged is None:
        return (
            "the pod's own required node affinity has too many terms to combine with "
            f"the units of {policy.name}"
        )
    current = _node_affinity(pod)
    node_affinity: dict[str, Any] = dict(current)
    if merged:
        required = dict(_dict(current.get("requiredDuringSchedulingIgnoredDuringExecution")))
        required["nodeSelectorTerms"] = merged
        node_affinity["requiredDuringSchedulingIgnoredDuringExecution"] = required
    preferred = current.get("preferredDuringSchedulingIgnoredDuringExecution")
    ours = [
        {
            "weight": weight,
            "preference": {
                "matchExpressions": [
                    _requirement_json(r) for r in policy.units[index].node_selector.requirements
                ]
            },
        }
        for index, weight in zip(allowed, preference_weights(len(allowed)), strict=True)
        if policy.units[index].node_selector.requirements  # an empty term would mean weight 0
    ]
    node_affinity["preferredDuringSchedulingIgnoredDuringExecution"] = [
        *(preferred if isinstance(preferred, list) else []),
        *ours,
    ]
    return node_affinity


_NO_ROOM = "no room"


def _term_has_requirements(term: Mapping[str, Any]) -> bool:
    return bool(term.get("matchExpressions")) or bool(term.get("matchFields"))


def admit(
    pod: Mapping[str, Any],
    policy: ResourcePolicy,
    counts: Sequence[int],
    *,
    opened: int = 0,
    hold: bool = False,
) -> Admission:
    """The patch for a new ``pod`` governed by ``policy`` (rules on top of this module).

    ``counts``: pods per unit of the pod's group (``count_usage(...).counts(group_key(...))``,
    plus what the webhook admitted since its cache last saw them). ``opened``: see
    ``allowed_units``. ``hold``: admit every pod at the gate and let the controller
    ``release`` it (exact under bursts; see the rules on top). The pod must have a ``spec``.
    """
    if ANNOTATION_POLICY in _annotations(pod):
        return Admission(patch=[], reason="already admitted (annotation present)")
    if hold:
        return _hold(pod, policy)
    allowed = allowed_units(policy, counts, opened=opened)
    value = _node_affinity_value(pod, policy, allowed, gated=False)
    if value is _NO_ROOM:
        ops = _annotation_ops(pod, {ANNOTATION_POLICY: policy.name})
        ops.append(_gate_op(pod))
        reason = f"no unit of {policy.name} has room: the pod waits at the gate"
        return Admission(patch=ops, waiting=True, reason=reason)
    if isinstance(value, str):
        return Admission(patch=[], reason=f"{value}: admitted unchanged")
    unit = policy.units[allowed[0]].name
    ops = _annotation_ops(pod, _placement_annotations(policy, counts, allowed, opened))
    ops.append(_affinity_op(pod, value))
    names = ", ".join(policy.units[index].name for index in allowed)
    return Admission(patch=ops, unit=unit, reason=f"units allowed in order: {names}")


def _hold(pod: Mapping[str, Any], policy: ResourcePolicy) -> Admission:
    """Admit at the gate; a pod with its own required terms gets them combined with every unit.

    A gated pod's required terms may later only gain requirements, so their number is fixed
    now: one per (own term, unit), the layout in ``ANNOTATION_TERMS`` for ``release``.
    """
    annotations = {ANNOTATION_POLICY: policy.name}
    user = _user_terms(pod)
    extra: list[dict[str, Any]] = []
    if (
        any(_term_has_requirements(t) for t in user)
        and all(u.node_selector.requirements for u in policy.units)
        and len(user) * len(policy.units) <= MAX_MERGED_TERMS
    ):
        terms: list[dict[str, Any]] = []
        layout: list[str] = []
        for term in user:
            if not _term_has_requirements(term):
                terms.append(dict(term))  # matches no node; may not gain requirements
                layout.append("-")
                continue
            found = term.get("matchExpressions")
            own = found if isinstance(found, list) else []
            for index, unit in enumerate(policy.units):
                reqs = [_requirement_json(r) for r in unit.node_selector.requirements]
                terms.append({**term, "matchExpressions": [*own, *reqs]})
                layout.append(str(index))
        annotations[ANNOTATION_TERMS] = ",".join(layout)
        node_affinity = dict(_node_affinity(pod))
        required = dict(_dict(node_affinity.get("requiredDuringSchedulingIgnoredDuringExecution")))
        required["nodeSelectorTerms"] = terms
        node_affinity["requiredDuringSchedulingIgnoredDuringExecution"] = required
        extra.append(_affinity_op(pod, node_affinity))
    ops = [*_annotation_ops(pod, annotations), _gate_op(pod), *extra]
    reason = f"held at the gate for {policy.name}'s controller"
    return Admission(patch=ops, waiting=True, reason=reason)


def _laid_out_terms(
    pod: Mapping[str, Any], policy: ResourcePolicy, allowed: Sequence[int]
) -> list[dict[str, Any]] | None:
    """The held pod's (own term, unit) terms narrowed to ``allowed`` by additions only.

    A term of a unit not allowed gets a requirement contradicting its unit (it then matches no
    node); an allowed unit's term gets the negation of each earlier full unit that overlaps it,
    when that is one requirement (else the term is closed too: stricter, never looser). None:
    no term left open (or the layout does not fit the pod: it was changed by someone else).
    """
    layout = str(_annotations(pod).get(ANNOTATION_TERMS, "")).split(",")
    user = _user_terms(pod)
    if len(layout) != len(user) or len(layout) > MAX_MERGED_TERMS:
        raise _LayoutChangedError
    out: list[dict[str, Any]] = []
    open_terms = 0
    for term, slot in zip(user, layout, strict=True):
        if slot == "-":
            out.append(dict(term))
            continue
        index = int(slot) if slot.isdigit() and len(slot) <= 2 else len(policy.units)
        found = term.get("matchExpressions")
        expressions = found if isinstance(found, list) else []
        if index >= len(policy.units):
            raise _LayoutChangedError
        own = policy.units[index].node_selector.requirements
        if not own or expressions[-len(own) :] != [_requirement_json(r) for r in own]:
            raise _LayoutChangedError  # the policy's units changed since the pod was held
        added = _narrowing(policy, index, allowed)
        if added is None:
            added = [negate(own[0])]  # with own[0] already in the term: matches nothing
        else:
            open_terms += 1
        out.append({**term, "matchExpressions": [*expressions, *map(_requirement_json, added)]})
    return out if open_terms else None


class _LayoutChangedError(Exception):
    """A held pod's terms no longer follow the policy's units: narrow them the generic way."""


def _narrowing(
    policy: ResourcePolicy, index: int, allowed: Sequence[int]
) -> list[LabelRequirement] | None:
    """Requirements that keep, of unit ``index``'s term, the nodes whose first unit is allowed.

    None: the term must close (the unit is not allowed, or an exclusion is not one requirement).
    """
    if index not in allowed:
        return None
    own = policy.units[index].node_selector.requirements
    added: list[LabelRequirement] = []
    for earlier in range(index):
        theirs = policy.units[earlier].node_selector.requirements
        if earlier in allowed or disjoint(own, theirs):
            continue
        choices = [negate(r) for r in theirs if not disjoint(own, (negate(r),))]
        if len(choices) != 1:
            return None
        added.append(choices[0])
    return added


def _gate_index(pod: Mapping[str, Any]) -> int | None:
    gates = _dict(pod.get("spec")).get("schedulingGates")
    for index, gate in enumerate(gates if isinstance(gates, list) else []):
        if _dict(gate).get("name") == WAITING_GATE:
            return index
    return None


def release(
    pod: Mapping[str, Any], policy: ResourcePolicy, counts: Sequence[int], *, opened: int = 0
) -> Admission | None:
    """The patch that lets a pod waiting at our gate be scheduled, or None (no room yet).

    A PATCH on the pod (not an admission): the gate is removed (guarded by a ``test`` of its
    index) and node affinity set within Kubernetes' rules for gated pods (required terms only
    gain requirements). A pod without our gate gets an empty patch.
    """
    index = _gate_index(pod)
    if index is None:
        return Admission(patch=[], reason="not waiting at the gate")
    allowed = allowed_units(policy, counts, opened=opened)
    value: dict[str, Any] | str
    try:
        terms = (
            _laid_out_terms(pod, policy, allowed) if ANNOTATION_TERMS in _annotations(pod) else []
        )
    except _LayoutChangedError:
        terms = []  # narrowed like any pod with its own terms: safe, maybe stricter
    if terms is None:
        return None
    if terms:
        value = _node_affinity_value(pod, policy, allowed, gated=True)
        if isinstance(value, str):
            return None
        required = dict(_dict(value.get("requiredDuringSchedulingIgnoredDuringExecution")))
        required["nodeSelectorTerms"] = terms
        value["requiredDuringSchedulingIgnoredDuringExecution"] = required
    else:
        value = _node_affinity_value(pod, policy, allowed, gated=True)
    if isinstance(value, str):
        return None
    unit = policy.units[allowed[0]].name
    path = f"/spec/schedulingGates/{index}"
    ops: list[dict[str, Any]] = [
        {"op": "test", "path": path, "value": {"name": WAITING_GATE}},
        {"op": "remove", "path": path},
        *_annotation_ops(pod, _placement_annotations(policy, counts, allowed, opened)),
        _affinity_op(pod, value),
    ]
    names = ", ".join(policy.units[i].name for i in allowed)
    return Admission(patch=ops, unit=unit, reason=f"released; units allowed in order: {names}")


def _release_inputs(
    policy: ResourcePolicy,
    pods: Iterable[Mapping[str, Any]],
    nodes: Mapping[str, Mapping[str, str]],
    policies: Sequence[ResourcePolicy],
) -> tuple[
    dict[GroupKey, list[int]], Counter[GroupKey], defaultdict[GroupKey, list[Mapping[str, Any]]]
]:
    """Per group: bound pods per unit, pods in flight, pods waiting at the gate."""
    bound: dict[GroupKey, list[int]] = {}
    flying: Counter[GroupKey] = Counter()
    waiting: defaultdict[GroupKey, list[Mapping[str, Any]]] = defaultdict(list)
    for pod in pods:
        if not _live(pod) or not _governed(policy, pod, policies):
            continue
        group = group_key(policy, pod)
        counts = bound.setdefault(group, [0] * len(policy.units))
        if _gate_index(pod) is not None:
            waiting[group].append(pod)
        elif _node_name(pod) is not None:
            index = pod_unit(policy, pod, nodes)
            if index is not None:
                counts[index] += 1
        elif ANNOTATION_POLICY in _annotations(pod):
            flying[group] += 1
    return bound, flying, waiting


@dataclass(frozen=True, kw_only=True, slots=True)
class Released:
    """One pod ``release_plan`` releases."""

    name: str
    patch: list[dict[str, Any]]
    """``release``'s JSON patch."""
    unit: str
    """The first unit it may go to (its ``ANNOTATION_UNIT``)."""
    allowed: tuple[str, ...]
    """Every unit it may go to, in order."""


def release_plan(
    policy: ResourcePolicy,
    pods: Iterable[Mapping[str, Any]],
    nodes: Mapping[str, Mapping[str, str]],
    *,
    policies: Sequence[ResourcePolicy] = (),
    opened: Mapping[GroupKey, int] | None = None,
    limit: int = MAX_RELEASES,
) -> list[tuple[str, list[dict[str, Any]]]]:
    """``releases`` as (pod name, patch) pairs."""
    found = releases(policy, pods, nodes, policies=policies, opened=opened, limit=limit)
    return [(item.name, item.patch) for item in found]


def releases(
    policy: ResourcePolicy,
    pods: Iterable[Mapping[str, Any]],
    nodes: Mapping[str, Mapping[str, str]],
    *,
    policies: Sequence[ResourcePolicy] = (),
    opened: Mapping[GroupKey, int] | None = None,
    limit: int = MAX_RELEASES,
) -> list[Released]:
    """Pods at our gate to release now, oldest first per group, with their patches.

    Exact under bursts: a released pod not yet bound might land in any allowed unit, so while
    a unit with a ``max`` could be overfilled by the pods in flight, the group waits for them
    to bind (their nodes settle the count) instead of guessing. Units without a ``max`` never
    make a group wait. At most ``limit`` pods per call (bounded work; call again after).
    """
    bound, flying, waiting = _release_inputs(policy, pods, nodes, policies)
    plan: list[Released] = []
    for group in sorted(waiting, key=_group_order):
        counts = bound[group]
        for pod in sorted(waiting[group], key=lambda p: (_created(p), _name(p))):
            allowed = allowed_units(policy, counts, opened=(opened or {}).get(group, 0))
            if len(plan) >= limit or _uncertain(policy, allowed, counts, flying[group]):
                break
            answer = release(pod, policy, counts, opened=(opened or {}).get(group, 0))
            if answer is None:
                break
            plan.append(
                Released(
                    name=_name(pod),
                    patch=answer.patch,
                    unit=answer.unit or "",
                    allowed=tuple(policy.units[i].name for i in allowed),
                )
            )
            flying[group] += 1
    return plan


def _uncertain(
    policy: ResourcePolicy, allowed: Sequence[int], counts: Sequence[int], flying: int
) -> bool:
    """An allowed unit with a max could be filled up to it by the pods in flight."""
    return any(
        (limit := policy.units[i].max) is not None and counts[i] + flying >= limit for i in allowed
    )


# ---------------------------------------------------------------- pod-deletion-cost


def deletion_costs(
    policy: ResourcePolicy,
    pods: Iterable[Mapping[str, Any]],
    nodes: Mapping[str, Mapping[str, str]],
    *,
    policies: Sequence[ResourcePolicy] = (),
) -> dict[str, int]:
    """Pod name -> the ``pod-deletion-cost`` it should have, for pods whose value differs."""
    places: defaultdict[tuple[GroupKey, int | None], list[Mapping[str, Any]]] = defaultdict(list)
    for pod in pods:
        if _live(pod) and _governed(policy, pod, policies) and _name(pod):
            index = pod_unit(policy, pod, nodes) if _node_name(pod) else None
            places[(group_key(policy, pod), index)].append(pod)
    out: dict[str, int] = {}
    for (_, index), members in places.items():
        base = 0 if index is None else (MAX_UNITS - index) * COST_SPAN
        members.sort(key=lambda p: (_created(p), _name(p)))
        for position, pod in enumerate(members):
            cost = base - min(position, COST_SPAN - 1)
            if _annotations(pod).get(DELETION_COST) != str(cost):
                out[_name(pod)] = cost
    return out


# ---------------------------------------------------------------- TimeoutOrExceedMax


@dataclass(frozen=True, kw_only=True, slots=True)
class TryNext:
    opened: Mapping[GroupKey, int]
    """Per group, the last unit index new pods may use by timeouts (carry it in the status)."""
    stuck: tuple[str, ...] = ()
    """Pods unschedulable past the timeout, let try fewer units than their group may now
    use: delete them so their owner recreates them under the wider choice. A pod that was let
    try every unit is never stuck (its replacement would get the same choice)."""
    wake_at: float | None = None
    """When the next pending pod times out."""


def _unschedulable_since(pod: Mapping[str, Any]) -> float | None:
    conditions = _dict(pod.get("status")).get("conditions")
    for item in conditions if isinstance(conditions, list) else []:
        condition = _dict(item)
        if (
            condition.get("type") == "PodScheduled"
            and condition.get("status") == "False"
            and condition.get("reason") == "Unschedulable"
        ):
            since = parse_time(condition.get("lastTransitionTime"))
            return since if since is not None else _created(pod)
    return None


def _tried_through(policy: ResourcePolicy, pod: Mapping[str, Any]) -> int | None:
    """The last unit an unbound pod was let try (``ANNOTATION_THROUGH``), None: not ours.

    A pod admitted before that annotation existed falls back to its unit annotation (then a
    timeout may delete it once more than needed; its replacement carries the annotation).
    """
    annotations = _annotations(pod)
    if annotations.get(ANNOTATION_POLICY) != policy.name:
        return None
    through = policy.unit_index(annotations.get(ANNOTATION_THROUGH))
    return through if through is not None else policy.unit_index(annotations.get(ANNOTATION_UNIT))


def try_next(
    policy: ResourcePolicy,
    pods: Iterable[Mapping[str, Any]],
    *,
    opened: Mapping[GroupKey, int],
    now: float,
) -> TryNext:
    """Open later units for groups whose pods stayed unschedulable for ``timeoutSeconds``.

    Only under TimeoutOrExceedMax (else nothing opens). A pod unschedulable that long on the
    units up to the one it was let try (``ANNOTATION_THROUGH``: every earlier unit was at its
    ``max`` or lacked room) opens the unit after that one, never further: units open strictly
    in order. A group's opening is kept while the group has pods and dropped when it has none,
    so a new rollout starts again from the top.
    """
    if policy.when_try_next.policy is not TryNextPolicy.TIMEOUT_OR_EXCEED_MAX:
        return TryNext(opened={})
    timeout = policy.when_try_next.timeout_seconds
    seen: set[GroupKey] = set()
    result: dict[GroupKey, int] = {}
    stuck: list[str] = []
    wake_at: float | None = None
    last = len(policy.units) - 1
    for pod in pods:
        if not _live(pod) or not policy.selects(pod):
            continue
        group = group_key(policy, pod)
        seen.add(group)
        result.setdefault(group, opened.get(group, 0))
        index = None if _node_name(pod) else _tried_through(policy, pod)
        since = _unschedulable_since(pod)
        if index is None or since is None or index >= last:
            continue
        if since + timeout <= now:
            result[group] = max(result[group], index + 1)
            stuck.append(_name(pod))
        else:
            deadline = since + timeout
            wake_at = deadline if wake_at is None else min(wake_at, deadline)
    kept = {g: min(v, last) for g, v in result.items() if g in seen and v > 0}
    return TryNext(opened=kept, stuck=tuple(sorted(stuck)), wake_at=wake_at)


# ---------------------------------------------------------------- status


def _group_order(group: GroupKey) -> tuple[tuple[int, str], ...]:
    return tuple((0, "") if value is None else (1, value) for value in group)


def _group_labels(policy: ResourcePolicy, group: GroupKey) -> dict[str, str]:
    return {k: v for k, v in zip(policy.match_label_keys, group, strict=True) if v is not None}


def opened_from_status(policy: ResourcePolicy, status: object) -> dict[GroupKey, int]:
    """The ``opened`` map ``policy_status`` wrote (garbage and unknown units are ignored)."""
    groups = _dict(status).get("groups")
    out: dict[GroupKey, int] = {}
    for raw in groups[:MAX_STATUS_GROUPS] if isinstance(groups, list) else []:
        item = _dict(raw)
        labels = _dict(item.get("labels"))
        index = policy.unit_index(item.get("openedThrough"))
        if index is None or not index:
            continue
        key = tuple(
            value if isinstance(value := labels.get(k), str) else None
            for k in policy.match_label_keys
        )
        out[key] = index
    return out


def overlapping(
    policy: ResourcePolicy, pods: Iterable[Mapping[str, Any]], policies: Sequence[ResourcePolicy]
) -> dict[str, int]:
    """Older policies of the namespace that govern live pods ``policy`` selects: name -> pods."""
    others = [p for p in policies if (p.namespace, p.name) != (policy.namespace, policy.name)]
    if not others:
        return {}
    lost = Counter(
        winner.name
        for pod in pods
        if _live(pod) and policy.selects(pod)
        for winner in [governing_policy(pod, [*others, policy])]
        if winner is not None and winner.name != policy.name
    )
    return dict(sorted(lost.items()))


def policy_status(
    policy: ResourcePolicy,
    pods: Sequence[Mapping[str, Any]],
    nodes: Mapping[str, Mapping[str, str]],
    *,
    policies: Sequence[ResourcePolicy] = (),
    opened: Mapping[GroupKey, int] | None = None,
    previous: Mapping[str, Any] | None = None,
    now: float,
) -> dict[str, Any]:
    """The policy's ``status``: pods per unit (total and per group) and its conditions.

    Per group: ``units`` (pods per unit), ``outside`` (live pods in no unit: at the gate, or on
    a node no unit selects), ``waiting`` (at our gate), ``openedThrough`` (TimeoutOrExceedMax).

    ``policies``: the other policies of the namespace (overlaps are reported on the loser as
    ``Overlapping``); ``opened``: from ``try_next``; ``previous``: the current status, so the
    conditions' ``lastTransitionTime`` only moves when their status does.
    """
    usage = count_usage(policy, pods, nodes, policies=policies)
    waiting = Counter(
        group_key(policy, pod)
        for pod in pods
        if _gate_index(pod) is not None and _live(pod) and _governed(policy, pod, policies)
    )
    totals = [0] * len(policy.units)
    groups: list[dict[str, Any]] = []
    full_groups = 0
    for group in sorted(usage.units, key=_group_order):
        counts = usage.units[group]
        totals = [a + b for a, b in zip(totals, counts, strict=True)]
        if not allowed_units(policy, counts):
            full_groups += 1
        entry: dict[str, Any] = {
            "labels": _group_labels(policy, group),
            "units": [
                {"name": unit.name, "pods": count}
                for unit, count in zip(policy.units, counts, strict=True)
            ],
            "outside": usage.outside.get(group, 0),
            "waiting": waiting.get(group, 0),
        }
        through = (opened or {}).get(group, 0)
        if 0 < through < len(policy.units):
            entry["openedThrough"] = policy.units[through].name
        groups.append(entry)
    lost = overlapping(policy, pods, policies)
    conditions = list(_dict(previous).get("conditions") or [])

    def put(type_: str, status: str, reason: str, message: str) -> None:
        nonlocal conditions
        condition = next_condition(
            conditions,
            type_=type_,
            status=status,
            reason=reason,
            message=message[:MAX_MESSAGE],
            now=now,
            observed_generation=policy.generation,
        )
        conditions = put_condition(conditions, condition)

    put("Accepted", "True", "Valid", f"{len(policy.units)} units")
    if lost:
        winners = ", ".join(f"{name} ({count} pods)" for name, count in sorted(lost.items()))
        put(
            "Overlapping",
            "True",
            "SelectorOverlaps",
            f"pods this policy selects are governed by an older policy: {winners}",
        )
    else:
        put("Overlapping", "False", "NoOverlap", "no other policy governs pods it selects")
    if full_groups:
        put(
            "UnitsFull",
            "True",
            "EveryUnitAtMax",
            f"{full_groups} pod groups have every unit at its max: new pods wait at the gate",
        )
    else:
        put("UnitsFull", "False", "RoomLeft", "a new pod of every group has a unit with room")
    status: dict[str, Any] = {
        "units": [
            {"name": unit.name, "pods": total, **({} if unit.max is None else {"max": unit.max})}
            for unit, total in zip(policy.units, totals, strict=True)
        ],
        "groups": groups[:MAX_STATUS_GROUPS],
        "conditions": conditions,
    }
    if len(groups) > MAX_STATUS_GROUPS:
        status["groupsOmitted"] = len(groups) - MAX_STATUS_GROUPS
    if policy.generation is not None:
        status["observedGeneration"] = policy.generation
    return status


def invalid_status(
    message: str, *, generation: int | None, previous: Mapping[str, Any] | None, now: float
) -> dict[str, Any]:
    """The status of a policy ``parse_resource_policy`` refused (``message``: the SpecError)."""
    condition = next_condition(
        _dict(previous).get("conditions") or [],
        type_="Accepted",
        status="False",
        reason="InvalidSpec",
        message=message[:MAX_MESSAGE],
        now=now,
        observed_generation=generation,
    )
    status: dict[str, Any] = {
        "conditions": put_condition(_dict(previous).get("conditions") or [], condition)
    }
    if generation is not None:
        status["observedGeneration"] = generation
    return status
