"""WorkSets: their placements' decisions and their Works → ``plan_rollout`` → the writes to do.

``plan_workset`` is the whole step for one WorkSet, without I/O: the controller gives it the
stored objects and does what it returns (works to write, works to delete, the status).

* Each chosen cluster's Work is the template with the overrides for that cluster
  (``render_work_spec``), named ``<workset>.<cluster>``, labelled
  ``fleet.edgefleet.io/workset`` and ``fleet.edgefleet.io/cluster``; the hub stamps
  ``fleet.edgefleet.io/rendered-at`` (when it wrote this rendering: where progress deadlines
  and soaks count from, kept across hub restarts).
* A Work is "current" when its stored spec is exactly the rendering of now.
* A cluster whose rendering fails (an override that cannot apply, a Work over the size limit,
  a name too long) gets no Work; the ``WorksRendered`` condition names it and why.
* Deleting a WorkSet deletes its Works (``orphans``); each Work carries the template's
  ``deleteOption``, so with ``Orphan`` the agents leave what they applied in place.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fleet_model.cluster import ClusterView
from fleet_model.problems import SpecError, is_name
from fleet_model.times import parse_time
from fleet_model.work import rfc3339, set_condition
from fleet_model.workset import (
    Decision,
    WorkSetSpec,
    WorkState,
    parse_spec,
    plan_rollout,
    previous_rollout,
    render_work_spec,
    work_name,
    workset_conditions,
)
from tunnel_server.fleet.hub.store import StoredObject

__all__ = [
    "CLUSTER_LABEL",
    "RENDERED_AT",
    "WORKSET_LABEL",
    "WorkWrite",
    "WorksetPlan",
    "orphans",
    "plan_workset",
]

WORKSET_LABEL = "fleet.edgefleet.io/workset"
CLUSTER_LABEL = "fleet.edgefleet.io/cluster"
RENDERED_AT = "fleet.edgefleet.io/rendered-at"
MAX_ERRORS_SHOWN = 10


@dataclass(frozen=True, kw_only=True, slots=True)
class WorkWrite:
    name: str
    cluster: str
    labels: dict[str, str]
    annotations: dict[str, str]
    spec: dict[str, Any]
    expected_version: int | None
    """The stored Work's resourceVersion (None: create it)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class WorksetPlan:
    writes: tuple[WorkWrite, ...] = ()
    deletes: tuple[StoredObject, ...] = ()
    status: dict[str, Any] = field(default_factory=dict)
    wake_at: float | None = None
    placements: tuple[str, ...] = ()
    """The placements it reads (the controller re-plans it when one of them changes)."""


def _cluster_of(work: StoredObject) -> str | None:
    name = work.labels.get(CLUSTER_LABEL) or work.spec.get("clusterName")
    return name if isinstance(name, str) else None


def _decisions(status: Mapping[str, Any]) -> list[Decision]:
    raw = status.get("decisions")
    out: list[Decision] = []
    for item in raw if isinstance(raw, list) else []:
        if not isinstance(item, Mapping) or not isinstance(item.get("clusterName"), str):
            continue
        group = item.get("groupIndex")
        out.append(
            Decision(
                cluster=item["clusterName"],
                group_index=group if isinstance(group, int) and not isinstance(group, bool) else 0,
            )
        )
    return out


def _invalid_status(workset: StoredObject, error: SpecError, now: float) -> dict[str, Any]:
    conditions = workset.status.get("conditions")
    condition = set_condition(
        conditions if isinstance(conditions, list) else [],
        kind="PlacementVerified",
        status="False",
        reason="InvalidSpec",
        message=str(error)[:1024],
        generation=workset.generation,
        now=now,
    )
    return {**dict(workset.status), "conditions": [condition]}


def plan_workset(
    workset: StoredObject,
    *,
    placements: Mapping[str, StoredObject],
    works: Sequence[StoredObject],
    clusters: Mapping[str, ClusterView],
    max_work_bytes: int,
    now: float,
    taken: Callable[[str], bool] = lambda _name: False,
) -> WorksetPlan:
    """What to do now for ``workset`` (``works``: the Works labelled with its name).

    ``taken``: whether a Work name is held by a Work that is not this WorkSet's (someone made
    it by hand): that cluster gets no Work, and ``WorksRendered`` says why, rather than the
    hand-made Work being overwritten.
    """
    try:
        spec = parse_spec(dict(workset.spec))
    except SpecError as error:
        return WorksetPlan(status=_invalid_status(workset, error, now))
    refs = tuple(ref.name for ref in spec.placement_refs)
    decisions = {name: _decisions(placements[name].status) for name in refs if name in placements}
    missing = [name for name in refs if name not in placements]
    by_cluster: dict[str, StoredObject] = {}
    for work in works:
        cluster = _cluster_of(work)
        if cluster is not None and work.name == work_name(workset.name, cluster):
            by_cluster[cluster] = work
    rendered: dict[str, dict[str, Any]] = {}
    errors: dict[str, str] = {}
    for chosen in {d.cluster for ds in decisions.values() for d in ds}:
        rendered_spec, problem = _render(spec, chosen, clusters, workset.name, max_work_bytes)
        name = work_name(workset.name, chosen)
        if problem is None and chosen not in by_cluster and taken(name):
            problem = f"a Work named {name!r} exists that this WorkSet did not make"
        if problem is not None:
            errors[chosen] = problem
        else:
            rendered[chosen] = rendered_spec
    if errors:  # a cluster that cannot get its Work is left out of the rollout
        decisions = {
            placement: [d for d in chosen if d.cluster not in errors]
            for placement, chosen in decisions.items()
        }
    states = {
        cluster: WorkState.from_status(
            work.status,
            generation=work.generation,
            current=cluster in rendered and dict(work.spec) == rendered[cluster],
            updated_at=parse_time(work.annotations.get(RENDERED_AT)),
        )
        for cluster, work in by_cluster.items()
    }
    plan = plan_rollout(
        workset=spec,
        decisions=decisions,
        works=states,
        now=now,
        previous=previous_rollout(dict(workset.status)),
    )
    writes = tuple(
        WorkWrite(
            name=work_name(workset.name, cluster),
            cluster=cluster,
            labels={WORKSET_LABEL: workset.name, CLUSTER_LABEL: cluster},
            annotations={RENDERED_AT: rfc3339(now)},
            spec=rendered[cluster],
            expected_version=by_cluster[cluster].resource_version
            if cluster in by_cluster
            else None,
        )
        for cluster in plan.apply
        if cluster in rendered
    )
    deletes = tuple(by_cluster[c] for c in plan.delete if c in by_cluster)
    current = workset.status.get("conditions")
    conditions = workset_conditions(
        plan,
        generation=workset.generation,
        now=now,
        previous=current if isinstance(current, list) else [],
        missing_placements=missing,
    )
    conditions.append(_rendered_condition(errors, current, workset.generation, now))
    status = {**plan.status_document(), "conditions": conditions}
    return WorksetPlan(
        writes=writes, deletes=deletes, status=status, wake_at=plan.wake_at, placements=refs
    )


def _render(
    spec: WorkSetSpec, cluster: str, clusters: Mapping[str, ClusterView], workset: str, limit: int
) -> tuple[dict[str, Any], str | None]:
    name = work_name(workset, cluster)
    if not is_name(name):
        return {}, f"the Work name {name[:80]!r} is not a valid name (over 253 characters?)"
    view = clusters.get(cluster) or ClusterView(name=cluster)
    try:
        rendered = render_work_spec(spec, view)
    except SpecError as error:
        return {}, f"overrides do not apply: {str(error)[:300]}"
    size = len(json.dumps(rendered, separators=(",", ":")).encode())
    if size > limit:
        return {}, f"its Work would be {size} bytes, over the limit of {limit}"
    return rendered, None


def _rendered_condition(
    errors: Mapping[str, str], current: object, generation: int, now: float
) -> dict[str, Any]:
    previous = current if isinstance(current, list) else []
    if not errors:
        return set_condition(
            previous,
            kind="WorksRendered",
            status="True",
            reason="AsExpected",
            message="every chosen cluster's Work renders",
            generation=generation,
            now=now,
        )
    names = sorted(errors)
    shown = "; ".join(f"{n}: {errors[n]}" for n in names[:MAX_ERRORS_SHOWN])
    more = f" (and {len(names) - MAX_ERRORS_SHOWN} more)" if len(names) > MAX_ERRORS_SHOWN else ""
    return set_condition(
        previous,
        kind="WorksRendered",
        status="False",
        reason="RenderFailed",
        message=(shown + more)[:2048],
        generation=generation,
        now=now,
    )


def orphans(
    works: Sequence[StoredObject], worksets: Mapping[str, StoredObject]
) -> list[StoredObject]:
    """Works labelled with a WorkSet that no longer exists: deleted with it."""
    return [w for w in works if (ws := w.labels.get(WORKSET_LABEL)) and ws not in worksets]
