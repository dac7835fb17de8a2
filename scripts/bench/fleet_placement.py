"""Fleet benchmark piece: 100 placements scheduled over 1,000 registered clusters.

``placement_1000_clusters_ms()`` is the figure ``scripts/bench/fleet`` reports as
``placement_1000_clusters_ms``: the wall time, in milliseconds, of one scheduling pass of 100
placements over 1,000 clusters (the median of a few passes), through the pure scheduler
``fleet_model.placement.schedule`` the hub's controller calls. Goal: under 1,000 ms.

What is timed is the decision work alone, as the controller does it after a change: for each
placement, ``schedule`` over every cluster (sets, predicates, taints, prioritizers, groups, a
reason for every cluster not chosen), then its status document, with Balance fed the
decisions of the placements before it and Steady the pass before. The clusters are made once
from ManagedCluster documents through ``cluster_view`` (labels, claims, quantities, taints), as
the controller keeps them; that conversion is measured apart (``views_1000_clusters_ms``).
``placement_1000_clusters_cpu_ms`` is the CPU time of the same passes, the figure to trust
when other processes share the machine.

The fleet and the placements come from a fixed seed, so every run measures the same work.
Run alone, it prints one JSON line::

    .venv/bin/python scripts/bench/fleet_placement.py [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from fleet_model.cluster import (  # noqa: E402 - after the repository root is on the path
    CLUSTERSET_LABEL,
    TAINT_UNREACHABLE,
    ClusterSetView,
    ClusterView,
    cluster_set_view,
    cluster_view,
    format_time,
)
from fleet_model.placement import (  # noqa: E402
    PlacementSpec,
    parse_spec,
    placement_status,
    schedule,
)

CLUSTERS = 1000
PLACEMENTS = 100
NOW = 1_800_000_000.0
SEED = 14
REGIONS = ["eu-west", "eu-north", "us-east", "us-west", "ap-south"]
ENVS = ["prod", "stage", "dev"]
SETS = ["edge", "core", "lab"]


def cluster_documents(count: int = CLUSTERS, *, seed: int = SEED) -> list[dict[str, Any]]:
    """``count`` ManagedCluster documents as the hub stores them, varied like a real fleet."""
    rng = random.Random(seed)  # noqa: S311 - a fixed, repeatable fleet, not a secret
    documents = []
    for index in range(count):
        labels = {
            "env": rng.choice(ENVS),
            "region": rng.choice(REGIONS),
            "tier": rng.choice(["gold", "silver", "bronze"]),
        }
        if rng.random() < 0.75:
            labels[CLUSTERSET_LABEL] = rng.choice(SETS)
        if rng.random() < 0.1:
            labels["canary"] = "true"
        taints = []
        if rng.random() < 0.05:
            added = NOW - rng.randrange(0, 900)
            taints.append(
                {"key": TAINT_UNREACHABLE, "effect": "NoSelect", "timeAdded": format_time(added)}
            )
        if rng.random() < 0.03:
            taints.append({"key": "maintenance", "effect": "NoSelectIfNew"})
        documents.append(
            {
                "metadata": {"name": f"cluster-{index:04d}", "labels": labels},
                "spec": {"hubAcceptsClient": rng.random() > 0.03, "taints": taints},
                "status": {
                    "clusterClaims": [
                        {"name": "kubernetes.version", "value": "v1.36.3"},
                        {"name": "platform", "value": rng.choice(["kwok", "k3s", "eks"])},
                        {"name": "region", "value": labels["region"]},
                        {"name": "nodes", "value": str(rng.randrange(1, 200))},
                    ],
                    "allocatable": {
                        "cpu": f"{rng.randrange(2000, 256_000)}m",
                        "memory": f"{rng.randrange(4, 1024)}Gi",
                    },
                },
            }
        )
    return documents


def cluster_sets() -> list[ClusterSetView]:
    sets = [cluster_set_view({"metadata": {"name": name}, "spec": {}}) for name in SETS]
    sets.append(
        cluster_set_view(
            {
                "metadata": {"name": "europe"},
                "spec": {
                    "clusterSelector": {
                        "selectorType": "LabelSelector",
                        "labelSelector": {
                            "matchExpressions": [
                                {"key": "region", "operator": "In", "values": REGIONS[:2]}
                            ]
                        },
                    }
                },
            }
        )
    )
    return sets


def placement_specs(count: int = PLACEMENTS, *, seed: int = SEED) -> list[PlacementSpec]:
    """``count`` placements mixing every feature the scheduler has."""
    rng = random.Random(seed + 1)  # noqa: S311 - repeatable placements, not a secret
    specs = []
    builtins = ["Balance", "Steady", "ResourceAllocatableCPU", "ResourceAllocatableMemory"]
    for _ in range(count):
        spec: dict[str, Any] = {
            "numberOfClusters": rng.choice([None, 1, 3, 10, 50, 200]),
            "predicates": [
                {
                    "requiredClusterSelector": {
                        "labelSelector": {
                            "matchLabels": {"env": rng.choice(ENVS)},
                            "matchExpressions": [
                                {
                                    "key": "tier",
                                    "operator": "NotIn",
                                    "values": [rng.choice(["gold", "bronze"])],
                                }
                            ],
                        },
                        "claimSelector": {
                            "matchExpressions": [
                                {"key": "platform", "operator": "Exists"},
                            ]
                        },
                    }
                }
                for _ in range(rng.randrange(0, 3))
            ],
            "tolerations": [
                {"key": TAINT_UNREACHABLE, "operator": "Exists", "tolerationSeconds": 300}
            ]
            if rng.random() < 0.5
            else [],
            "prioritizerPolicy": {
                "mode": rng.choice(["Additive", "Exact"]),
                "configurations": [
                    {"scoreCoordinate": {"type": "BuiltIn", "builtIn": name}, "weight": weight}
                    for name, weight in zip(
                        rng.sample(builtins, rng.randrange(1, 4)),
                        [rng.randrange(-10, 11) for _ in builtins],
                        strict=False,
                    )
                ],
            },
            "decisionStrategy": {
                "groupStrategy": {
                    "clustersPerDecisionGroup": rng.choice([1, 5, "25%", "100%"]),
                    "decisionGroups": [
                        {
                            "groupName": "canary",
                            "groupClusterSelector": {
                                "labelSelector": {"matchLabels": {"canary": "true"}}
                            },
                        }
                    ],
                }
            },
        }
        if rng.random() < 0.4:
            spec["clusterSets"] = rng.sample([*SETS, "europe", "default"], rng.randrange(1, 3))
        specs.append(parse_spec(spec))
    return specs


def one_pass(
    specs: list[PlacementSpec],
    clusters: list[ClusterView],
    sets: list[ClusterSetView],
    previous: list[list[str]],
) -> list[list[str]]:
    """Schedule every placement once, as the controller's pass; returns each one's decisions."""
    counts: dict[str, int] = {}
    chosen: list[list[str]] = []
    for spec, before in zip(specs, previous, strict=True):
        result = schedule(spec, clusters, sets, before, NOW, decision_counts=counts)
        placement_status(result, now=NOW)
        for name in result.selected:
            counts[name] = counts.get(name, 0) + 1
        chosen.append(list(result.selected))
    return chosen


def placement_1000_clusters_ms(*, runs: int = 5) -> float:
    """Median milliseconds of one pass of 100 placements over 1,000 clusters."""
    return measure(runs=runs)["placement_1000_clusters_ms"]


def measure(*, runs: int = 5) -> dict[str, float]:
    documents = cluster_documents()
    started = time.perf_counter()
    clusters = [cluster_view(document) for document in documents]
    views_ms = (time.perf_counter() - started) * 1000
    sets = cluster_sets()
    specs = placement_specs()
    previous = one_pass(specs, clusters, sets, [[] for _ in specs])  # warm-up, and Steady's input
    times, cpu_times = [], []
    for _ in range(runs):
        started, cpu_started = time.perf_counter(), time.process_time()
        one_pass(specs, clusters, sets, previous)
        times.append((time.perf_counter() - started) * 1000)
        cpu_times.append((time.process_time() - cpu_started) * 1000)
    return {
        "placement_1000_clusters_ms": round(statistics.median(times), 1),
        # CPU time of the same passes: what the work costs when other processes share the
        # cores (wall time then counts their turns too).
        "placement_1000_clusters_cpu_ms": round(statistics.median(cpu_times), 1),
        "views_1000_clusters_ms": round(views_ms, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="passes to take the median of")
    args = parser.parse_args()
    figures = measure(runs=max(1, args.runs))
    print(json.dumps({**figures, "placements": PLACEMENTS, "clusters": CLUSTERS}))


if __name__ == "__main__":
    main()
