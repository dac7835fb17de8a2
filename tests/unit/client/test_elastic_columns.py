"""``get nodepools|resourcepolicies --cluster C``: kind names, columns, what is a usage error.

The commands against a real server and a real member cluster:
tests/integration/clusters/elastic_view/test_elastic_view.py.
"""

from __future__ import annotations

import argparse
from typing import Any, cast

import pytest

from tunnel_server.client import exits
from tunnel_server.client.elastic_commands import COLUMNS, cmd_get_elastic, resolve_elastic_kind
from tunnel_server.client.http import ApiClient


@pytest.mark.parametrize(
    ("typed", "kind"),
    [
        ("nodepools", "NodePool"),
        ("NodePool", "NodePool"),
        ("np", "NodePool"),
        ("nodepools.elastic.edgefleet.io", "NodePool"),
        ("resourcepolicies", "ResourcePolicy"),
        ("ResourcePolicy", "ResourcePolicy"),
        ("RP", "ResourcePolicy"),
        ("placements", None),
        ("nodes", None),
        ("nodepool.fleet.edgefleet.io", None),
    ],
)
def test_kind_names(typed: str, kind: str | None) -> None:
    assert resolve_elastic_kind(typed) == kind


def row(kind: str, item: dict[str, Any], *, wide: bool = False) -> dict[str, str]:
    return {c.header: c.value(item) for c in COLUMNS[kind] if wide or not c.wide}


def test_a_pool_row() -> None:
    item = {
        "name": "cloud",
        "createdAt": None,
        "priority": 10,
        "min": 0,
        "max": 4,
        "provider": "kwok",
        "nodeCapacity": {"cpu": "2", "memory": "4Gi", "pods": "20"},
        "nodes": 3,
        "creating": 1,
        "removing": 0,
        "conditions": [
            {"type": "ProviderReady", "status": "False"},
            {"type": "AtMax", "status": "True"},
        ],
    }
    assert row("NodePool", item) == {
        "NAME": "cloud",
        "PRIORITY": "10",
        "MIN": "0",
        "MAX": "4",
        "NODES": "3",
        "CREATING": "1",
        "PROVIDER": "kwok",
        "PROVIDER-READY": "False",
        "AGE": "-",
    }
    wide = row("NodePool", item, wide=True)
    assert (wide["AT-MAX"], wide["CPU"], wide["MEMORY"], wide["PODS"]) == ("True", "2", "4Gi", "20")


def test_a_policy_row_shows_pods_per_unit_over_max() -> None:
    item = {
        "namespace": "shop",
        "name": "web",
        "units": [
            {"name": "local", "pods": 4, "max": 4},
            {"name": "cloud", "pods": None, "max": 4},
            {"name": "virtual", "pods": 2, "max": None},
        ],
        "waiting": 0,
        "conditions": [{"type": "Accepted", "status": "True"}],
    }
    shown = row("ResourcePolicy", item)
    assert shown["UNITS"] == "local=4/4,cloud=?/4,virtual=2"
    assert (shown["NAMESPACE"], shown["WAITING"], shown["ACCEPTED"]) == ("shop", "0", "True")


@pytest.mark.parametrize(
    ("kind", "given", "words"),
    [
        ("NodePool", {}, "--cluster NAME"),
        ("NodePool", {"cluster": "east", "namespace": "shop"}, "cluster-wide"),
        ("ResourcePolicy", {"cluster": "east", "selector": "a=b"}, "--selector"),
    ],
)
def test_usage_errors_before_any_call(kind: str, given: dict[str, str], words: str) -> None:
    args = argparse.Namespace(output="table", cluster=None, namespace=None, selector=None)
    for key, value in given.items():
        setattr(args, key, value)
    never = cast("ApiClient", None)  # never called: the arguments are refused first
    with pytest.raises(exits.ClientError) as caught:
        cmd_get_elastic(args, never, kind, [])
    assert caught.value.code == exits.USAGE
    assert words in str(caught.value)
