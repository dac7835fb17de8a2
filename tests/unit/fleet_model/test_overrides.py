"""Per-cluster overrides: selection, RFC 7386 merge patches, RFC 6902 JSON patches, errors."""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleet_model.overrides import (
    OverrideError,
    apply_overrides,
    merge_patch,
    parse_overrides,
)
from fleet_model.problems import SpecError
from fleet_model.work import Manifest, parse_template


@dataclass(frozen=True)
class Cluster:
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)


EAST = Cluster("east", {"region": "eu", "tier": "edge"})
WEST = Cluster("west", {"region": "us"})


def manifests() -> tuple[Manifest, ...]:
    return parse_template(
        {
            "workload": {
                "manifests": [
                    {
                        "apiVersion": "apps/v1",
                        "kind": "Deployment",
                        "metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web"}},
                        "spec": {"replicas": 2, "template": {"spec": {"containers": []}}},
                    },
                    {
                        "apiVersion": "v1",
                        "kind": "ConfigMap",
                        "metadata": {"name": "web", "namespace": "shop"},
                        "data": {"mode": "default"},
                    },
                ]
            }
        }
    ).manifests


def bodies(result: tuple[Manifest, ...]) -> list[Mapping[str, Any]]:
    return [m.body for m in result]


# RFC 7386 section 3 / Appendix A: the test vectors of the RFC itself.
RFC7386 = [
    ({"a": "b"}, {"a": "c"}, {"a": "c"}),
    ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
    ({"a": "b"}, {"a": None}, {}),
    ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
    ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
    ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
    ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
    ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
    (["a", "b"], ["c", "d"], ["c", "d"]),
    ({"a": "b"}, ["c"], ["c"]),
    ({"a": "foo"}, None, None),
    ({"a": "foo"}, "bar", "bar"),
    ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
    ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
    ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
]


@pytest.mark.parametrize(("target", "patch", "expected"), RFC7386)
def test_merge_patch_follows_the_rfc_examples(
    target: object, patch: object, expected: object
) -> None:
    before = copy.deepcopy(target)
    assert merge_patch(target, patch) == expected
    assert target == before, "the target is not changed in place"


def test_a_merge_patch_for_clusters_chosen_by_labels() -> None:
    overrides = parse_overrides(
        [
            {
                "clusterSelector": {"labelSelector": {"matchLabels": {"region": "eu"}}},
                "resourceSelector": {"kind": "Deployment"},
                "mergePatch": {"spec": {"replicas": 5}, "metadata": {"labels": {"app": None}}},
            }
        ]
    )
    east = bodies(apply_overrides(manifests(), overrides, EAST))
    west = bodies(apply_overrides(manifests(), overrides, WEST))
    assert east[0]["spec"]["replicas"] == 5
    assert east[0]["metadata"] == {"name": "web", "namespace": "shop", "labels": {}}
    assert east[1] == west[1] == manifests()[1].body
    assert west == bodies(manifests())


def test_names_and_labels_must_both_match_and_expressions_work() -> None:
    overrides = parse_overrides(
        [
            {
                "clusterSelector": {
                    "clusterNames": ["east", "west"],
                    "labelSelector": {
                        "matchExpressions": [
                            {"key": "tier", "operator": "In", "values": ["edge", "core"]}
                        ]
                    },
                },
                "mergePatch": {"metadata": {"annotations": {"tier": "edge"}}},
            }
        ]
    )
    east = bodies(apply_overrides(manifests(), overrides, EAST))
    assert [b["metadata"].get("annotations") for b in east] == [{"tier": "edge"}] * 2
    assert bodies(apply_overrides(manifests(), overrides, WEST)) == bodies(manifests())
    elsewhere = Cluster("north", {"tier": "edge"})
    assert bodies(apply_overrides(manifests(), overrides, elsewhere)) == bodies(manifests())


def test_json_patches_apply_in_order_each_seeing_the_last() -> None:
    overrides = parse_overrides(
        [
            {
                "resourceSelector": {"group": "apps", "name": "web"},
                "jsonPatch": [{"op": "replace", "path": "/spec/replicas", "value": 3}],
            },
            {
                "clusterSelector": {"clusterNames": ["east"]},
                "resourceSelector": {"kind": "Deployment", "namespace": "shop"},
                "jsonPatch": [
                    {"op": "test", "path": "/spec/replicas", "value": 3},
                    {
                        "op": "add",
                        "path": "/spec/template/spec/containers/-",
                        "value": {"name": "x"},
                    },
                ],
            },
            {
                "resourceSelector": {"kind": "ConfigMap"},
                "jsonPatch": [
                    {"op": "copy", "from": "/data/mode", "path": "/data/copy"},
                    {"op": "move", "from": "/data/mode", "path": "/data/moved"},
                ],
            },
        ]
    )
    east = bodies(apply_overrides(manifests(), overrides, EAST))
    assert east[0]["spec"] == {"replicas": 3, "template": {"spec": {"containers": [{"name": "x"}]}}}
    assert east[1]["data"] == {"copy": "default", "moved": "default"}
    west = bodies(apply_overrides(manifests(), overrides, WEST))
    assert west[0]["spec"]["template"]["spec"]["containers"] == []
    assert manifests()[0].body["spec"]["replicas"] == 2


def test_a_failing_patch_names_the_override_the_manifest_and_the_cluster() -> None:
    overrides = parse_overrides(
        [
            {"mergePatch": {"metadata": {"labels": {"patched": "yes"}}}},
            {
                "resourceSelector": {"kind": "Deployment"},
                "jsonPatch": [{"op": "test", "path": "/spec/replicas", "value": 9}],
            },
            {
                "resourceSelector": {"kind": "ConfigMap"},
                "jsonPatch": [{"op": "remove", "path": "/data/absent"}],
            },
        ]
    )
    with pytest.raises(OverrideError) as caught:
        apply_overrides(manifests(), overrides, EAST)
    (first_path, first), (second_path, second) = caught.value.problems
    assert first_path == "/spec/overrides/1/jsonPatch"
    assert first.startswith("manifest 0 (apps/Deployment shop/web) on east: ")
    assert "9" in first
    assert second_path == "/spec/overrides/2/jsonPatch"
    assert second.startswith("manifest 1 (ConfigMap shop/web) on east: ")


def test_a_patch_may_not_change_which_object_it_is_or_break_it() -> None:
    renaming = parse_overrides([{"mergePatch": {"metadata": {"name": "other"}}}])
    with pytest.raises(OverrideError) as caught:
        apply_overrides(manifests(), renaming, EAST)
    assert caught.value.problems[0] == (
        "/spec/overrides/0/mergePatch",
        (
            "manifest 0 (apps/Deployment shop/web) on east: "
            "may not change group, kind, namespace or name"
        ),
    )
    breaking = parse_overrides([{"jsonPatch": [{"op": "remove", "path": "/kind"}]}])
    with pytest.raises(OverrideError, match="not a Kubernetes object after it: /kind: is required"):
        apply_overrides(manifests(), breaking, EAST)


def test_every_problem_of_the_overrides_is_reported_at_parse_time() -> None:
    with pytest.raises(SpecError) as caught:
        parse_overrides(
            [
                {"mergePatch": {}, "jsonPatch": []},
                {},
                {"mergePatch": [1]},
                {"jsonPatch": [{"op": "frobnicate", "path": "/a"}]},
                {"jsonPatch": [{"op": "add", "path": "a", "value": 1}]},
                {"jsonPatch": [{"op": "replace", "path": "/a"}]},
                {"jsonPatch": [{"op": "move", "path": "/a"}]},
                {
                    "clusterSelector": {
                        "clusterNames": ["Bad Name"],
                        "labelSelector": {
                            "matchLabels": {"ok": "yes", "bad key!": "x"},
                            "matchExpressions": [
                                {"key": "a", "operator": "Near"},
                                {"key": "a", "operator": "In", "values": []},
                                {"key": "a", "operator": "Exists", "values": ["x"]},
                            ],
                        },
                    },
                    "resourceSelector": {"kind": 3, "verb": "get"},
                    "mergePatch": {},
                },
                {"mergePatch": {"a": json.loads("[" * 70 + "]" * 70)}},
                "nope",
            ]
        )
    assert [path for path, _ in caught.value.problems] == [
        "/spec/overrides/0",
        "/spec/overrides/1",
        "/spec/overrides/2/mergePatch",
        "/spec/overrides/3/jsonPatch/0",
        "/spec/overrides/4/jsonPatch/0",
        "/spec/overrides/5/jsonPatch/0",
        "/spec/overrides/6/jsonPatch/0",
        "/spec/overrides/7/clusterSelector/clusterNames/0",
        "/spec/overrides/7/clusterSelector/labelSelector/matchLabels/bad key!",
        "/spec/overrides/7/clusterSelector/labelSelector/matchExpressions/0/operator",
        "/spec/overrides/7/clusterSelector/labelSelector/matchExpressions/1/values",
        "/spec/overrides/7/clusterSelector/labelSelector/matchExpressions/2/values",
        "/spec/overrides/7/resourceSelector/kind",
        "/spec/overrides/7/resourceSelector/verb",
        "/spec/overrides/8/mergePatch",
        "/spec/overrides/9",
    ]


def test_at_most_100_overrides() -> None:
    assert len(parse_overrides([{"mergePatch": {}}] * 100)) == 100
    with pytest.raises(SpecError, match="at most 100 overrides"):
        parse_overrides([{"mergePatch": {}}] * 101)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=4),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.sampled_from("abcd"), children, max_size=3)
    ),
    max_leaves=12,
)
objects = st.dictionaries(st.sampled_from("abcd"), json_values, max_size=4)


@given(json_values, json_values)
def test_a_merge_patch_twice_is_the_patch_once_and_changes_nothing_in_place(
    target: object, patch: object
) -> None:
    before_target, before_patch = copy.deepcopy(target), copy.deepcopy(patch)
    once = merge_patch(target, patch)
    assert merge_patch(once, patch) == once  # RFC 7386 patches are idempotent
    assert (target, patch) == (before_target, before_patch)


@given(objects)
def test_an_empty_merge_patch_keeps_an_object(target: dict[str, object]) -> None:
    assert merge_patch(target, {}) == target


pointers = st.sampled_from(
    ["", "/a", "/spec/replicas", "/metadata/name", "/kind", "/data/-", "/spec/template/spec/x"]
)
operations = st.fixed_dictionaries(
    {"op": st.sampled_from(["add", "remove", "replace", "move", "copy", "test", "x"])},
    optional={"path": pointers, "from": pointers, "value": json_values},
)
override_like = st.fixed_dictionaries(
    {},
    optional={
        "clusterSelector": st.fixed_dictionaries(
            {}, optional={"clusterNames": st.lists(st.sampled_from(["east", "west", "X"]))}
        ),
        "resourceSelector": st.fixed_dictionaries(
            {}, optional={"kind": st.sampled_from(["Deployment", "ConfigMap", ""])}
        ),
        "mergePatch": objects,
        "jsonPatch": st.lists(operations, max_size=3),
    },
)


@given(st.lists(override_like | json_values | objects, max_size=4))
def test_any_overrides_are_taken_or_refused_with_problems(value: list[object]) -> None:
    problems: list[tuple[str, str]] = []
    try:
        parsed = parse_overrides(value)
    except SpecError as error:
        problems = error.problems
        assert problems, "a refusal must say why"
    else:
        # Whatever was taken applies or fails with problems, never with another exception.
        failed: list[tuple[str, str]] = []
        try:
            apply_overrides(manifests(), parsed, EAST)
        except OverrideError as error:
            failed = error.problems
            assert failed, "a failure must say why"
