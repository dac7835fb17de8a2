"""Placement: run ``fleet_model.placement.schedule`` for the placements whose inputs moved.

Inputs of a placement's decisions: the ClusterViews (labels, claims, taints, allocatable,
hubAcceptsClient), the ManagedClusterSets, its own spec, its previous decisions (Steady,
NoSelectIfNew: read from its current status), the other placements' decision counts
(Balance), and the clock (a ``tolerationSeconds`` running out: ``wake_at``). The controller
calls ``schedule_placement`` for every placement when a view or a set changed, else only for
the placements that changed or whose ``wake_at`` came.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fleet_model.cluster import ClusterSetView, ClusterView
from fleet_model.placement import misconfigured_status, parse_spec, placement_status, schedule
from fleet_model.problems import SpecError
from tunnel_server.fleet.hub.store import StoredObject

__all__ = ["Scheduled", "decisions_of", "schedule_placement"]


@dataclass(frozen=True, kw_only=True, slots=True)
class Scheduled:
    status: dict[str, Any]
    wake_at: float | None


def decisions_of(status: Mapping[str, Any]) -> list[str]:
    """The clusters a placement's status says it chose, in its order."""
    decisions = status.get("decisions")
    if not isinstance(decisions, list):
        return []
    return [
        d["clusterName"]
        for d in decisions
        if isinstance(d, Mapping) and isinstance(d.get("clusterName"), str)
    ]


def schedule_placement(
    placement: StoredObject,
    *,
    clusters: Sequence[ClusterView],
    sets: Sequence[ClusterSetView],
    counts: Mapping[str, int],
    now: float,
) -> Scheduled:
    """The status ``placement`` should have now.

    ``counts``: per cluster, the decisions of the placements before this one by name (Balance).
    Counting only those before it keeps the result the same whether one placement or all are
    scheduled, so a full pass and a partial one agree and two placements never flip-flop.
    """
    conditions = placement.status.get("conditions")
    current = conditions if isinstance(conditions, list) else []
    try:
        spec = parse_spec(dict(placement.spec))
    except SpecError as error:
        status = misconfigured_status(
            error, conditions=current, generation=placement.generation, now=now
        )
        return Scheduled(status=status, wake_at=None)
    previous = decisions_of(placement.status)
    result = schedule(spec, clusters, sets, previous, now, decision_counts=counts)
    status = placement_status(result, conditions=current, generation=placement.generation, now=now)
    return Scheduled(status=status, wake_at=result.wake_at)
