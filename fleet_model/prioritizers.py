"""Placement prioritizers: the built-in scores of Open Cluster Management, each in [-100, 100].

The formulas are OCM's (open-cluster-management-io/ocm ``pkg/placement/plugins/{balance,
steady,resource}``), with the same integer truncation, so a placement ranks clusters as OCM
would:

* **Balance**: spreads placements over clusters. ``count`` = decisions other placements hold
  on the cluster, ``max`` = the largest such count over all clusters. A cluster no other
  placement chose scores 100; else ``2 x trunc(100 x (0.5 - count / max))`` (the busiest -100).
* **Steady**: keeps decisions stable: 100 for a cluster in this placement's previous
  decisions, 0 otherwise.
* **ResourceAllocatableCPU / ResourceAllocatableMemory**: more allocatable, higher score:
  ``trunc(((a - min) / (max - min) - 0.5) x 200)`` over the clusters that passed the filters
  and report the resource; 100 for all when ``max == min``; a cluster that does not report it
  gets no score from this prioritizer (0 in the sum), as in OCM.

The final score of a cluster is sum of weight x score over the prioritizers of nonzero weight.
Weights are in [-10, 10]; mode ``Additive`` starts from Balance = 1 and Steady = 1 and lets
the placement override or add; ``Exact`` uses only the listed ones.

Where ours differ from OCM's:

* Balance counts the decisions the caller passes (``decision_counts``: other placements'
  decisions per cluster); OCM lists every PlacementDecision in the hub. Without counts, every
  cluster scores 100, which is OCM's answer when no other placement exists.
* A cluster needs only ``allocatable`` to be scored on a resource (OCM also wants
  ``capacity``).
* Resources are compared as exact integers (millicores, bytes), not OCM's approximate float
  of a quantity; the rank is the same, the truncation may differ by one at a boundary.
* AddOn scores (``AddOnPlacementScore``) are not supported: parse_spec refuses them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from enum import StrEnum

__all__ = [
    "MAX_SCORE",
    "MAX_WEIGHT",
    "MIN_SCORE",
    "MIN_WEIGHT",
    "Prioritizer",
    "allocatable_scores",
    "balance_scores",
    "steady_scores",
]

MAX_SCORE, MIN_SCORE = 100, -100
MAX_WEIGHT, MIN_WEIGHT = 10, -10


class Prioritizer(StrEnum):
    BALANCE = "Balance"
    STEADY = "Steady"
    RESOURCE_ALLOCATABLE_CPU = "ResourceAllocatableCPU"
    RESOURCE_ALLOCATABLE_MEMORY = "ResourceAllocatableMemory"


def balance_scores(names: Sequence[str], decision_counts: Mapping[str, int]) -> dict[str, int]:
    """Balance: 100 for a cluster no other placement chose, down to -100 for the busiest."""
    busiest = max((count for count in decision_counts.values() if count > 0), default=0)
    scores: dict[str, int] = {}
    for name in names:
        count = decision_counts.get(name, 0)
        if count <= 0:
            scores[name] = MAX_SCORE
        else:
            usage = count / busiest
            scores[name] = 2 * int(MAX_SCORE * (0.5 - usage))
    return scores


def steady_scores(names: Sequence[str], previous: AbstractSet[str]) -> dict[str, int]:
    """Steady: 100 for a cluster the placement already chose, 0 otherwise."""
    return {name: MAX_SCORE if name in previous else 0 for name in names}


def allocatable_scores(values: Mapping[str, int | None]) -> dict[str, int]:
    """ResourceAllocatable*: scaled between the least (-100) and the most (100) allocatable.

    ``values``: cluster → allocatable amount (None: not reported, left out of the result).
    """
    known = {name: value for name, value in values.items() if value is not None}
    if not known:
        return {}
    least, most = min(known.values()), max(known.values())
    if least == most:
        return dict.fromkeys(known, MAX_SCORE)
    span = most - least
    return {
        name: int(((value - least) / span - 0.5) * 2.0 * 100.0) for name, value in known.items()
    }
