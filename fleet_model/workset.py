"""WorkSet: one Work per chosen cluster, rolled out All at once or Progressive, failed over gently.

A WorkSet is OCM's ManifestWorkReplicaSet (docs/fleet/works.md): ``placementRefs`` (each with
its ``rolloutStrategy``), a ``manifestWorkTemplate`` (a Work spec without ``clusterName``) and
per-cluster ``overrides``. The hub's controller renders each chosen cluster's Work
(``render_work_spec``) and asks ``plan_rollout`` what to do now; it does the writes, and comes
back when something changes or at ``wake_at``. This module does no I/O and reads no clock.

Theory of operation (all of the rollout's rules live here):

1. Per cluster, a status, from its Work (``WorkState``) and the time:

   * ToApply: no Work, or a Work that is not the current rendering (a template or override
     change). It is waiting for its turn.
   * Progressing: the current rendering is written, and not yet Succeeded (the agent has not
     reported on it, it is not Applied and Available, or it is Available but still inside
     ``minSuccessTime``, the soak).
   * Succeeded: Applied and Available, not Degraded, for ``minSuccessTime`` (Progressive only;
     All succeeds as soon as Available). The soak counts from when it was written or from when
     it became Available, whichever is later.
   * Failed: the agent reports it Degraded.
   * TimeOut: not Available ``progressDeadline`` after it was written ("None": never); one
     that was TimeOut, or became Available only after its deadline, stays TimeOut through
     its soak (it gave its slot up and does not take one back).
   * Removing: the cluster left every placement's decisions; see 4.

2. Progressive, per placement: clusters go in decision-group order, then decision order.
   Progressing and Failed clusters hold a slot; at most ``maxConcurrency`` hold one. A free
   slot goes to the next ToApply cluster. A Failed cluster keeps its slot until its deadline
   turns it into TimeOut (OCM's rule: set a progressDeadline when failures are tolerated).
   So while clusters only move forward, never more than maxConcurrency are in flight. One
   that falls back after it Succeeded (its resources went away or degraded) is in flight
   again without a new slot: the rollout waits for it, and starts nothing new until fewer
   than maxConcurrency are in flight.
   When Failed + TimeOut > ``maxFailures`` the placement halts: nothing new starts (what is
   running stays as it is) until a failure heals or the spec changes, and the message says who
   failed and since when. All: every ToApply cluster gets its Work at once; it never halts.

3. Thresholds: ``maxConcurrency`` and ``maxFailures`` are a count or "N%" of the placement's
   chosen clusters (rounded up). maxConcurrency defaults to the largest decision group (the
   placement's ``clustersPerDecisionGroup``, OCM's default); maxFailures to 0.

4. Graceful failover: a cluster that left the decisions keeps its Work (Removing) while any
   chosen cluster has no Available Work yet (of any generation: a cluster still running the
   previous template is serving, a new replacement is not); once none is missing, the Work is
   deleted. A leaving cluster whose Work is not Available serves nothing and goes at once.
   A cluster that comes back before its Work went just keeps it; one that comes back after
   starts over as ToApply.

5. A cluster chosen by two placements of one WorkSet has one Work, rolled out by the first
   placement that lists it.

6. Deterministic: the same input gives the same plan (no sets iterated, ties by order given).

Where this differs from OCM (open-cluster-management-io/api cluster/v1alpha1 RolloutStrategy
and sdk-go's RolloutHandler): OCM orders Progressive clusters by name, we by decision group and
decision (the placement's ranking: the best clusters first); OCM treats a maxFailures or
maxConcurrency larger than the cluster count as the default (0 failures!), we clamp it to the
count; OCM deletes the Work of a removed cluster at once, we keep it until the replacements are
Available (Karmada's graceful eviction, #2281); OCM has no Removing status and no halted
message; OCM's ProgressivePerGroup and mandatoryDecisionGroups are not here (yet).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field, replace
from typing import Any, Final, Literal

from fleet_model.overrides import ClusterLike, Override, apply_overrides, parse_overrides
from fleet_model.problems import SpecError, escape, is_name
from fleet_model.times import parse_time
from fleet_model.work import (
    WorkTemplate,
    find_condition,
    parse_template,
    rfc3339,
    set_condition,
)

__all__ = [
    "STATUSES",
    "ClusterRollout",
    "Decision",
    "PlacementRef",
    "PlacementRollout",
    "RolloutPlan",
    "RolloutStrategy",
    "Summary",
    "Threshold",
    "WorkSetSpec",
    "WorkState",
    "parse_spec",
    "plan_rollout",
    "previous_rollout",
    "render_work_spec",
    "with_previous",
    "work_name",
    "workset_conditions",
]

MAX_PLACEMENT_REFS: Final = 16
MAX_DURATION: Final = 30 * 24 * 3600
"""A soak or deadline longer than 30 days is a typo (and a timer nobody will wait for)."""

Status = Literal["ToApply", "Progressing", "Succeeded", "Failed", "TimeOut", "Removing"]
STATUSES: Final = ("ToApply", "Progressing", "Succeeded", "Failed", "TimeOut", "Removing")
Phase = Literal["Progressing", "Succeeded", "Halted"]

_DURATION = re.compile(r"^(?:([0-9]{1,7})h)?(?:([0-9]{1,7})m)?(?:([0-9]{1,9})s)?$")
_PERCENT = re.compile(r"^(100|[0-9]{1,2})%$")

Problems = list[tuple[str, str]]


# ---------------------------------------------------------------- spec


@dataclass(frozen=True, kw_only=True, slots=True)
class Threshold:
    """A count of clusters, or a percentage of them (rounded up)."""

    count: int | None = None
    percent: int | None = None

    def of(self, total: int) -> int:
        if self.percent is not None:
            return min(total, math.ceil(self.percent * total / 100))
        return min(total, self.count or 0)

    def __str__(self) -> str:
        return f"{self.percent}%" if self.percent is not None else str(self.count or 0)


@dataclass(frozen=True, kw_only=True, slots=True)
class RolloutStrategy:
    type: Literal["All", "Progressive"] = "All"
    max_concurrency: Threshold | None = None
    """None: the largest decision group."""
    min_success_time: float = 0.0
    """Seconds a cluster must stay Available before it counts as Succeeded (Progressive)."""
    progress_deadline: float | None = None
    """Seconds from writing a Work to its success before it is TimeOut; None: no deadline."""
    max_failures: Threshold = field(default_factory=lambda: Threshold(count=0))
    deadline_text: str = "None"
    """As written, for messages."""


@dataclass(frozen=True, kw_only=True, slots=True)
class PlacementRef:
    name: str
    rollout: RolloutStrategy = field(default_factory=RolloutStrategy)


@dataclass(frozen=True, kw_only=True, slots=True)
class WorkSetSpec:
    placement_refs: tuple[PlacementRef, ...]
    template: WorkTemplate
    template_document: Mapping[str, Any]
    """``manifestWorkTemplate`` as given (manifestConfigs and deleteOption are copied from it)."""
    overrides: tuple[Override, ...] = ()


def _duration(value: object, path: str, problems: Problems, *, none_ok: bool) -> float | None:
    """``"30s"``, ``"10m"``, ``"1h30m"``, ``"0"``; ``"None"`` where no deadline is allowed."""
    if value is None or value == "":
        return 0.0 if not none_ok else None
    if none_ok and value == "None":
        return None
    text = value if isinstance(value, str) else ""
    match = _DURATION.match(text)
    if text == "0":
        return 0.0
    if not text or match is None:
        rule = "'30s', '10m', '2h', '1h30m'" + (" or 'None'" if none_ok else " or '0'")
        problems.append((path, f"must be a duration such as {rule}"))
        return 0.0
    hours, minutes, seconds = (int(part or 0) for part in match.groups())
    total = hours * 3600 + minutes * 60 + seconds
    if total > MAX_DURATION:
        problems.append((path, "must be at most 30 days (720h)"))
    return float(total)


def _threshold(value: object, path: str, problems: Problems, *, minimum: int) -> Threshold | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        if value < minimum:
            problems.append((path, f"must be at least {minimum}"))
            return None
        return Threshold(count=value)
    if isinstance(value, str) and (match := _PERCENT.match(value)):
        percent = int(match.group(1))
        if percent < minimum:
            problems.append((path, f"must be at least {minimum}%"))
            return None
        return Threshold(percent=percent)
    problems.append((path, "must be a count (an integer) or a percentage such as '25%'"))
    return None


def _rollout(value: object, path: str, problems: Problems) -> RolloutStrategy:
    if value is None:
        return RolloutStrategy()
    if not isinstance(value, dict):
        problems.append((path, "must be {type: All|Progressive, progressive: {...}}"))
        return RolloutStrategy()
    for key in value:
        if key not in {"type", "all", "progressive"}:
            problems.append((f"{path}/{escape(str(key))}", "unknown field"))
    kind = value.get("type", "All")
    if kind not in {"All", "Progressive"}:
        problems.append((f"{path}/type", "must be All or Progressive"))
        return RolloutStrategy()
    other = "all" if kind == "Progressive" else "progressive"
    if value.get(other) is not None:
        problems.append((f"{path}/{other}", f"does not apply to type {kind}"))
    return _rollout_config(kind, value.get(kind.lower()), f"{path}/{kind.lower()}", problems)


def _rollout_config(
    kind: Literal["All", "Progressive"], config: object, where: str, problems: Problems
) -> RolloutStrategy:
    if config is None:
        config = {}
    if not isinstance(config, dict):
        problems.append((where, "must be an object"))
        return RolloutStrategy(type=kind)
    allowed = (
        {"maxConcurrency", "minSuccessTime", "progressDeadline", "maxFailures"}
        if kind == "Progressive"
        else {"progressDeadline"}
    )
    for key in config:
        if key not in allowed:
            problems.append((f"{where}/{escape(str(key))}", f"unknown field for type {kind}"))
    deadline_raw = config.get("progressDeadline")
    deadline = _duration(deadline_raw, f"{where}/progressDeadline", problems, none_ok=True)
    soak = _duration(
        config.get("minSuccessTime"), f"{where}/minSuccessTime", problems, none_ok=False
    )
    concurrency = _threshold(
        config.get("maxConcurrency"), f"{where}/maxConcurrency", problems, minimum=1
    )
    failures = _threshold(config.get("maxFailures"), f"{where}/maxFailures", problems, minimum=0)
    return RolloutStrategy(
        type=kind,
        max_concurrency=concurrency,
        min_success_time=soak or 0.0,
        progress_deadline=deadline,
        max_failures=failures or Threshold(count=0),
        deadline_text=str(deadline_raw) if deadline is not None else "None",
    )


def _placement_refs(value: object, problems: Problems) -> tuple[PlacementRef, ...]:
    path = "/spec/placementRefs"
    if not isinstance(value, list) or not value or len(value) > MAX_PLACEMENT_REFS:
        problems.append((path, f"must list 1 to {MAX_PLACEMENT_REFS} placements"))
        return ()
    out: list[PlacementRef] = []
    seen: set[str] = set()
    for index, item in enumerate(value):
        where = f"{path}/{index}"
        if not isinstance(item, dict):
            problems.append((where, "must be {name, rolloutStrategy}"))
            continue
        for key in item:
            if key not in {"name", "rolloutStrategy"}:
                problems.append((f"{where}/{escape(str(key))}", "unknown field"))
        name = item.get("name")
        rollout = _rollout(item.get("rolloutStrategy"), f"{where}/rolloutStrategy", problems)
        if not is_name(name):
            problems.append((f"{where}/name", "must be the name of a Placement"))
            continue
        assert isinstance(name, str)  # noqa: S101 - is_name checked it
        if name in seen:
            problems.append((f"{where}/name", f"placement {name!r} is already referenced"))
            continue
        seen.add(name)
        out.append(PlacementRef(name=name, rollout=rollout))
    return tuple(out)


def parse_spec(spec: object) -> WorkSetSpec:
    """A WorkSet's spec, or ``SpecError`` with every problem (paths from the document root)."""
    if not isinstance(spec, dict):
        raise SpecError([("/spec", "must be an object")])
    problems: Problems = []
    for key in spec:
        if key not in {"placementRefs", "manifestWorkTemplate", "overrides"}:
            problems.append((f"/spec/{escape(str(key))}", "unknown field"))
    refs = _placement_refs(spec.get("placementRefs"), problems)
    raw_template = spec.get("manifestWorkTemplate")
    template = WorkTemplate()
    try:
        template = parse_template(raw_template)
    except SpecError as error:
        problems.extend(error.problems)
    overrides: tuple[Override, ...] = ()
    try:
        overrides = parse_overrides(spec.get("overrides"))
    except SpecError as error:
        problems.extend(error.problems)
    if problems:
        raise SpecError(problems)
    assert isinstance(raw_template, dict)  # noqa: S101 - parse_template checked it
    return WorkSetSpec(
        placement_refs=refs,
        template=template,
        template_document=raw_template,
        overrides=overrides,
    )


def work_name(workset: str, cluster: str) -> str:
    """The name of the Work a WorkSet makes for a cluster (may exceed 253: the caller checks)."""
    return f"{workset}.{cluster}"


def render_work_spec(spec: WorkSetSpec, cluster: ClusterLike) -> dict[str, Any]:
    """The Work spec ``cluster`` gets: the template, its overrides applied, and its name.

    Raises ``OverrideError`` (a ``SpecError``) when an override cannot be applied.
    """
    manifests = apply_overrides(spec.template.manifests, spec.overrides, cluster)
    out = {key: value for key, value in spec.template_document.items() if key != "workload"}
    out["clusterName"] = cluster.name
    out["workload"] = {"manifests": [dict(m.body) for m in manifests]}
    return out


# ---------------------------------------------------------------- rollout inputs and outputs


@dataclass(frozen=True, kw_only=True, slots=True)
class Decision:
    """One chosen cluster of a placement (its decisions are given in the placement's order)."""

    cluster: str
    group_index: int = 0


@dataclass(frozen=True, kw_only=True, slots=True)
class WorkState:
    """What the hub knows of one cluster's Work of this WorkSet."""

    exists: bool = True
    current: bool = True
    """Its spec is what ``render_work_spec`` gives now (else it is an older rendering)."""
    observed: bool = False
    """The agent has reported on the Work's current generation (its conditions are not stale)."""
    applied: bool = False
    available: bool = False
    degraded: bool = False
    updated_at: float | None = None
    """Hub time its spec was last written: the start of its progress (None: unknown)."""
    available_since: float | None = None
    degraded_since: float | None = None
    message: str = ""
    """The Degraded condition's message (the member API server's words), for the status."""

    @classmethod
    def from_status(
        cls,
        status: Mapping[str, Any],
        *,
        generation: int,
        current: bool,
        updated_at: float | None,
    ) -> WorkState:
        """From a stored Work's ``status`` (as the agent wrote it) and what the hub knows."""
        conditions = status.get("conditions")

        def true(kind: str) -> bool:
            found = find_condition(conditions, kind)
            return found is not None and found.get("status") == "True"

        def since(kind: str) -> float | None:
            found = find_condition(conditions, kind)
            return parse_time(found.get("lastTransitionTime")) if found else None

        applied = find_condition(conditions, "Applied")
        seen = applied.get("observedGeneration") if applied else status.get("observedGeneration")
        degraded = find_condition(conditions, "Degraded")
        message = degraded.get("message") if degraded and true("Degraded") else ""
        return cls(
            exists=True,
            current=current,
            observed=isinstance(seen, int) and seen == generation,
            applied=true("Applied"),
            available=true("Available"),
            degraded=true("Degraded"),
            updated_at=updated_at,
            available_since=since("Available") if true("Available") else None,
            degraded_since=since("Degraded") if true("Degraded") else None,
            message=message if isinstance(message, str) else "",
        )


ABSENT: Final = WorkState(exists=False, current=False)


@dataclass(frozen=True, kw_only=True, slots=True)
class ClusterRollout:
    cluster: str
    status: Status
    since: float
    placement: str = ""
    """The placement that rolls it out ("" for Removing clusters)."""
    message: str = ""

    def document(self) -> dict[str, Any]:
        out: dict[str, Any] = {"cluster": self.cluster, "status": self.status}
        out["since"] = rfc3339(self.since)
        if self.placement:
            out["placement"] = self.placement
        if self.message:
            out["message"] = self.message
        return out


@dataclass(frozen=True, kw_only=True, slots=True)
class Summary:
    total: int = 0
    applied: int = 0
    available: int = 0
    degraded: int = 0
    progressing: int = 0

    def document(self) -> dict[str, int]:
        return {
            "total": self.total,
            "applied": self.applied,
            "available": self.available,
            "degraded": self.degraded,
            "progressing": self.progressing,
        }


@dataclass(frozen=True, kw_only=True, slots=True)
class PlacementRollout:
    name: str
    summary: Summary
    groups: int
    """Decision groups of this placement with at least one chosen cluster."""
    written: int
    """Chosen clusters whose Work is the current rendering."""
    max_concurrency: int
    max_failures: int
    failures: int
    halted: bool
    message: str = ""

    def document(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "availableDecisionGroups": (
                f"{self.groups} ({self.written} / {self.summary.total} clusters applied)"
            ),
            "summary": self.summary.document(),
        }


@dataclass(frozen=True, kw_only=True, slots=True)
class RolloutPlan:
    apply: tuple[str, ...]
    """Clusters whose Work the hub writes now (the current rendering), in rollout order."""
    delete: tuple[str, ...]
    """Clusters whose Work the hub deletes now."""
    clusters: tuple[ClusterRollout, ...]
    """Every cluster's status after this plan's writes: chosen ones in rollout order, then
    the Removing ones by name."""
    phase: Phase
    message: str
    summary: Summary
    placements: tuple[PlacementRollout, ...]
    wake_at: float | None
    """When to plan again even if nothing changes (a soak ends, a deadline passes)."""

    def status_document(self) -> dict[str, Any]:
        """``summary``, ``placementsSummary`` and ``rollout`` of the WorkSet's status."""
        return {
            "summary": self.summary.document(),
            "placementsSummary": [p.document() for p in self.placements],
            "rollout": {
                "phase": self.phase,
                "message": self.message,
                "clusters": [c.document() for c in self.clusters],
            },
        }


def previous_rollout(status: object) -> dict[str, ClusterRollout]:
    """The per-cluster rollout a WorkSet's status holds (to keep ``since``); junk is skipped."""
    rollout = status.get("rollout") if isinstance(status, dict) else None
    items = rollout.get("clusters") if isinstance(rollout, dict) else None
    out: dict[str, ClusterRollout] = {}
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict):
            continue
        cluster, state, since = item.get("cluster"), item.get("status"), item.get("since")
        when = parse_time(since)
        if isinstance(cluster, str) and state in STATUSES and when is not None:
            out[cluster] = ClusterRollout(cluster=cluster, status=state, since=when)
    return out


# ---------------------------------------------------------------- the state machine


@dataclass(kw_only=True, slots=True)
class _Verdict:
    status: Status
    since: float
    message: str = ""
    wake_at: float | None = None


def _kept(
    previous: Mapping[str, ClusterRollout], cluster: str, status: Status, now: float
) -> float:
    """When ``cluster`` entered ``status``: as recorded before if it was already in it."""
    old = previous.get(cluster)
    return old.since if old is not None and old.status == status else now


def _judge(  # noqa: PLR0911 - one return per status
    cluster: str,
    state: WorkState,
    strategy: RolloutStrategy,
    now: float,
    previous: Mapping[str, ClusterRollout],
) -> _Verdict:
    """The status of one chosen cluster (rule 1)."""
    if not state.exists or not state.current:
        return _Verdict(status="ToApply", since=_kept(previous, cluster, "ToApply", now))
    start = state.updated_at
    if start is None:
        start = _kept(previous, cluster, "Progressing", now)
    deadline = None if strategy.progress_deadline is None else start + strategy.progress_deadline
    if state.observed and state.applied and state.available and not state.degraded:
        soak = strategy.min_success_time if strategy.type == "Progressive" else 0.0
        began = max(start, state.available_since if state.available_since is not None else start)
        if now >= began + soak:
            return _Verdict(status="Succeeded", since=began + soak)
        old = previous.get(cluster)
        late = old is not None and old.status == "TimeOut" and old.since >= start  # this rendering
        if deadline is not None and now >= deadline and (late or began >= deadline):
            # Its slot went to another cluster when it timed out: it soaks without one.
            return _Verdict(
                status="TimeOut",
                since=deadline,
                message=(
                    f"Available after its progressDeadline {strategy.deadline_text}; "
                    f"soaking until {rfc3339(began + soak)}"
                ),
                wake_at=began + soak,
            )
        return _Verdict(
            status="Progressing",
            since=start,
            message=f"Available since {rfc3339(began)}; soaking until {rfc3339(began + soak)}",
            wake_at=began + soak,
        )
    degraded = state.observed and state.degraded
    if deadline is not None and now >= deadline:
        why = (
            _degraded_message(state, start)
            if degraded
            else f"not Available within progressDeadline {strategy.deadline_text}"
        )
        return _Verdict(
            status="TimeOut", since=deadline, message=f"{why} (written {rfc3339(start)})"
        )
    if degraded:
        since = max(start, state.degraded_since if state.degraded_since is not None else start)
        return _Verdict(
            status="Failed", since=since, message=_degraded_message(state, start), wake_at=deadline
        )
    waiting = "waiting for the agent" if not state.observed else "not Applied and Available yet"
    return _Verdict(status="Progressing", since=start, message=waiting, wake_at=deadline)


def _degraded_message(state: WorkState, start: float) -> str:
    since = max(start, state.degraded_since if state.degraded_since is not None else start)
    text = f"Degraded since {rfc3339(since)}"
    return f"{text} ({state.message})" if state.message else text


def _ordered(decisions: Sequence[Decision]) -> list[Decision]:
    """Decision-group order, then the placement's own order (a stable sort)."""
    return sorted(decisions, key=lambda decision: decision.group_index)


@dataclass(kw_only=True, slots=True)
class _Placement:
    """One placement's part of a plan, built by ``_roll``."""

    ref: PlacementRef
    clusters: list[ClusterRollout]
    apply: list[str]
    wakes: list[float]
    rollout: PlacementRollout


def _count(
    clusters: Sequence[ClusterRollout], works: Mapping[str, WorkState], written: AbstractSet[str]
) -> Summary:
    def fresh(name: str) -> WorkState | None:
        state = works.get(name, ABSENT)
        return state if state.exists and state.current and state.observed else None

    states = [fresh(c.cluster) for c in clusters if c.cluster not in written]
    return Summary(
        total=len(clusters),
        applied=sum(1 for s in states if s is not None and s.applied),
        available=sum(1 for s in states if s is not None and s.available),
        degraded=sum(1 for s in states if s is not None and s.degraded),
        progressing=sum(1 for c in clusters if c.status == "Progressing"),
    )


def _roll(
    ref: PlacementRef,
    decisions: Sequence[Decision],
    works: Mapping[str, WorkState],
    now: float,
    previous: Mapping[str, ClusterRollout],
) -> _Placement:
    """Rules 1 to 3 for one placement's chosen clusters (already de-duplicated)."""
    strategy = ref.rollout
    order = _ordered(decisions)
    total = len(order)
    verdicts = [
        _judge(d.cluster, works.get(d.cluster, ABSENT), strategy, now, previous) for d in order
    ]
    group_sizes: dict[int, int] = {}
    for decision in order:
        group_sizes[decision.group_index] = group_sizes.get(decision.group_index, 0) + 1
    if strategy.type == "All":
        concurrency = total
    elif strategy.max_concurrency is not None:
        concurrency = max(1, strategy.max_concurrency.of(total))
    else:
        concurrency = max(group_sizes.values(), default=1)
    allowed = strategy.max_failures.of(total)
    failed = [
        (d, v) for d, v in zip(order, verdicts, strict=True) if v.status in {"Failed", "TimeOut"}
    ]
    halted = strategy.type == "Progressive" and len(failed) > allowed
    busy = sum(1 for v in verdicts if v.status in {"Progressing", "Failed"})
    apply: list[str] = []
    wakes = [v.wake_at for v in verdicts if v.wake_at is not None and v.wake_at > now]
    for decision, verdict in zip(order, verdicts, strict=True):
        if verdict.status != "ToApply" or halted or busy >= concurrency:
            continue
        apply.append(decision.cluster)
        busy += 1
        verdict.status, verdict.since, verdict.message = "Progressing", now, "written now"
        if strategy.progress_deadline is not None:
            wakes.append(now + strategy.progress_deadline)
    clusters = [
        ClusterRollout(
            cluster=d.cluster, status=v.status, since=v.since, placement=ref.name, message=v.message
        )
        for d, v in zip(order, verdicts, strict=True)
    ]
    message = ""
    if halted:
        who = "; ".join(f"{d.cluster}: {v.message}" for d, v in failed)
        message = (
            f"halted: {len(failed)} of {total} clusters failed "
            f"(maxFailures {strategy.max_failures}): {who}"
        )
    started = set(apply)
    written = sum(
        1
        for d in order
        if d.cluster in started
        or (works.get(d.cluster, ABSENT).exists and works[d.cluster].current)
    )
    rollout = PlacementRollout(
        name=ref.name,
        summary=_count(clusters, works, started),
        groups=len(group_sizes),
        written=written,
        max_concurrency=concurrency,
        max_failures=allowed,
        failures=len(failed),
        halted=halted,
        message=message,
    )
    return _Placement(ref=ref, clusters=clusters, apply=apply, wakes=wakes, rollout=rollout)


def _removals(
    chosen: Sequence[ClusterRollout],
    works: Mapping[str, WorkState],
    now: float,
    previous: Mapping[str, ClusterRollout],
) -> tuple[list[ClusterRollout], list[str]]:
    """Rule 4: which leaving clusters keep their Work (Removing), which lose it now."""
    names = {c.cluster for c in chosen}
    missing = [
        c.cluster
        for c in chosen
        if not (works.get(c.cluster, ABSENT).exists and works[c.cluster].available)
    ]
    keep: list[ClusterRollout] = []
    delete: list[str] = []
    for cluster in sorted(works):
        state = works[cluster]
        if cluster in names or not state.exists:
            continue
        if state.available and missing:
            shown = ", ".join(missing[:5]) + (
                f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            )
            keep.append(
                ClusterRollout(
                    cluster=cluster,
                    status="Removing",
                    since=_kept(previous, cluster, "Removing", now),
                    message=f"kept until {shown} {'is' if len(missing) == 1 else 'are'} Available",
                )
            )
        else:
            delete.append(cluster)
    return keep, delete


def _phase(
    placements: Sequence[_Placement],
    chosen: Sequence[ClusterRollout],
    keep: Sequence[ClusterRollout],
) -> tuple[Phase, str]:
    halted = [p.rollout for p in placements if p.rollout.halted]
    if halted:
        if len(placements) == 1:
            return "Halted", halted[0].message
        return "Halted", " | ".join(f"placement {p.name} {p.message}" for p in halted)
    counts = {status: sum(1 for c in chosen if c.status == status) for status in STATUSES}
    total = len(chosen)
    if counts["Succeeded"] == total and not keep:
        return "Succeeded", (
            f"{total} of {total} clusters succeeded" if total else "no cluster is chosen"
        )
    parts = [f"{counts['Succeeded']} of {total} clusters succeeded"]
    for status, word in (
        ("Progressing", "progressing"),
        ("ToApply", "waiting"),
        ("Failed", "failed"),
        ("TimeOut", "timed out"),
    ):
        if counts[status]:
            parts.append(f"{counts[status]} {word}")
    if keep:
        parts.append(f"{len(keep)} removing")
    return "Progressing", ", ".join(parts)


def plan_rollout(
    *,
    workset: WorkSetSpec,
    decisions: Mapping[str, Sequence[Decision]],
    works: Mapping[str, WorkState],
    now: float,
    previous: Mapping[str, ClusterRollout] | None = None,
) -> RolloutPlan:
    """What to do now for ``workset`` (see the rules on top).

    ``decisions``: per placement name, its chosen clusters in its order (a placement missing
    here has chosen nothing); ``works``: this WorkSet's Works by cluster; ``previous``: the
    last plan's per-cluster statuses (``previous_rollout`` of the status) to keep ``since``.
    """
    previous = previous or {}
    claimed: set[str] = set()
    placements: list[_Placement] = []
    for ref in workset.placement_refs:
        mine: list[Decision] = []
        for decision in decisions.get(ref.name, ()):
            if decision.cluster not in claimed:
                claimed.add(decision.cluster)
                mine.append(decision)
        placements.append(_roll(ref, mine, works, now, previous))
    chosen = [c for p in placements for c in p.clusters]
    apply = [name for p in placements for name in p.apply]
    keep, delete = _removals(chosen, works, now, previous)
    phase, message = _phase(placements, chosen, keep)
    wakes = [w for p in placements for w in p.wakes]
    totals = [p.rollout.summary for p in placements]
    summary = Summary(
        total=sum(s.total for s in totals),
        applied=sum(s.applied for s in totals),
        available=sum(s.available for s in totals),
        degraded=sum(s.degraded for s in totals),
        progressing=sum(s.progressing for s in totals),
    )
    return RolloutPlan(
        apply=tuple(apply),
        delete=tuple(delete),
        clusters=(*chosen, *keep),
        phase=phase,
        message=message,
        summary=summary,
        placements=tuple(p.rollout for p in placements),
        wake_at=min(wakes, default=None),
    )


def workset_conditions(
    plan: RolloutPlan,
    *,
    generation: int,
    now: float,
    previous: Sequence[Mapping[str, Any]] = (),
    missing_placements: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """PlacementVerified, ManifestworkApplied and RolloutHalted (OCM's reasons)."""

    def condition(kind: str, status: str, reason: str, message: str) -> dict[str, Any]:
        return set_condition(
            previous,
            kind=kind,
            status=status,
            reason=reason,
            message=message,
            generation=generation,
            now=now,
        )

    summary = plan.summary
    if missing_placements:
        verified = condition(
            "PlacementVerified",
            "False",
            "PlacementDecisionNotFound",
            f"no placement named {', '.join(missing_placements)}",
        )
    elif summary.total == 0:
        verified = condition(
            "PlacementVerified",
            "False",
            "PlacementDecisionEmpty",
            "the placements chose no cluster",
        )
    else:
        verified = condition(
            "PlacementVerified", "True", "AsExpected", f"{summary.total} clusters chosen"
        )
    counts = (
        f"{summary.available} of {summary.total} available, {summary.progressing} progressing, "
        f"{summary.degraded} degraded"
    )
    if summary.total == 0:
        applied = condition("ManifestworkApplied", "False", "PlacementDecisionEmpty", counts)
    elif summary.available == summary.total and not summary.progressing and not summary.degraded:
        applied = condition("ManifestworkApplied", "True", "AsExpected", counts)
    elif summary.progressing and not summary.degraded:
        applied = condition("ManifestworkApplied", "False", "Processing", counts)
    else:
        applied = condition("ManifestworkApplied", "False", "NotAsExpected", counts)
    if plan.phase == "Halted":
        halted = condition("RolloutHalted", "True", "MaxFailuresExceeded", plan.message)
    else:
        halted = condition("RolloutHalted", "False", "NotHalted", plan.message)
    return [verified, applied, halted]


def with_previous(plan: RolloutPlan) -> dict[str, ClusterRollout]:
    """The ``previous`` the next plan should get, without a round trip through the status."""
    return {c.cluster: replace(c, message="") for c in plan.clusters}
