"""NodePool parsing: the typed view, defaults, every problem at once, bounds on huge input."""

from __future__ import annotations

import json
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet_model.elastic.nodepool import (
    API_VERSION,
    DEFAULT_COMMAND_TIMEOUT_SECONDS,
    DEFAULT_EMPTY_AFTER_SECONDS,
    DEFAULT_UNDER_USED_AFTER_SECONDS,
    DEFAULT_UTILIZATION_BELOW,
    POOL_LABEL,
    CommandProvider,
    KwokProvider,
    NodePool,
    TaintEffect,
    command_input,
    parse_command_output,
    parse_node_pool,
    scale_down_order,
    scale_up_order,
)
from fleet_model.problems import SpecError


def pool_doc(name: str = "cloud", **spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "priority": 10,
        "max": 4,
        "node": {"capacity": {"cpu": "4", "memory": "8Gi", "pods": 110}},
        "provider": {"kwok": {}},
    }
    base.update(spec)
    return {"apiVersion": API_VERSION, "kind": "NodePool", "metadata": {"name": name}, "spec": base}


def problems_of(doc: object) -> dict[str, str]:
    with pytest.raises(SpecError) as caught:
        parse_node_pool(doc)
    return dict(caught.value.problems)


def test_a_full_pool_parses_into_its_typed_view() -> None:
    doc = pool_doc(
        priority=50,
        min=1,
        max=8,
        node={
            "labels": {"topology.kubernetes.io/zone": "eu-1a", "tier": "cloud"},
            "taints": [{"key": "cloud", "value": "yes", "effect": "NoSchedule"}],
            "capacity": {"cpu": "3500m", "memory": "16Gi", "pods": 58},
        },
        provider={"command": {"path": "/usr/local/bin/cloud-nodes", "args": ["--region", "eu"]}},
        scaleDown={"emptyAfterSeconds": 60, "underUsedAfterSeconds": 120, "utilizationBelow": 0.3},
    )
    pool = parse_node_pool(doc)
    assert pool.name == "cloud"
    assert (pool.priority, pool.min, pool.max) == (50, 1, 8)
    assert pool.node.labels == {
        "topology.kubernetes.io/zone": "eu-1a",
        "tier": "cloud",
        POOL_LABEL: "cloud",
    }
    assert [(t.key, t.value, t.effect) for t in pool.node.taints] == [
        ("cloud", "yes", TaintEffect.NO_SCHEDULE)
    ]
    assert pool.node.cpu == Fraction(7, 2)
    assert pool.node.memory == 16 * 2**30
    assert pool.node.allocatable() == {
        "cpu": Fraction(7, 2),
        "memory": Fraction(16 * 2**30),
        "pods": Fraction(58),
    }
    assert pool.provider == CommandProvider(
        path="/usr/local/bin/cloud-nodes",
        args=("--region", "eu"),
        timeout_seconds=DEFAULT_COMMAND_TIMEOUT_SECONDS,
    )
    assert pool.scale_down.empty_after_seconds == 60
    assert pool.scale_down.under_used_after_seconds == 120
    assert pool.scale_down.utilization_below == Fraction(3, 10)


def test_defaults_are_the_documented_ones() -> None:
    pool = parse_node_pool(pool_doc())
    assert pool.min == 0
    assert pool.provider == KwokProvider()
    assert pool.scale_down.empty_after_seconds == DEFAULT_EMPTY_AFTER_SECONDS
    assert pool.scale_down.under_used_after_seconds == DEFAULT_UNDER_USED_AFTER_SECONDS
    assert pool.scale_down.utilization_below == DEFAULT_UTILIZATION_BELOW == Fraction(1, 2)


def test_every_problem_is_reported_at_once_with_its_path() -> None:
    doc = pool_doc(
        name="Not_A_Name",
        priority="high",
        min=5,
        max=2,
        node={
            "labels": {POOL_LABEL: "other", "bad key!": "x"},
            "taints": [{"key": "a", "effect": "Sometimes"}],
            "capacity": {"cpu": "lots", "memory": "-1Gi", "pods": 0},
        },
        provider={"command": {"path": "cloud-nodes", "timeoutSeconds": 0}},
        scaleDown={"utilizationBelow": 1.5, "emptyAfterSeconds": -1},
        extra=True,
    )
    found = problems_of(doc)
    assert set(found) == {
        "/metadata/name",
        "/spec",
        "/spec/priority",
        "/spec/min",
        f"/spec/node/labels/{POOL_LABEL.replace('/', '~1')}",
        "/spec/node/labels/bad key!",
        "/spec/node/taints/0/effect",
        "/spec/node/capacity/cpu",
        "/spec/node/capacity/memory",
        "/spec/node/capacity/pods",
        "/spec/provider/command/path",
        "/spec/provider/command/timeoutSeconds",
        "/spec/scaleDown/utilizationBelow",
        "/spec/scaleDown/emptyAfterSeconds",
    }
    assert "unknown fields: extra" in found["/spec"]
    assert "must not exceed max" in found["/spec/min"]
    assert "absolute" in found["/spec/provider/command/path"]


@pytest.mark.parametrize(
    ("provider", "path"),
    [
        ({}, "/spec/provider"),
        ({"kwok": {}, "command": {"path": "/bin/x"}}, "/spec/provider"),
        ({"kwok": {"nodes": 3}}, "/spec/provider/kwok"),
        ({"command": {}}, "/spec/provider/command/path"),
        ({"command": {"path": "/bin/x", "args": "--all"}}, "/spec/provider/command/args"),
        ({"command": {"path": "/bin/x", "args": [3]}}, "/spec/provider/command/args/0"),
        ({"command": {"path": "/bin/x\0y"}}, "/spec/provider/command/path"),
        ("kwok", "/spec/provider"),
    ],
)
def test_a_provider_must_be_exactly_one_well_formed_kind(provider: object, path: str) -> None:
    assert path in problems_of(pool_doc(provider=provider))


@pytest.mark.parametrize(
    ("spec", "path"),
    [
        ({"max": None}, "/spec/max"),
        ({"max": 1001}, "/spec/max"),
        ({"max": True}, "/spec/max"),
        ({"priority": 10**7}, "/spec/priority"),
        ({"priority": 1.5}, "/spec/priority"),
        ({"node": {"capacity": {"cpu": "1", "memory": "1Gi"}}}, "/spec/node/capacity/pods"),
        (
            {"node": {"capacity": {"cpu": "1e99999", "memory": "1", "pods": 1}}},
            "/spec/node/capacity/cpu",
        ),
        ({"node": {}}, "/spec/node/capacity"),
        ({"node": {"capacity": {"cpu": 2, "memory": "1", "pods": 1}}}, "/spec/node/capacity/cpu"),
        ({"scaleDown": {"utilizationBelow": "nan"}}, "/spec/scaleDown/utilizationBelow"),
        ({"scaleDown": {"utilizationBelow": True}}, "/spec/scaleDown/utilizationBelow"),
        ({"scaleDown": []}, "/spec/scaleDown"),
    ],
)
def test_bad_values_are_reported_at_their_path(spec: dict[str, Any], path: str) -> None:
    doc = pool_doc(**spec)
    if spec.get("max", 0) is None:
        del doc["spec"]["max"]
    assert path in problems_of(doc)


def test_not_an_object_at_all() -> None:
    assert problems_of("pool") == {"": "must be an object"}
    assert "/spec" in problems_of({"metadata": {"name": "x"}})
    assert "/apiVersion" in problems_of({**pool_doc(), "apiVersion": "v1"})
    assert "/kind" in problems_of({**pool_doc(), "kind": "Node"})


def test_a_name_longer_than_a_label_value_is_refused() -> None:
    # The name is written on every node as the pool label's value: 63 characters at most.
    assert "/metadata/name" in problems_of(pool_doc(name="a" * 64))
    assert parse_node_pool(pool_doc(name="a" * 63)).name == "a" * 63


def test_duplicate_taints_are_refused() -> None:
    taint = {"key": "a", "effect": "NoExecute"}
    doc = pool_doc(
        node={"taints": [taint, taint], "capacity": {"cpu": "1", "memory": "1", "pods": 1}}
    )
    assert "/spec/node/taints/1" in problems_of(doc)


def test_huge_input_is_refused_quickly_with_one_problem_per_list() -> None:
    # A 10 MB document: a long argument, a thousand labels, a hundred thousand taints.
    doc = pool_doc(
        node={
            "labels": {f"k{i}": "v" for i in range(1000)},
            "taints": [{"key": "a", "effect": "NoSchedule"}] * 100_000,
            "capacity": {"cpu": "1" * 10_000_000, "memory": "1", "pods": 1},
        },
        provider={"command": {"path": "/bin/x", "args": ["a" * 5000] + ["b"] * 10_000}},
    )
    found = problems_of(doc)
    assert found["/spec/node/labels"] == "at most 64 labels"
    assert found["/spec/node/taints"] == "at most 32 taints"
    assert "must be a Kubernetes quantity" in found["/spec/node/capacity/cpu"]
    assert "at most 64 strings" in found["/spec/provider/command/args"]
    assert len(str(SpecError(list(found.items())))) < 2000


def _pool(name: str, priority: int) -> NodePool:
    return parse_node_pool(pool_doc(name=name, priority=priority))


def test_scale_up_order_is_priority_then_name_and_scale_down_its_reverse() -> None:
    pools = [_pool("b", 5), _pool("virtual", 0), _pool("a", 5), _pool("local", 100)]
    assert [p.name for p in scale_up_order(pools)] == ["local", "a", "b", "virtual"]
    assert [p.name for p in scale_down_order(pools)] == ["virtual", "b", "a", "local"]


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
_fields = st.sampled_from(["priority", "min", "max", "node", "provider", "scaleDown"])


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(_fields, _json, max_size=6), st.sampled_from(["x", "", None, 3]))
def test_any_json_either_parses_or_gives_spec_error(spec: dict[str, Any], name: object) -> None:
    doc = {"metadata": {"name": name}, "spec": {**pool_doc()["spec"], **spec}}
    problems: list[tuple[str, str]] = []
    pool: NodePool | None = None
    try:
        pool = parse_node_pool(doc)
    except SpecError as error:
        problems = error.problems
    if pool is None:
        assert problems
        assert all(path.startswith("/") for path, _ in problems)
    else:
        assert 0 <= pool.min <= pool.max
        assert pool.node.labels[POOL_LABEL] == pool.name


def test_a_shape_may_list_more_resources_by_name() -> None:
    capacity = {
        "cpu": "2",
        "memory": "4Gi",
        "pods": 10,
        "ephemeral-storage": "100Gi",
        "nvidia.com/gpu": "0",
    }
    pool = parse_node_pool(pool_doc(node={"capacity": capacity}))
    assert pool.node.allocatable() == {
        "cpu": 2,
        "memory": 4 * 2**30,
        "pods": 10,
        "ephemeral-storage": 100 * 2**30,
        "nvidia.com/gpu": 0,
    }
    bad = {**capacity, "Bad Name": "1", "example.com/dongle": "-1"}
    found = problems_of(pool_doc(node={"capacity": bad}))
    assert set(found) == {
        "/spec/node/capacity/Bad Name",
        "/spec/node/capacity/example.com~1dongle",
    }
    many = {**capacity, **{f"example.com/r{i}": "1" for i in range(17)}}
    assert "/spec/node/capacity" in problems_of(pool_doc(node={"capacity": many}))


def test_the_command_provider_gets_the_node_shape_on_stdin() -> None:
    pool = parse_node_pool(
        pool_doc(
            node={
                "labels": {"tier": "cloud"},
                "taints": [{"key": "cloud", "effect": "NoSchedule"}],
                "capacity": {"cpu": "3500m", "memory": "1Gi", "pods": 58},
            }
        )
    )
    create = json.loads(command_input(pool, count=3))
    assert create == {
        "apiVersion": API_VERSION,
        "kind": "NodeRequest",
        "operation": "create",
        "pool": "cloud",
        "count": 3,
        "node": {
            "labels": {"tier": "cloud", POOL_LABEL: "cloud"},
            "taints": [{"key": "cloud", "value": "", "effect": "NoSchedule"}],
            "capacity": {"cpu": "3500m", "memory": str(2**30), "pods": "58"},
        },
    }
    delete = json.loads(command_input(pool, node="cloud-7"))
    assert (delete["operation"], delete["nodeName"]) == ("delete", "cloud-7")
    with pytest.raises(ValueError, match="count"):
        command_input(pool)


def test_a_create_command_output_is_read_strictly() -> None:
    assert parse_command_output(b'{"nodes": ["cloud-1", "cloud-2"]}', asked=2) == (
        "cloud-1",
        "cloud-2",
    )
    assert parse_command_output(b'{"nodes": []}', asked=2) == ()
    for garbage, message in [
        (b"created cloud-1", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[" * 60_000, "not JSON"),  # nesting deeper than the parser goes
        (b'{"nodes": "cloud-1"}', "not JSON"),
        (b'{"nodes": ["a", "b", "c"]}', "3 node names, 2 were asked for"),
        (b'{"nodes": ["Cloud_1"]}', "not a DNS-1123 name"),
        (b'{"nodes": [1]}', "not a DNS-1123 name"),
        (b'{"nodes": ["a", "a"]}', "twice"),
        (b" " * 70_000, "longer than"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_command_output(garbage, asked=2)
