"""Placement: spec parsing and the scheduler (which clusters, in which groups, and why not).

Pure: no I/O and no clock; ``schedule`` takes ``now`` and returns ``wake_at`` (when a
toleration runs out and the placement must be scheduled again).

The spec is Open Cluster Management's ``Placement`` (cluster.open-cluster-management.io/
v1beta1) without namespaces: ``clusterSets``, ``numberOfClusters``, ``predicates``,
``tolerations``, ``prioritizerPolicy``, ``decisionStrategy`` (docs/fleet/placement.md).

Scheduling runs as OCM's does, in this order, and the first rule that excludes a cluster is
the one its ``notSelected`` reason names:

1. cluster sets: the cluster must be in one of ``clusterSets`` (all clusters when empty);
2. ``hubAcceptsClient`` must be true (OCM leaves this to the registration controller; the
   hub here never places anything on a cluster it has not accepted);
3. predicates: the cluster must match one of them (ORed); inside one, its label selector and
   claim selector must both match (ANDed);
4. taints: every ``NoSelect`` taint must be tolerated, and every ``NoSelectIfNew`` taint too
   unless the cluster is in ``previous``; ``PreferNoSelect`` is ignored (OCM never implemented
   it). A toleration with ``tolerationSeconds`` tolerates until ``timeAdded + seconds``;
5. prioritizers (fleet_model.prioritizers) score what is left; clusters are ranked by score,
   ties by name, and the first ``numberOfClusters`` are chosen (all when null).

The chosen clusters are then put in decision groups: the named ``decisionGroups`` first (a
cluster goes to the first group whose selector it matches), then the rest; every group is cut
into pieces of ``clustersPerDecisionGroup`` (a number, or a percentage of the chosen clusters
rounded up; default 100%), clusters by name inside a group. There is always at least one group.

Where this differs from OCM: a cluster matched by several tolerations is tolerated until the
latest of their expiries (OCM takes the first matching toleration in the list); parse_spec
refuses what OCM only reports at run time as ``PlacementMisconfigured`` (an empty key with
operator Equal, a value with Exists, an unknown prioritizer, AddOn scores, CEL selectors).
"""

from __future__ import annotations

import itertools
import math
import operator
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, NamedTuple

from fleet_model.cluster import (
    ClusterSetView,
    ClusterView,
    Taint,
    TaintEffect,
    format_time,
    label_problem,
    next_condition,
    parse_label_selector_object,
    put_condition,
    with_builtin_sets,
)
from fleet_model.labels import LabelRequirement, LabelSelector, Op
from fleet_model.prioritizers import (
    MAX_WEIGHT,
    MIN_WEIGHT,
    Prioritizer,
    allocatable_scores,
    balance_scores,
    steady_scores,
)
from fleet_model.problems import SpecError, is_name

__all__ = [
    "ClusterSelector",
    "Decision",
    "DecisionGroup",
    "DecisionGroupSpec",
    "DecisionStrategy",
    "NotSelected",
    "PlacementResult",
    "PlacementSpec",
    "PolicyMode",
    "PrioritizerPolicy",
    "Toleration",
    "TolerationOperator",
    "misconfigured_status",
    "parse_spec",
    "placement_status",
    "schedule",
]

MAX_CLUSTER_SETS = 64
MAX_PREDICATES = 32
MAX_TOLERATIONS = 32
MAX_CONFIGURATIONS = 16
MAX_DECISION_GROUPS = 32
MAX_NUMBER_OF_CLUSTERS = 100_000
"""More than any fleet this hub is sized for (the benchmark's goal is 1,000 clusters)."""
MAX_TOLERATION_SECONDS = 10 * 365 * 24 * 3600
"""Ten years: beyond that, leave tolerationSeconds out (tolerate for ever)."""
MAX_NOT_SELECTED_IN_STATUS = 2000
"""Reasons written into one Placement's status; beyond this the status gives only a count,
so a placement over a huge fleet stays a bounded document."""
MAX_MESSAGE = 1024
"""Characters of one condition message."""

_PERCENT = re.compile(r"^([1-9][0-9]?|100)%$")


# ---------------------------------------------------------------- the spec


class TolerationOperator(StrEnum):
    EQUAL = "Equal"
    EXISTS = "Exists"


@dataclass(frozen=True, kw_only=True, slots=True)
class Toleration:
    key: str = ""
    """Empty: every key (then the operator must be Exists)."""
    operator: TolerationOperator = TolerationOperator.EQUAL
    value: str = ""
    effect: TaintEffect | None = None
    """None: every effect."""
    toleration_seconds: int | None = None
    """None: for ever; else counted from the taint's ``timeAdded``."""

    def matches(self, taint: Taint) -> bool:
        if self.effect is not None and self.effect != taint.effect:
            return False
        if self.key and self.key != taint.key:
            return False
        return self.operator is TolerationOperator.EXISTS or self.value == taint.value


@dataclass(frozen=True, kw_only=True, slots=True)
class ClusterSelector:
    """A label selector and a claim selector, both to match (an empty one matches all)."""

    label_selector: LabelSelector = field(default_factory=LabelSelector)
    claim_selector: LabelSelector = field(default_factory=LabelSelector)

    def miss(self, cluster: ClusterView) -> str | None:
        """Why ``cluster`` does not match (its first requirement not met), or None if it does."""
        return _Matcher.of(self).miss(cluster)


class PolicyMode(StrEnum):
    ADDITIVE = "Additive"
    EXACT = "Exact"


_DEFAULT_WEIGHTS = {Prioritizer.BALANCE: 1, Prioritizer.STEADY: 1}
"""OCM's defaults in Additive mode."""


@dataclass(frozen=True, kw_only=True, slots=True)
class PrioritizerPolicy:
    mode: PolicyMode = PolicyMode.ADDITIVE
    configurations: tuple[tuple[Prioritizer, int], ...] = ()

    def weights(self) -> dict[Prioritizer, int]:
        """Prioritizer → weight, zero weights left out, in a fixed order."""
        merged = dict(_DEFAULT_WEIGHTS) if self.mode is PolicyMode.ADDITIVE else {}
        merged.update(self.configurations)
        return {p: merged[p] for p in Prioritizer if merged.get(p, 0) != 0}


@dataclass(frozen=True, kw_only=True, slots=True)
class DecisionGroupSpec:
    name: str
    selector: ClusterSelector


@dataclass(frozen=True, kw_only=True, slots=True)
class DecisionStrategy:
    clusters_per_group: int | str = "100%"
    """A count (>= 1) or a percentage "N%" (1..100) of the chosen clusters, rounded up."""
    groups: tuple[DecisionGroupSpec, ...] = ()

    def group_length(self, total: int) -> int:
        """OCM's calculateLength: the size of one group for ``total`` chosen clusters."""
        if isinstance(self.clusters_per_group, int):
            length = self.clusters_per_group
        else:
            length = math.ceil(int(self.clusters_per_group[:-1]) * total / 100)
        return total if length <= 0 or length > total else length


@dataclass(frozen=True, kw_only=True, slots=True)
class PlacementSpec:
    cluster_sets: tuple[str, ...] = ()
    """Empty: every cluster set (so every cluster, through the set ``global``)."""
    number_of_clusters: int | None = None
    """None: every cluster that fits."""
    predicates: tuple[ClusterSelector, ...] = ()
    tolerations: tuple[Toleration, ...] = ()
    prioritizer_policy: PrioritizerPolicy = field(default_factory=PrioritizerPolicy)
    decision_strategy: DecisionStrategy = field(default_factory=DecisionStrategy)


def _unknown(value: Mapping[str, Any], allowed: set[str], path: str) -> list[tuple[str, str]]:
    unknown = set(value) - allowed
    if not unknown:
        return []
    return [(path, f"unknown fields: {', '.join(sorted(map(str, unknown)))}")]


def _list(value: object, path: str, bound: int, problems: list[tuple[str, str]]) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        problems.append((path, "must be a list"))
        return []
    if len(value) > bound:
        problems.append((path, f"at most {bound} items"))
        return []
    return value


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _cluster_sets(value: object, problems: list[tuple[str, str]]) -> tuple[str, ...]:
    out: list[str] = []
    for index, name in enumerate(_list(value, "/spec/clusterSets", MAX_CLUSTER_SETS, problems)):
        if not is_name(name):
            problems.append((f"/spec/clusterSets/{index}", "must be a cluster set name"))
        elif name in out:
            problems.append((f"/spec/clusterSets/{index}", f"{name!r} is listed twice"))
        else:
            out.append(name)
    return tuple(out)


def _number_of_clusters(value: object, problems: list[tuple[str, str]]) -> int | None:
    if value is None:
        return None
    if not _is_int(value) or not 0 <= value <= MAX_NUMBER_OF_CLUSTERS:  # type: ignore[operator]
        problems.append(
            ("/spec/numberOfClusters", f"must be null or an integer 0..{MAX_NUMBER_OF_CLUSTERS}")
        )
        return None
    assert isinstance(value, int)  # noqa: S101 - checked above
    return value


def _cluster_selector(value: object, path: str, problems: list[tuple[str, str]]) -> ClusterSelector:
    if value is None:
        return ClusterSelector()
    if not isinstance(value, dict):
        problems.append((path, "must be an object {labelSelector, claimSelector}"))
        return ClusterSelector()
    problems.extend(_unknown(value, {"labelSelector", "claimSelector"}, path))
    return ClusterSelector(
        label_selector=parse_label_selector_object(
            value.get("labelSelector"), f"{path}/labelSelector", problems
        ),
        claim_selector=parse_label_selector_object(
            value.get("claimSelector"), f"{path}/claimSelector", problems, claim=True
        ),
    )


def _predicates(value: object, problems: list[tuple[str, str]]) -> tuple[ClusterSelector, ...]:
    out: list[ClusterSelector] = []
    for index, item in enumerate(_list(value, "/spec/predicates", MAX_PREDICATES, problems)):
        where = f"/spec/predicates/{index}"
        if not isinstance(item, dict):
            problems.append((where, "must be an object {requiredClusterSelector}"))
            continue
        problems.extend(_unknown(item, {"requiredClusterSelector"}, where))
        out.append(
            _cluster_selector(
                item.get("requiredClusterSelector"), f"{where}/requiredClusterSelector", problems
            )
        )
    return tuple(out)


def _toleration(item: object, where: str, problems: list[tuple[str, str]]) -> Toleration | None:
    if not isinstance(item, dict):
        problems.append((where, "must be an object {key, operator, value, effect, ...}"))
        return None
    count = len(problems)
    problems.extend(
        _unknown(item, {"key", "operator", "value", "effect", "tolerationSeconds"}, where)
    )
    key, value = item.get("key", ""), item.get("value", "")
    operator, effect = item.get("operator", "Equal"), item.get("effect")
    seconds = item.get("tolerationSeconds")
    for name, problem in (
        ("key", label_problem(key, key=True) if key != "" else None),
        ("value", label_problem(value, key=False)),
    ):
        if problem is not None:
            problems.append((f"{where}/{name}", problem))
    if operator not in set(TolerationOperator):
        problems.append((f"{where}/operator", "must be Equal or Exists"))
    elif operator == TolerationOperator.EQUAL and key == "":
        problems.append((f"{where}/key", "an empty key (every taint) needs operator Exists"))
    elif operator == TolerationOperator.EXISTS and value:
        problems.append((f"{where}/value", "must be empty with operator Exists"))
    if effect is not None and effect not in set(TaintEffect):
        problems.append(
            (f"{where}/effect", "must be NoSelect, NoSelectIfNew, PreferNoSelect or absent")
        )
    if seconds is not None and (not _is_int(seconds) or not 0 <= seconds <= MAX_TOLERATION_SECONDS):
        problems.append(
            (f"{where}/tolerationSeconds", f"must be an integer 0..{MAX_TOLERATION_SECONDS}")
        )
    if len(problems) > count:
        return None
    return Toleration(
        key=key,
        operator=TolerationOperator(operator),
        value=value,
        effect=TaintEffect(effect) if effect is not None else None,
        toleration_seconds=seconds,
    )


def _tolerations(value: object, problems: list[tuple[str, str]]) -> tuple[Toleration, ...]:
    items = _list(value, "/spec/tolerations", MAX_TOLERATIONS, problems)
    found = (_toleration(item, f"/spec/tolerations/{i}", problems) for i, item in enumerate(items))
    return tuple(t for t in found if t is not None)


def _configuration(
    item: object, where: str, problems: list[tuple[str, str]]
) -> tuple[Prioritizer, int] | None:
    if not isinstance(item, dict):
        problems.append((where, "must be an object {scoreCoordinate, weight}"))
        return None
    count = len(problems)
    problems.extend(_unknown(item, {"scoreCoordinate", "weight"}, where))
    coordinate = item.get("scoreCoordinate")
    builtin: object = None
    if not isinstance(coordinate, dict):
        problems.append((f"{where}/scoreCoordinate", "is required: {type: BuiltIn, builtIn}"))
    else:
        problems.extend(_unknown(coordinate, {"type", "builtIn"}, f"{where}/scoreCoordinate"))
        kind = coordinate.get("type", "BuiltIn")
        builtin = coordinate.get("builtIn")
        if kind == "AddOn":
            problems.append((f"{where}/scoreCoordinate/type", "AddOn scores are not supported"))
        elif kind != "BuiltIn":
            problems.append((f"{where}/scoreCoordinate/type", "must be BuiltIn"))
        elif builtin not in set(Prioritizer):
            problems.append(
                (
                    f"{where}/scoreCoordinate/builtIn",
                    f"must be one of {', '.join(p.value for p in Prioritizer)}",
                )
            )
    weight = item.get("weight", 1)
    if not _is_int(weight) or not MIN_WEIGHT <= weight <= MAX_WEIGHT:
        problems.append((f"{where}/weight", f"must be an integer {MIN_WEIGHT}..{MAX_WEIGHT}"))
    if len(problems) > count:
        return None
    assert isinstance(builtin, str)  # noqa: S101 - checked above
    return Prioritizer(builtin), weight


def _policy(value: object, problems: list[tuple[str, str]]) -> PrioritizerPolicy:
    path = "/spec/prioritizerPolicy"
    if value is None:
        return PrioritizerPolicy()
    if not isinstance(value, dict):
        problems.append((path, "must be an object {mode, configurations}"))
        return PrioritizerPolicy()
    problems.extend(_unknown(value, {"mode", "configurations"}, path))
    mode = value.get("mode", "Additive")
    if mode not in set(PolicyMode):
        problems.append((f"{path}/mode", "must be Additive or Exact"))
        mode = PolicyMode.ADDITIVE
    items = _list(
        value.get("configurations"), f"{path}/configurations", MAX_CONFIGURATIONS, problems
    )
    configurations: list[tuple[Prioritizer, int]] = []
    for index, item in enumerate(items):
        where = f"{path}/configurations/{index}"
        found = _configuration(item, where, problems)
        if found is None:
            continue
        if any(found[0] is p for p, _ in configurations):
            problems.append((where, f"{found[0].value} is configured above"))
            continue
        configurations.append(found)
    return PrioritizerPolicy(mode=PolicyMode(mode), configurations=tuple(configurations))


def _clusters_per_group(value: object, path: str, problems: list[tuple[str, str]]) -> int | str:
    if value is None:
        return "100%"
    if _is_int(value) and 1 <= value <= MAX_NUMBER_OF_CLUSTERS:  # type: ignore[operator]
        assert isinstance(value, int)  # noqa: S101 - checked above
        return value
    if isinstance(value, str) and _PERCENT.match(value):
        return value
    problems.append((path, f'must be an integer 1..{MAX_NUMBER_OF_CLUSTERS} or "N%" (1..100)'))
    return "100%"


def _strategy(value: object, problems: list[tuple[str, str]]) -> DecisionStrategy:
    path = "/spec/decisionStrategy"
    if value is None:
        return DecisionStrategy()
    if not isinstance(value, dict):
        problems.append((path, "must be an object {groupStrategy}"))
        return DecisionStrategy()
    problems.extend(_unknown(value, {"groupStrategy"}, path))
    strategy = value.get("groupStrategy")
    if strategy is None:
        return DecisionStrategy()
    path = f"{path}/groupStrategy"
    if not isinstance(strategy, dict):
        problems.append((path, "must be an object {clustersPerDecisionGroup, decisionGroups}"))
        return DecisionStrategy()
    problems.extend(_unknown(strategy, {"clustersPerDecisionGroup", "decisionGroups"}, path))
    per_group = _clusters_per_group(
        strategy.get("clustersPerDecisionGroup"), f"{path}/clustersPerDecisionGroup", problems
    )
    groups: list[DecisionGroupSpec] = []
    items = _list(
        strategy.get("decisionGroups"), f"{path}/decisionGroups", MAX_DECISION_GROUPS, problems
    )
    for index, item in enumerate(items):
        where = f"{path}/decisionGroups/{index}"
        if not isinstance(item, dict):
            problems.append((where, "must be an object {groupName, groupClusterSelector}"))
            continue
        problems.extend(_unknown(item, {"groupName", "groupClusterSelector"}, where))
        name = item.get("groupName")
        selector = _cluster_selector(
            item.get("groupClusterSelector"), f"{where}/groupClusterSelector", problems
        )
        problem = label_problem(name, key=False) if name != "" else "must not be empty"
        if problem is not None:
            problems.append((f"{where}/groupName", f"{problem} (a label value is required)"))
            continue
        assert isinstance(name, str)  # noqa: S101 - checked by label_problem
        if any(g.name == name for g in groups):
            problems.append((f"{where}/groupName", f"{name!r} is used above"))
            continue
        groups.append(DecisionGroupSpec(name=name, selector=selector))
    return DecisionStrategy(clusters_per_group=per_group, groups=tuple(groups))


def parse_spec(spec: object) -> PlacementSpec:
    """``Placement.spec``, or ``SpecError`` with every problem (paths under ``/spec``)."""
    if not isinstance(spec, dict):
        raise SpecError([("/spec", "must be an object")])
    problems: list[tuple[str, str]] = _unknown(
        spec,
        {
            "clusterSets",
            "numberOfClusters",
            "predicates",
            "tolerations",
            "prioritizerPolicy",
            "decisionStrategy",
        },
        "/spec",
    )
    parsed = PlacementSpec(
        cluster_sets=_cluster_sets(spec.get("clusterSets"), problems),
        number_of_clusters=_number_of_clusters(spec.get("numberOfClusters"), problems),
        predicates=_predicates(spec.get("predicates"), problems),
        tolerations=_tolerations(spec.get("tolerations"), problems),
        prioritizer_policy=_policy(spec.get("prioritizerPolicy"), problems),
        decision_strategy=_strategy(spec.get("decisionStrategy"), problems),
    )
    if problems:
        raise SpecError(problems)
    return parsed


# ---------------------------------------------------------------- the result


@dataclass(frozen=True, kw_only=True, slots=True)
class Decision:
    cluster_name: str
    score: int
    group_index: int
    group_name: str


@dataclass(frozen=True, kw_only=True, slots=True)
class DecisionGroup:
    index: int
    name: str
    """"" for the groups of clusters no named group took."""
    clusters: tuple[str, ...]


class NotSelected(NamedTuple):
    """A cluster not chosen, and why.

    A named tuple, not a frozen dataclass: a fleet makes a thousand per placement, and a tuple
    is made several times faster.
    """

    cluster_name: str
    reason: str
    """One sentence: the first rule that excluded the cluster, or its rank."""
    score: int | None = None
    """The cluster's score when it passed every filter and lost on rank."""


@dataclass(frozen=True, kw_only=True, slots=True)
class PlacementResult:
    decisions: tuple[Decision, ...]
    """By score (highest first), then name."""
    groups: tuple[DecisionGroup, ...]
    not_selected: tuple[NotSelected, ...]
    """Every known cluster not chosen, by name."""
    satisfied: bool
    """``PlacementSatisfied``: as many clusters as asked (or, with no number, at least one)."""
    reason: str
    """CamelCase reason of ``PlacementSatisfied`` (OCM's words)."""
    message: str
    wake_at: float | None
    """When a toleration of a cluster that passed the filters runs out (schedule again then)."""

    @property
    def selected(self) -> tuple[str, ...]:
        return tuple(d.cluster_name for d in self.decisions)


# ---------------------------------------------------------------- the scheduler


_by_name = operator.attrgetter("name")
_by_cluster_name = operator.attrgetter("cluster_name")


def _ordinal(number: int) -> str:
    if 10 <= number % 100 <= 20:
        suffix = "th"
    else:
        suffix = {1: "st", 2: "nd", 3: "rd"}.get(number % 10, "th")
    return f"{number}{suffix}"


_Test = Callable[[Mapping[str, str]], bool]


def _test(requirement: LabelRequirement) -> _Test:
    """``requirement.matches`` as a closure without the per-call dispatch on the operator.

    The scheduler tests every cluster against every term; this is its inner loop.
    """
    key, values = requirement.key, frozenset(requirement.values)
    if requirement.op in {Op.EQUALS, Op.IN}:
        return lambda labels: labels.get(key) in values
    if requirement.op in {Op.NOT_EQUALS, Op.NOT_IN}:
        return lambda labels: labels.get(key) not in values
    if requirement.op is Op.EXISTS:
        return lambda labels: key in labels
    if requirement.op is Op.NOT_EXISTS:
        return lambda labels: key not in labels
    return requirement.matches  # > and <: rare, the general path


@dataclass(frozen=True, slots=True)
class _Matcher:
    """A ClusterSelector made ready to test many clusters: (on claims?, test, reason) terms."""

    terms: tuple[tuple[bool, _Test, str], ...]

    @classmethod
    def of(cls, selector: ClusterSelector) -> _Matcher:
        labels = [
            (False, _test(r), f"label {r} not matched")
            for r in selector.label_selector.requirements
        ]
        claims = [
            (True, _test(r), f"claim {r} not matched") for r in selector.claim_selector.requirements
        ]
        return cls(tuple(labels + claims))

    def miss(self, cluster: ClusterView) -> str | None:
        labels, claims = cluster.labels, cluster.claims
        for on_claims, test, reason in self.terms:
            if not test(claims if on_claims else labels):
                return reason
        return None


def _predicate_miss(matchers: Sequence[_Matcher], cluster: ClusterView) -> str | None:
    """None when a predicate matches (or there are none), else why none does."""
    misses: list[str] = []
    for matcher in matchers:
        miss = matcher.miss(cluster)
        if miss is None:
            return None
        misses.append(miss)
    if not misses:
        return None
    if len(misses) == 1:
        return misses[0]
    return f"none of the {len(misses)} predicates matched: {'; '.join(misses)}"


def _taint_verdict(
    cluster: ClusterView, tolerations: Sequence[Toleration], *, chosen_before: bool, now: float
) -> tuple[str | None, float | None]:
    """(why a taint excludes ``cluster`` or None, the earliest toleration expiry still ahead)."""
    wake: float | None = None
    for taint in cluster.taints:
        if taint.effect is TaintEffect.PREFER_NO_SELECT:
            continue
        if taint.effect is TaintEffect.NO_SELECT_IF_NEW and chosen_before:
            continue
        added = taint.time_added if taint.time_added is not None else 0.0
        matched = [t for t in tolerations if t.matches(taint)]
        if not matched:
            return f"tainted {taint.key} ({taint.effect.value}) and not tolerated", None
        if any(t.toleration_seconds is None for t in matched):
            continue
        expiry = max(
            added + t.toleration_seconds for t in matched if t.toleration_seconds is not None
        )
        if now >= expiry:
            return (
                (
                    f"toleration expired at {format_time(expiry)} "
                    f"(taint {taint.key}, {taint.effect.value})"
                ),
                None,
            )
        wake = expiry if wake is None else min(wake, expiry)
    return None, wake


def _scores(
    feasible: Sequence[ClusterView],
    policy: PrioritizerPolicy,
    previous: frozenset[str],
    decision_counts: Mapping[str, int],
) -> dict[str, int]:
    names = [c.name for c in feasible]
    total = dict.fromkeys(names, 0)
    for prioritizer, weight in policy.weights().items():
        if prioritizer is Prioritizer.BALANCE:
            scores = balance_scores(names, decision_counts)
        elif prioritizer is Prioritizer.STEADY:
            scores = steady_scores(names, previous)
        elif prioritizer is Prioritizer.RESOURCE_ALLOCATABLE_CPU:
            scores = allocatable_scores({c.name: c.allocatable_cpu for c in feasible})
        else:
            scores = allocatable_scores({c.name: c.allocatable_memory for c in feasible})
        for name, score in scores.items():
            total[name] += weight * score
    return total


def _groups(
    strategy: DecisionStrategy, chosen: Sequence[ClusterView]
) -> tuple[list[DecisionGroup], dict[str, tuple[int, str]]]:
    length = strategy.group_length(len(chosen))
    left = sorted(chosen, key=lambda c: c.name)
    groups: list[DecisionGroup] = []

    def cut(name: str, members: list[str]) -> None:
        for start in range(0, len(members), max(length, 1)):
            piece = tuple(members[start : start + length])
            groups.append(DecisionGroup(index=len(groups), name=name, clusters=piece))

    for spec in strategy.groups:
        matcher = _Matcher.of(spec.selector)
        taken = [c.name for c in left if matcher.miss(c) is None]
        taken_set = set(taken)
        left = [c for c in left if c.name not in taken_set]
        cut(spec.name, taken)
    cut("", [c.name for c in left])
    if not groups:
        groups.append(DecisionGroup(index=0, name="", clusters=()))
    where = {name: (g.index, g.name) for g in groups for name in g.clusters}
    return groups, where


def _satisfied(
    spec: PlacementSpec, *, candidates: int, feasible: int, chosen: int
) -> tuple[bool, str, str]:
    sets = ", ".join(spec.cluster_sets) if spec.cluster_sets else "every set"
    if candidates == 0:
        return False, "AllManagedClusterSetsEmpty", f"No ManagedCluster is in [{sets}]."
    if feasible == 0:
        return (
            False,
            "NoManagedClusterMatched",
            "No ManagedCluster fits the placement; notSelected says why for each.",
        )
    wanted = spec.number_of_clusters
    if wanted is not None and chosen < wanted:
        return (
            False,
            "NotAllDecisionsScheduled",
            (
                f"{wanted - chosen} cluster decisions unscheduled: only {chosen} of the "
                f"{wanted} asked fit; notSelected says why the others do not."
            ),
        )
    return True, "AllDecisionsScheduled", "All cluster decisions scheduled."


def schedule(
    placement: PlacementSpec,
    clusters: Sequence[ClusterView],
    sets: Sequence[ClusterSetView],
    previous: Sequence[str],
    now: float,
    *,
    decision_counts: Mapping[str, int] | None = None,
) -> PlacementResult:
    """The decisions of ``placement`` over ``clusters`` at ``now``.

    ``sets``: the ManagedClusterSets (``default`` and ``global`` are added, built in);
    ``previous``: the clusters this placement chose last time (Steady, NoSelectIfNew);
    ``decision_counts``: per cluster, how many decisions other placements hold (Balance).
    The result depends only on the arguments, never on their order: ties go by name.
    Raises ValueError if two clusters share a name.
    """
    known = sorted(clusters, key=_by_name)
    for before, after in itertools.pairwise(known):
        if before.name == after.name:
            raise ValueError(f"cluster {before.name!r} is given twice")
    chosen_before = frozenset(previous)
    restrict = bool(placement.cluster_sets)
    usable_sets = [s for s in with_builtin_sets(sets) if s.name in placement.cluster_sets]
    not_in_sets = f"not in cluster sets [{', '.join(placement.cluster_sets)}]"
    matchers = [_Matcher.of(p) for p in placement.predicates]
    not_selected: list[NotSelected] = []
    feasible: list[ClusterView] = []
    candidates = 0
    wake_at: float | None = None
    for cluster in known:
        if restrict and not any(s.contains(cluster) for s in usable_sets):
            not_selected.append(NotSelected(cluster_name=cluster.name, reason=not_in_sets))
            continue
        candidates += 1
        if not cluster.accepted:
            reason: str | None = "hubAcceptsClient is false"
        else:
            reason = _predicate_miss(matchers, cluster)
        if reason is None and cluster.taints:
            reason, wake = _taint_verdict(
                cluster,
                placement.tolerations,
                chosen_before=cluster.name in chosen_before,
                now=now,
            )
            if wake is not None and reason is None:
                wake_at = wake if wake_at is None else min(wake_at, wake)
        if reason is None:
            feasible.append(cluster)
        else:
            not_selected.append(NotSelected(cluster_name=cluster.name, reason=reason))
    scores = _scores(feasible, placement.prioritizer_policy, chosen_before, decision_counts or {})
    ranked = sorted(feasible, key=lambda c: (-scores[c.name], c.name))
    wanted = placement.number_of_clusters
    chosen = ranked if wanted is None else ranked[:wanted]
    for rank, cluster in enumerate(ranked[len(chosen) :], start=len(chosen) + 1):
        not_selected.append(
            NotSelected(
                cluster_name=cluster.name,
                reason=f"ranked {_ordinal(rank)}; numberOfClusters is {wanted}",
                score=scores[cluster.name],
            )
        )
    groups, where = _groups(placement.decision_strategy, chosen)
    decisions = tuple(
        Decision(
            cluster_name=c.name,
            score=scores[c.name],
            group_index=where[c.name][0],
            group_name=where[c.name][1],
        )
        for c in chosen
    )
    satisfied, why, message = _satisfied(
        placement, candidates=candidates, feasible=len(feasible), chosen=len(chosen)
    )
    return PlacementResult(
        decisions=decisions,
        groups=tuple(groups),
        not_selected=tuple(sorted(not_selected, key=_by_cluster_name)),
        satisfied=satisfied,
        reason=why,
        message=message,
        wake_at=wake_at,
    )


# ---------------------------------------------------------------- status documents


def placement_status(
    result: PlacementResult,
    *,
    conditions: Iterable[Mapping[str, Any]] = (),
    generation: int | None = None,
    now: float,
    max_not_selected: int = MAX_NOT_SELECTED_IN_STATUS,
) -> dict[str, Any]:
    """The ``status`` of a Placement from ``result``.

    ``conditions``: the current ones, so each keeps its ``lastTransitionTime`` while its status
    stays.
    """
    current = list(conditions)
    satisfied = next_condition(
        current,
        type_="PlacementSatisfied",
        status="True" if result.satisfied else "False",
        reason=result.reason,
        message=result.message[:MAX_MESSAGE],
        now=now,
        observed_generation=generation,
    )
    misconfigured = next_condition(
        current,
        type_="PlacementMisconfigured",
        status="False",
        reason="Succeedconfigured",
        message="Placement configurations check pass",
        now=now,
        observed_generation=generation,
    )
    merged = put_condition(put_condition(current, satisfied), misconfigured)
    status: dict[str, Any] = {
        "numberOfSelectedClusters": len(result.decisions),
        "decisions": [
            {
                "clusterName": d.cluster_name,
                "score": d.score,
                "groupIndex": d.group_index,
                "groupName": d.group_name,
            }
            for d in result.decisions
        ],
        "decisionGroups": [
            {
                "decisionGroupIndex": g.index,
                "decisionGroupName": g.name,
                "clusters": list(g.clusters),
            }
            for g in result.groups
        ],
        "notSelected": [
            {"clusterName": n.cluster_name, "reason": n.reason}
            for n in result.not_selected[:max_not_selected]
        ],
        "conditions": merged,
    }
    if len(result.not_selected) > max_not_selected:
        status["notSelectedOmitted"] = len(result.not_selected) - max_not_selected
    if result.wake_at is not None:
        status["nextEvaluationAt"] = format_time(math.ceil(result.wake_at))
    return status


def misconfigured_status(
    error: SpecError,
    *,
    conditions: Iterable[Mapping[str, Any]] = (),
    generation: int | None = None,
    now: float,
) -> dict[str, Any]:
    """The ``status`` of a stored Placement whose spec no longer parses: nothing selected."""
    current = list(conditions)
    message = str(error)[:MAX_MESSAGE]
    misconfigured = next_condition(
        current,
        type_="PlacementMisconfigured",
        status="True",
        reason="Misconfigured",
        message=message,
        now=now,
        observed_generation=generation,
    )
    satisfied = next_condition(
        current,
        type_="PlacementSatisfied",
        status="False",
        reason="Misconfigured",
        message="The placement's spec is invalid; see PlacementMisconfigured.",
        now=now,
        observed_generation=generation,
    )
    return {
        "numberOfSelectedClusters": 0,
        "decisions": [],
        "decisionGroups": [{"decisionGroupIndex": 0, "decisionGroupName": "", "clusters": []}],
        "notSelected": [],
        "conditions": put_condition(put_condition(current, satisfied), misconfigured),
    }
