"""``get``'s kinds and table columns, on fixed documents (what each column reads)."""

from __future__ import annotations

from calendar import timegm
from typing import Any

import pytest

from tunnel_server.client import exits
from tunnel_server.client.fleet_objects import COLUMNS, age, resolve_kind

T0 = "2026-12-03T20:00:00Z"


def row(kind: str, document: dict[str, Any], *, wide: bool = False) -> dict[str, str]:
    return {c.header: c.value(document) for c in COLUMNS[kind] if wide or not c.wide}


def cond(kind: str, status: str) -> dict[str, str]:
    return {"type": kind, "status": status, "reason": "R", "lastTransitionTime": T0}


@pytest.mark.parametrize(
    ("typed", "kind"),
    [
        ("mc", "ManagedCluster"),
        ("MC", "ManagedCluster"),
        ("managedcluster", "ManagedCluster"),
        ("ManagedClusters", "ManagedCluster"),
        ("mcs", "ManagedClusterSet"),
        ("clustersets", "ManagedClusterSet"),
        ("placement", "Placement"),
        ("Placements", "Placement"),
        ("placement.fleet.edgefleet.io", "Placement"),
        ("work", "Work"),
        ("works", "Work"),
        ("workset", "WorkSet"),
        ("WORKSETS", "WorkSet"),
        ("gitsource", "GitSource"),
        ("gitsources", "GitSource"),
    ],
)
def test_kind_names(typed: str, kind: str) -> None:
    assert resolve_kind(typed) == kind


@pytest.mark.parametrize("typed", ["deployment", "", "placementss", "fleet.edgefleet.io", "m c"])
def test_unknown_kinds_are_usage_errors(typed: str) -> None:
    with pytest.raises(exits.ClientError) as caught:
        resolve_kind(typed)
    assert caught.value.code == exits.USAGE
    assert "managedclusters (ManagedCluster)" in str(caught.value)


def test_managed_cluster_columns() -> None:
    document = {
        "metadata": {"name": "east", "labels": {"region": "eu", "env": "prod"}},
        "spec": {
            "hubAcceptsClient": True,
            "taints": [{"key": "fleet.edgefleet.io/unreachable", "effect": "NoSelect"}],
        },
        "status": {
            "conditions": [cond("Available", "Unknown"), cond("ManagedClusterJoined", "True")],
            "clusterClaims": [{"name": "nodes", "value": "3"}],
            "version": {"kubernetes": "v1.36.3"},
        },
    }
    assert row("ManagedCluster", document, wide=True) == {
        "NAME": "east",
        "ACCEPTED": "true",
        "JOINED": "True",
        "AVAILABLE": "Unknown",
        "LABELS": "env=prod,region=eu",
        "TAINTS": "fleet.edgefleet.io/unreachable:NoSelect",
        "KUBERNETES": "v1.36.3",
        "NODES": "3",
        "AGE": "-",
    }
    bare = row("ManagedCluster", {"metadata": {"name": "new"}, "spec": {}})
    assert bare == {"NAME": "new", "ACCEPTED": "-", "AVAILABLE": "-", "LABELS": "-", "AGE": "-"}


def test_placement_workset_work_columns() -> None:
    placement = {
        "metadata": {"name": "web"},
        "status": {
            "numberOfSelectedClusters": 2,
            "decisions": [{"clusterName": "east"}, {"clusterName": "west"}],
            "decisionGroups": [{"decisionGroupIndex": 0}],
            "conditions": [cond("PlacementSatisfied", "False")],
        },
    }
    assert row("Placement", placement, wide=True) == {
        "NAME": "web",
        "SELECTED": "2",
        "SATISFIED": "False",
        "CLUSTERS": "east,west",
        "GROUPS": "1",
        "AGE": "-",
    }
    workset = {
        "metadata": {"name": "web"},
        "spec": {"placementRefs": [{"name": "a"}, {"name": "b"}]},
        "status": {
            "summary": {"total": 3, "applied": 3, "available": 2, "degraded": 1},
            "rollout": {"phase": "Halted"},
        },
    }
    assert row("WorkSet", workset, wide=True) == {
        "NAME": "web",
        "CLUSTERS": "3",
        "APPLIED": "3",
        "AVAILABLE": "2",
        "DEGRADED": "1",
        "PHASE": "Halted",
        "PLACEMENTS": "a,b",
        "AGE": "-",
    }
    work = {
        "metadata": {"name": "web.east", "labels": {"fleet.edgefleet.io/workset": "web"}},
        "spec": {"clusterName": "east", "workload": {"manifests": [{}, {}]}},
        "status": {"conditions": [cond("Applied", "True"), cond("Degraded", "False")]},
    }
    assert row("Work", work, wide=True) == {
        "NAME": "web.east",
        "CLUSTER": "east",
        "APPLIED": "True",
        "AVAILABLE": "-",
        "DEGRADED": "False",
        "RESOURCES": "2",
        "WORKSET": "web",
        "AGE": "-",
    }


def test_columns_survive_any_shape() -> None:
    """A server's odd document never breaks the table (a '-' instead)."""
    odd_shapes: list[dict[str, Any]] = [
        {},
        {"metadata": []},
        {"spec": "x", "status": [1]},
        {"status": {"conditions": 7}},
    ]
    for kind, columns in COLUMNS.items():
        for odd in odd_shapes:
            assert all(isinstance(c.value(odd), str) for c in columns), kind


def test_age() -> None:
    created = {"metadata": {"creationTimestamp": T0}}
    then = timegm((2026, 12, 3, 20, 0, 0, 0, 0, 0))
    assert age(created, now=then + 42) == "42s"
    assert age(created, now=then + 5 * 60) == "5m"
    assert age(created, now=then + 3 * 3600) == "3h"
    assert age(created, now=then + 90 * 60) == "90m"
    assert age(created, now=then + 3 * 86400) == "3d"
    assert age(created, now=then - 10) == "0s"
    assert age({"metadata": {"creationTimestamp": "yesterday"}}) == "-"
