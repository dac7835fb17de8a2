"""Placement: the spec, each scheduling rule as a script, and the scheduler's properties."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet_model.cluster import (
    CLUSTERSET_LABEL,
    TAINT_UNREACHABLE,
    ClusterSetView,
    ClusterView,
    Taint,
    TaintEffect,
    cluster_set_view,
    format_time,
)
from fleet_model.documents import API_VERSION, SpecError, validate_document
from fleet_model.placement import (
    PlacementResult,
    PolicyMode,
    Toleration,
    TolerationOperator,
    misconfigured_status,
    parse_spec,
    placement_status,
    schedule,
)
from fleet_model.prioritizers import (
    Prioritizer,
    allocatable_scores,
    balance_scores,
    steady_scores,
)

NOW = 1_800_000_000.0


def cluster(
    name: str,
    *,
    labels: dict[str, str] | None = None,
    claims: dict[str, str] | None = None,
    taints: tuple[Taint, ...] = (),
    cpu: int | None = None,
    memory: int | None = None,
    accepted: bool = True,
) -> ClusterView:
    return ClusterView(
        name=name,
        labels=labels or {},
        claims=claims or {},
        taints=taints,
        allocatable_cpu=cpu,
        allocatable_memory=memory,
        accepted=accepted,
    )


def run(
    spec: dict[str, Any],
    clusters: list[ClusterView],
    *,
    sets: list[ClusterSetView] | None = None,
    previous: list[str] | None = None,
    now: float = NOW,
    counts: dict[str, int] | None = None,
) -> PlacementResult:
    return schedule(
        parse_spec(spec), clusters, sets or [], previous or [], now, decision_counts=counts
    )


def reasons(result: PlacementResult) -> dict[str, str]:
    return {n.cluster_name: n.reason for n in result.not_selected}


def exact(*pairs: tuple[str, int]) -> dict[str, Any]:
    return {
        "mode": "Exact",
        "configurations": [
            {"scoreCoordinate": {"type": "BuiltIn", "builtIn": name}, "weight": weight}
            for name, weight in pairs
        ],
    }


def label_predicate(**labels: str) -> dict[str, Any]:
    return {"requiredClusterSelector": {"labelSelector": {"matchLabels": labels}}}


# ---------------------------------------------------------------- the spec


OCM_EXAMPLE: dict[str, Any] = {
    "clusterSets": ["prod", "edge"],
    "numberOfClusters": 3,
    "predicates": [
        {
            "requiredClusterSelector": {
                "labelSelector": {
                    "matchLabels": {"env": "prod"},
                    "matchExpressions": [{"key": "zone", "operator": "NotIn", "values": ["z9"]}],
                },
                "claimSelector": {
                    "matchExpressions": [
                        {"key": "region", "operator": "In", "values": ["eu west", "us"]}
                    ]
                },
            }
        }
    ],
    "tolerations": [
        {"key": TAINT_UNREACHABLE, "operator": "Exists", "tolerationSeconds": 300},
        {"operator": "Exists", "effect": "NoSelectIfNew"},
    ],
    "prioritizerPolicy": {
        "mode": "Additive",
        "configurations": [
            {
                "scoreCoordinate": {"type": "BuiltIn", "builtIn": "ResourceAllocatableCPU"},
                "weight": 2,
            },
            {"scoreCoordinate": {"builtIn": "Steady"}, "weight": 3},
        ],
    },
    "decisionStrategy": {
        "groupStrategy": {
            "clustersPerDecisionGroup": "25%",
            "decisionGroups": [
                {
                    "groupName": "canary",
                    "groupClusterSelector": {"labelSelector": {"matchLabels": {"canary": "true"}}},
                }
            ],
        }
    },
}


def test_ocms_shape_is_read_whole() -> None:
    spec = parse_spec(OCM_EXAMPLE)
    assert spec.cluster_sets == ("prod", "edge")
    assert spec.number_of_clusters == 3
    assert str(spec.predicates[0].label_selector) == "env=prod,zone notin (z9)"
    assert str(spec.predicates[0].claim_selector) == "region in (eu west,us)"
    assert spec.tolerations == (
        Toleration(
            key=TAINT_UNREACHABLE, operator=TolerationOperator.EXISTS, toleration_seconds=300
        ),
        Toleration(operator=TolerationOperator.EXISTS, effect=TaintEffect.NO_SELECT_IF_NEW),
    )
    assert spec.prioritizer_policy.mode is PolicyMode.ADDITIVE
    assert spec.prioritizer_policy.weights() == {
        Prioritizer.BALANCE: 1,
        Prioritizer.STEADY: 3,
        Prioritizer.RESOURCE_ALLOCATABLE_CPU: 2,
    }
    assert spec.decision_strategy.clusters_per_group == "25%"
    assert spec.decision_strategy.groups[0].name == "canary"


def test_an_empty_spec_places_on_every_cluster_with_balance_and_steady() -> None:
    spec = parse_spec({})
    assert (spec.cluster_sets, spec.number_of_clusters, spec.predicates) == ((), None, ())
    assert spec.prioritizer_policy.weights() == {Prioritizer.BALANCE: 1, Prioritizer.STEADY: 1}


def test_exact_mode_uses_only_the_listed_prioritizers_and_drops_zero_weights() -> None:
    spec = parse_spec(
        {"prioritizerPolicy": exact(("ResourceAllocatableMemory", -2), ("Balance", 0))}
    )
    assert spec.prioritizer_policy.weights() == {Prioritizer.RESOURCE_ALLOCATABLE_MEMORY: -2}


BAD_SPECS: list[tuple[dict[str, Any], str, str]] = [
    ({"spreadPolicy": {}}, "/spec", "unknown fields: spreadPolicy"),
    ({"clusterSets": ["Prod"]}, "/spec/clusterSets/0", "cluster set name"),
    ({"clusterSets": ["a", "a"]}, "/spec/clusterSets/1", "twice"),
    ({"clusterSets": "a"}, "/spec/clusterSets", "must be a list"),
    ({"numberOfClusters": -1}, "/spec/numberOfClusters", "integer"),
    ({"numberOfClusters": True}, "/spec/numberOfClusters", "integer"),
    ({"predicates": [{"celSelector": {}}]}, "/spec/predicates/0", "unknown fields"),
    (
        {
            "predicates": [
                {"requiredClusterSelector": {"claimSelector": {"matchLabels": {"a": "b"}}}}
            ]
        },
        "/spec/predicates/0/requiredClusterSelector/claimSelector",
        "unknown fields: matchLabels",
    ),
    (
        {"predicates": [label_predicate(env="bad value")]},
        "/spec/predicates/0/requiredClusterSelector/labelSelector/matchLabels/env",
        "invalid label value",
    ),
    ({"tolerations": [{"operator": "Equal"}]}, "/spec/tolerations/0/key", "needs operator Exists"),
    (
        {"tolerations": [{"key": "a", "operator": "Exists", "value": "b"}]},
        "/spec/tolerations/0/value",
        "must be empty",
    ),
    ({"tolerations": [{"key": "a", "operator": "In"}]}, "/spec/tolerations/0/operator", "Equal"),
    (
        {"tolerations": [{"key": "a", "effect": "NoExecute"}]},
        "/spec/tolerations/0/effect",
        "NoSelect",
    ),
    (
        {"tolerations": [{"key": "a", "tolerationSeconds": -5}]},
        "/spec/tolerations/0/tolerationSeconds",
        "integer",
    ),
    ({"prioritizerPolicy": {"mode": "Sum"}}, "/spec/prioritizerPolicy/mode", "Additive or Exact"),
    (
        {"prioritizerPolicy": exact(("Balance", 11))},
        "/spec/prioritizerPolicy/configurations/0/weight",
        "-10..10",
    ),
    (
        {"prioritizerPolicy": exact(("Spread", 1))},
        "/spec/prioritizerPolicy/configurations/0/scoreCoordinate/builtIn",
        "must be one of",
    ),
    (
        {"prioritizerPolicy": exact(("Steady", 1), ("Steady", 2))},
        "/spec/prioritizerPolicy/configurations/1",
        "configured above",
    ),
    (
        {
            "prioritizerPolicy": {
                "configurations": [{"scoreCoordinate": {"type": "AddOn", "addOn": {}}, "weight": 1}]
            }
        },
        "/spec/prioritizerPolicy/configurations/0/scoreCoordinate",
        "unknown fields: addOn",
    ),
    (
        {"prioritizerPolicy": {"configurations": [{"weight": 1}]}},
        "/spec/prioritizerPolicy/configurations/0/scoreCoordinate",
        "is required",
    ),
    (
        {"decisionStrategy": {"groupStrategy": {"clustersPerDecisionGroup": "0%"}}},
        "/spec/decisionStrategy/groupStrategy/clustersPerDecisionGroup",
        "N%",
    ),
    (
        {"decisionStrategy": {"groupStrategy": {"clustersPerDecisionGroup": 0}}},
        "/spec/decisionStrategy/groupStrategy/clustersPerDecisionGroup",
        "N%",
    ),
    (
        {"decisionStrategy": {"groupStrategy": {"decisionGroups": [{"groupClusterSelector": {}}]}}},
        "/spec/decisionStrategy/groupStrategy/decisionGroups/0/groupName",
        "must be a string",
    ),
    (
        {
            "decisionStrategy": {
                "groupStrategy": {"decisionGroups": [{"groupName": "a"}, {"groupName": "a"}]}
            }
        },
        "/spec/decisionStrategy/groupStrategy/decisionGroups/1/groupName",
        "used above",
    ),
    ({"tolerations": [{"key": "a"}] * 33}, "/spec/tolerations", "at most 32"),
]


@pytest.mark.parametrize(("spec", "path", "words"), BAD_SPECS)
def test_a_bad_spec_is_refused_at_the_field_that_is_wrong(
    spec: dict[str, Any], path: str, words: str
) -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec(spec)
    assert any(p == path and words in m for p, m in caught.value.problems), caught.value.problems


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec({"numberOfClusters": "3", "tolerations": [{"operator": "Equal"}], "x": 1})
    assert [p for p, _ in caught.value.problems] == [
        "/spec",
        "/spec/numberOfClusters",
        "/spec/tolerations/0/key",
    ]


def test_a_placement_document_goes_through_the_envelope_to_this_parser() -> None:
    document = {
        "apiVersion": API_VERSION,
        "kind": "Placement",
        "metadata": {"name": "web"},
        "spec": OCM_EXAMPLE,
    }
    assert validate_document(document).parsed == parse_spec(OCM_EXAMPLE)


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=8),
        lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=12), c, max_size=4),
        max_leaves=20,
    )
)
def test_any_spec_is_taken_or_refused_with_problems(value: object) -> None:
    problems: list[tuple[str, str]] = []
    try:
        parse_spec(value)
    except SpecError as error:
        problems = error.problems
        assert problems, "a refusal must say why"
    assert all(path.startswith("/spec") for path, _ in problems)


# ---------------------------------------------------------------- cluster sets and acceptance


def test_a_cluster_outside_the_placements_sets_is_not_selected_and_says_so() -> None:
    clusters = [
        cluster("a", labels={CLUSTERSET_LABEL: "edge"}),
        cluster("b", labels={CLUSTERSET_LABEL: "core"}),
        cluster("c"),
    ]
    edge = cluster_set_view({"metadata": {"name": "edge"}, "spec": {}})
    result = run({"clusterSets": ["edge", "default"]}, clusters, sets=[edge])
    assert result.selected == ("a", "c")
    assert reasons(result) == {"b": "not in cluster sets [edge, default]"}


def test_no_cluster_sets_means_every_cluster() -> None:
    clusters = [cluster("a", labels={CLUSTERSET_LABEL: "edge"}), cluster("b")]
    assert run({}, clusters).selected == ("a", "b")


def test_a_placement_on_a_set_that_does_not_exist_selects_nothing_and_says_why() -> None:
    result = run({"clusterSets": ["ghost"]}, [cluster("a")])
    assert result.selected == ()
    assert reasons(result) == {"a": "not in cluster sets [ghost]"}
    assert (result.satisfied, result.reason) == (False, "AllManagedClusterSetsEmpty")


def test_a_cluster_the_hub_has_not_accepted_is_never_selected() -> None:
    result = run({}, [cluster("a", accepted=False), cluster("b")])
    assert result.selected == ("b",)
    assert reasons(result) == {"a": "hubAcceptsClient is false"}


# ---------------------------------------------------------------- predicates


def test_a_label_predicate_selects_and_names_the_label_not_matched() -> None:
    clusters = [cluster("a", labels={"env": "prod"}), cluster("b", labels={"env": "dev"})]
    result = run({"predicates": [label_predicate(env="prod")]}, clusters)
    assert result.selected == ("a",)
    assert reasons(result) == {"b": "label env=prod not matched"}


def test_a_claim_predicate_reads_the_claims_not_the_labels() -> None:
    clusters = [
        cluster("a", claims={"region": "eu"}),
        cluster("b", labels={"region": "eu"}),
    ]
    predicate = {
        "requiredClusterSelector": {
            "claimSelector": {
                "matchExpressions": [{"key": "region", "operator": "In", "values": ["eu"]}]
            }
        }
    }
    result = run({"predicates": [predicate]}, clusters)
    assert result.selected == ("a",)
    assert reasons(result) == {"b": "claim region in (eu) not matched"}


def test_label_and_claim_selectors_of_one_predicate_must_both_match() -> None:
    clusters = [
        cluster("a", labels={"env": "prod"}, claims={"platform": "kwok"}),
        cluster("b", labels={"env": "prod"}, claims={"platform": "aws"}),
    ]
    predicate = {
        "requiredClusterSelector": {
            "labelSelector": {"matchLabels": {"env": "prod"}},
            "claimSelector": {
                "matchExpressions": [{"key": "platform", "operator": "NotIn", "values": ["aws"]}]
            },
        }
    }
    result = run({"predicates": [predicate]}, clusters)
    assert result.selected == ("a",)
    assert reasons(result) == {"b": "claim platform notin (aws) not matched"}


def test_predicates_are_ored_and_a_cluster_matching_none_hears_about_each() -> None:
    clusters = [
        cluster("a", labels={"env": "prod"}),
        cluster("b", labels={"env": "stage"}),
        cluster("c", labels={"env": "dev"}),
    ]
    result = run(
        {"predicates": [label_predicate(env="prod"), label_predicate(env="stage")]}, clusters
    )
    assert result.selected == ("a", "b")
    assert reasons(result) == {
        "c": "none of the 2 predicates matched: label env=prod not matched; "
        "label env=stage not matched"
    }


def test_exists_and_does_not_exist_expressions() -> None:
    clusters = [cluster("a", labels={"gpu": "1"}), cluster("b")]
    has_gpu = {
        "requiredClusterSelector": {
            "labelSelector": {"matchExpressions": [{"key": "gpu", "operator": "Exists"}]}
        }
    }
    no_gpu = {
        "requiredClusterSelector": {
            "labelSelector": {"matchExpressions": [{"key": "gpu", "operator": "DoesNotExist"}]}
        }
    }
    assert run({"predicates": [has_gpu]}, clusters).selected == ("a",)
    assert reasons(run({"predicates": [no_gpu]}, clusters)) == {"a": "label !gpu not matched"}


# ---------------------------------------------------------------- taints and tolerations


def tainted(name: str, key: str, effect: TaintEffect, *, added: float = NOW - 60) -> ClusterView:
    return cluster(name, taints=(Taint(key=key, effect=effect, time_added=added),))


def test_a_no_select_taint_excludes_a_cluster_unless_tolerated() -> None:
    clusters = [tainted("a", TAINT_UNREACHABLE, TaintEffect.NO_SELECT), cluster("b")]
    result = run({}, clusters)
    assert result.selected == ("b",)
    assert reasons(result) == {"a": f"tainted {TAINT_UNREACHABLE} (NoSelect) and not tolerated"}
    tolerated = run({"tolerations": [{"key": TAINT_UNREACHABLE, "operator": "Exists"}]}, clusters)
    assert tolerated.selected == ("a", "b")
    assert tolerated.wake_at is None


def test_a_toleration_matches_key_value_and_effect() -> None:
    clusters = [
        cluster("a", taints=(Taint(key="k", value="v1", effect=TaintEffect.NO_SELECT),)),
        cluster("b", taints=(Taint(key="k", value="v2", effect=TaintEffect.NO_SELECT),)),
    ]
    assert run({"tolerations": [{"key": "k", "value": "v1"}]}, clusters).selected == ("a",)
    wrong_effect = {"tolerations": [{"key": "k", "operator": "Exists", "effect": "NoSelectIfNew"}]}
    assert run(wrong_effect, clusters).selected == ()
    everything = {"tolerations": [{"operator": "Exists"}]}
    assert run(everything, clusters).selected == ("a", "b")


def test_no_select_if_new_keeps_a_chosen_cluster_but_adds_no_new_one() -> None:
    clusters = [
        tainted("a", "drain", TaintEffect.NO_SELECT_IF_NEW),
        tainted("b", "drain", TaintEffect.NO_SELECT_IF_NEW),
    ]
    result = run({}, clusters, previous=["a"])
    assert result.selected == ("a",)
    assert reasons(result) == {"b": "tainted drain (NoSelectIfNew) and not tolerated"}


def test_prefer_no_select_is_ignored_as_in_ocm() -> None:
    assert run({}, [tainted("a", "meh", TaintEffect.PREFER_NO_SELECT)]).selected == ("a",)


def test_toleration_seconds_keep_a_cluster_until_they_run_out_and_say_when() -> None:
    added = NOW - 100
    clusters = [tainted("a", TAINT_UNREACHABLE, TaintEffect.NO_SELECT, added=added), cluster("b")]
    spec = {
        "tolerations": [{"key": TAINT_UNREACHABLE, "operator": "Exists", "tolerationSeconds": 300}]
    }
    before = run(spec, clusters, previous=["a", "b"])
    assert before.selected == ("a", "b")
    assert before.wake_at == added + 300
    after = run(spec, clusters, previous=["a", "b"], now=added + 300)
    assert after.selected == ("b",)
    assert after.wake_at is None
    assert reasons(after) == {
        "a": f"toleration expired at {format_time(added + 300)} "
        f"(taint {TAINT_UNREACHABLE}, NoSelect)"
    }


def test_the_longest_of_several_matching_tolerations_counts() -> None:
    clusters = [tainted("a", "k", TaintEffect.NO_SELECT, added=NOW - 100)]
    spec = {
        "tolerations": [
            {"key": "k", "operator": "Exists", "tolerationSeconds": 50},
            {"operator": "Exists", "tolerationSeconds": 200},
        ]
    }
    assert run(spec, clusters).wake_at == NOW + 100


def test_a_toleration_without_seconds_outlasts_one_that_ran_out() -> None:
    clusters = [tainted("a", "k", TaintEffect.NO_SELECT, added=NOW - 100)]
    spec = {
        "tolerations": [
            {"key": "k", "operator": "Exists", "tolerationSeconds": 10},
            {"operator": "Exists"},
        ]
    }
    result = run(spec, clusters)
    assert (result.selected, result.wake_at) == (("a",), None)


def test_a_taint_without_time_added_counts_from_the_epoch_as_ocm_counts_a_zero_time() -> None:
    clusters = [cluster("a", taints=(Taint(key="k", effect=TaintEffect.NO_SELECT),))]
    spec = {"tolerations": [{"key": "k", "operator": "Exists", "tolerationSeconds": 3600}]}
    assert run(spec, clusters).selected == ()


# ---------------------------------------------------------------- prioritizers


def test_balance_follows_ocms_formula() -> None:
    assert balance_scores(["a", "b", "c", "d"], {"a": 4, "b": 2, "c": 1}) == {
        "a": -100,
        "b": 0,
        "c": 50,
        "d": 100,
    }
    assert balance_scores(["a"], {}) == {"a": 100}
    # OCM truncates before doubling: 2 x trunc(100 x (0.5 - 1/3)) = 2 x 16, not trunc(33.3).
    assert balance_scores(["a", "b"], {"a": 3, "b": 1}) == {"a": -100, "b": 32}


def test_steady_favours_the_previous_decisions() -> None:
    assert steady_scores(["a", "b"], {"b"}) == {"a": 0, "b": 100}


def test_allocatable_scales_from_least_to_most_and_skips_the_unknown() -> None:
    assert allocatable_scores({"a": 1000, "b": 2000, "c": 4000, "d": None}) == {
        "a": -100,
        "b": -33,
        "c": 100,
    }
    assert allocatable_scores({"a": 5, "b": 5}) == {"a": 100, "b": 100}
    assert allocatable_scores({"a": None}) == {}


def test_the_score_is_the_weighted_sum_and_ties_go_by_name() -> None:
    clusters = [
        cluster("c", cpu=4000, memory=1),
        cluster("a", cpu=1000, memory=3),
        cluster("b", cpu=1000, memory=2),
        cluster("d", cpu=4000, memory=None),
    ]
    spec = {
        "prioritizerPolicy": exact(("ResourceAllocatableCPU", 2), ("ResourceAllocatableMemory", -1))
    }
    result = run(spec, clusters)
    scores = {d.cluster_name: d.score for d in result.decisions}
    # cpu: c, d = 100; a, b = -100. memory (d unknown): a = 100, b = 0, c = -100.
    assert scores == {"c": 300, "d": 200, "b": -200, "a": -300}
    assert result.selected == ("c", "d", "b", "a")
    tied = run({"prioritizerPolicy": exact(("Steady", 1))}, clusters)
    assert tied.selected == ("a", "b", "c", "d")


def test_additive_mode_counts_balance_and_steady_by_default() -> None:
    clusters = [cluster("a"), cluster("b"), cluster("c")]
    result = run({"numberOfClusters": 1}, clusters, previous=["c"], counts={"a": 1})
    scores = {d.cluster_name: d.score for d in result.decisions}
    # a: balance -100 + steady 0; b: 100 + 0; c: 100 + 100.
    assert result.selected == ("c",)
    assert scores == {"c": 200}
    assert [(n.cluster_name, n.score) for n in result.not_selected] == [("a", -100), ("b", 100)]


def test_steady_keeps_decisions_when_a_better_cluster_appears() -> None:
    spec = {"numberOfClusters": 1, "prioritizerPolicy": {"configurations": []}}
    assert run(spec, [cluster("b"), cluster("a")], previous=["b"]).selected == ("b",)


def test_a_negative_weight_prefers_the_smallest_cluster() -> None:
    clusters = [cluster("big", cpu=8000), cluster("small", cpu=1000)]
    spec = {"numberOfClusters": 1, "prioritizerPolicy": exact(("ResourceAllocatableCPU", -1))}
    assert run(spec, clusters).selected == ("small",)


# ---------------------------------------------------------------- numberOfClusters


def test_number_of_clusters_takes_the_best_and_ranks_the_rest() -> None:
    clusters = [cluster(n, cpu=c) for n, c in [("a", 1000), ("b", 2000), ("c", 3000), ("d", 4000)]]
    spec = {"numberOfClusters": 2, "prioritizerPolicy": exact(("ResourceAllocatableCPU", 1))}
    result = run(spec, clusters)
    assert result.selected == ("d", "c")
    assert reasons(result) == {
        "b": "ranked 3rd; numberOfClusters is 2",
        "a": "ranked 4th; numberOfClusters is 2",
    }
    assert (result.satisfied, result.reason) == (True, "AllDecisionsScheduled")


def test_fewer_clusters_than_asked_leave_the_placement_unsatisfied() -> None:
    result = run({"numberOfClusters": 3}, [cluster("a"), cluster("b", accepted=False)])
    assert result.selected == ("a",)
    assert (result.satisfied, result.reason) == (False, "NotAllDecisionsScheduled")
    assert result.message.startswith("2 cluster decisions unscheduled")


def test_a_placement_that_matches_nothing_says_so() -> None:
    result = run({"predicates": [label_predicate(env="prod")]}, [cluster("a")])
    assert (result.satisfied, result.reason) == (False, "NoManagedClusterMatched")
    assert result.groups[0].clusters == ()


def test_two_clusters_with_one_name_are_a_caller_error() -> None:
    with pytest.raises(ValueError, match="twice"):
        run({}, [cluster("a"), cluster("a")])


# ---------------------------------------------------------------- decision groups


def groups_of(result: PlacementResult) -> list[tuple[int, str, tuple[str, ...]]]:
    return [(g.index, g.name, g.clusters) for g in result.groups]


def test_named_groups_come_first_then_the_rest_cut_by_size() -> None:
    names = ["a", "b", "c", "d", "e"]
    clusters = [cluster(n, labels={"canary": "true"} if n in "bd" else {}) for n in names]
    spec = {
        "decisionStrategy": {
            "groupStrategy": {
                "clustersPerDecisionGroup": 2,
                "decisionGroups": [
                    {
                        "groupName": "canary",
                        "groupClusterSelector": {
                            "labelSelector": {"matchLabels": {"canary": "true"}}
                        },
                    }
                ],
            }
        }
    }
    result = run(spec, clusters)
    assert groups_of(result) == [
        (0, "canary", ("b", "d")),
        (1, "", ("a", "c")),
        (2, "", ("e",)),
    ]
    where = {d.cluster_name: (d.group_index, d.group_name) for d in result.decisions}
    assert where == {
        "a": (1, ""),
        "b": (0, "canary"),
        "c": (1, ""),
        "d": (0, "canary"),
        "e": (2, ""),
    }


def test_a_percentage_of_the_chosen_clusters_is_rounded_up() -> None:
    clusters = [cluster(f"c{i}") for i in range(5)]
    spec = {"decisionStrategy": {"groupStrategy": {"clustersPerDecisionGroup": "30%"}}}
    assert [len(g.clusters) for g in run(spec, clusters).groups] == [2, 2, 1]


def test_a_cluster_goes_to_the_first_named_group_it_matches() -> None:
    clusters = [cluster("a", labels={"x": "1", "y": "1"})]
    selector_x = {"labelSelector": {"matchLabels": {"x": "1"}}}
    selector_y = {"labelSelector": {"matchLabels": {"y": "1"}}}
    spec = {
        "decisionStrategy": {
            "groupStrategy": {
                "decisionGroups": [
                    {"groupName": "first", "groupClusterSelector": selector_x},
                    {"groupName": "second", "groupClusterSelector": selector_y},
                ]
            }
        }
    }
    assert groups_of(run(spec, clusters)) == [(0, "first", ("a",))]


# ---------------------------------------------------------------- status


def test_the_status_document_has_ocms_fields_and_our_reasons() -> None:
    added = NOW - 10
    clusters = [
        tainted("a", TAINT_UNREACHABLE, TaintEffect.NO_SELECT, added=added),
        cluster("b"),
        cluster("c", accepted=False),
    ]
    spec = {
        "tolerations": [{"key": TAINT_UNREACHABLE, "operator": "Exists", "tolerationSeconds": 60}]
    }
    status = placement_status(run(spec, clusters), now=NOW, generation=4)
    assert status["numberOfSelectedClusters"] == 2
    assert status["decisions"] == [
        {"clusterName": "a", "score": 100, "groupIndex": 0, "groupName": ""},
        {"clusterName": "b", "score": 100, "groupIndex": 0, "groupName": ""},
    ]
    assert status["decisionGroups"] == [
        {"decisionGroupIndex": 0, "decisionGroupName": "", "clusters": ["a", "b"]}
    ]
    assert status["notSelected"] == [{"clusterName": "c", "reason": "hubAcceptsClient is false"}]
    assert status["nextEvaluationAt"] == format_time(added + 60)
    satisfied = status["conditions"][0]
    assert (satisfied["type"], satisfied["status"], satisfied["observedGeneration"]) == (
        "PlacementSatisfied",
        "True",
        4,
    )
    later = placement_status(
        run(spec, clusters), conditions=status["conditions"], now=NOW + 5, generation=4
    )
    assert later["conditions"] == status["conditions"]


def test_the_status_keeps_a_bounded_number_of_reasons() -> None:
    result = run({}, [cluster(f"c{i:03}", accepted=False) for i in range(30)])
    status = placement_status(result, now=NOW, max_not_selected=10)
    assert len(status["notSelected"]) == 10
    assert status["notSelectedOmitted"] == 20


def test_a_spec_that_no_longer_parses_gets_a_misconfigured_status() -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec({"numberOfClusters": -1})
    status = misconfigured_status(caught.value, now=NOW)
    assert status["numberOfSelectedClusters"] == 0
    types = {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}
    assert types == {
        "PlacementSatisfied": ("False", "Misconfigured"),
        "PlacementMisconfigured": ("True", "Misconfigured"),
    }


# ---------------------------------------------------------------- properties


LABEL_VALUES = ["a", "b", "c"]


@st.composite
def fleets(draw: st.DrawFn) -> list[ClusterView]:
    names = draw(
        st.lists(st.from_regex(r"[a-z][a-z0-9]{0,5}", fullmatch=True), unique=True, max_size=25)
    )
    out = []
    for name in names:
        taints = draw(
            st.lists(
                st.builds(
                    Taint,
                    key=st.sampled_from(["t1", "t2", TAINT_UNREACHABLE]),
                    effect=st.sampled_from(list(TaintEffect)),
                    time_added=st.none() | st.floats(min_value=NOW - 1000, max_value=NOW),
                ),
                max_size=2,
                unique_by=lambda t: (t.key, t.effect),
            )
        )
        out.append(
            cluster(
                name,
                labels=draw(
                    st.dictionaries(
                        st.sampled_from(["env", "zone", CLUSTERSET_LABEL]),
                        st.sampled_from(LABEL_VALUES),
                    )
                ),
                claims=draw(
                    st.dictionaries(st.sampled_from(["region"]), st.sampled_from(LABEL_VALUES))
                ),
                taints=tuple(taints),
                cpu=draw(st.none() | st.integers(min_value=0, max_value=64_000)),
                memory=draw(st.none() | st.integers(min_value=0, max_value=2**40)),
                accepted=draw(st.booleans()),
            )
        )
    return out


def selector_json() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {},
        optional={
            "matchLabels": st.dictionaries(
                st.sampled_from(["env", "zone"]), st.sampled_from(LABEL_VALUES), max_size=2
            ),
            "matchExpressions": st.lists(
                st.fixed_dictionaries(
                    {
                        "key": st.sampled_from(["env", "zone"]),
                        "operator": st.sampled_from(["In", "NotIn"]),
                        "values": st.lists(st.sampled_from(LABEL_VALUES), min_size=1, max_size=2),
                    }
                ),
                max_size=2,
            ),
        },
    )


def _configurations(pairs: list[tuple[str, int]]) -> list[dict[str, Any]]:
    return [{"scoreCoordinate": {"builtIn": name}, "weight": w} for name, w in pairs]


def placements() -> st.SearchStrategy[dict[str, Any]]:
    weight = st.integers(min_value=-10, max_value=10)
    return st.fixed_dictionaries(
        {},
        optional={
            "clusterSets": st.lists(st.sampled_from(["a", "b", "default", "global"]), unique=True),
            "numberOfClusters": st.none() | st.integers(min_value=0, max_value=30),
            "predicates": st.lists(
                st.fixed_dictionaries(
                    {
                        "requiredClusterSelector": st.fixed_dictionaries(
                            {"labelSelector": selector_json()}
                        )
                    }
                ),
                max_size=2,
            ),
            "tolerations": st.lists(
                st.fixed_dictionaries(
                    {
                        "key": st.sampled_from(["t1", TAINT_UNREACHABLE]),
                        "operator": st.just("Exists"),
                    },
                    optional={"tolerationSeconds": st.integers(min_value=0, max_value=2000)},
                ),
                max_size=2,
            ),
            "prioritizerPolicy": st.fixed_dictionaries(
                {
                    "mode": st.sampled_from(["Additive", "Exact"]),
                    "configurations": st.lists(
                        st.tuples(st.sampled_from([p.value for p in Prioritizer]), weight),
                        max_size=4,
                        unique_by=lambda pair: pair[0],
                    ).map(_configurations),
                }
            ),
            "decisionStrategy": st.fixed_dictionaries(
                {
                    "groupStrategy": st.fixed_dictionaries(
                        {
                            "clustersPerDecisionGroup": st.integers(min_value=1, max_value=10)
                            | st.sampled_from(["10%", "50%", "100%"])
                        }
                    )
                }
            ),
        },
    )


SETS = [
    ClusterSetView(name="a"),
    cluster_set_view(
        {
            "metadata": {"name": "b"},
            "spec": {
                "clusterSelector": {
                    "selectorType": "LabelSelector",
                    "labelSelector": {"matchLabels": {"zone": "b"}},
                }
            },
        }
    ),
]


@settings(deadline=None)
@given(fleets(), placements(), st.data())
def test_scheduling_is_deterministic_bounded_and_explains_every_cluster(
    clusters: list[ClusterView], spec_json: dict[str, Any], data: st.DataObject
) -> None:
    spec = parse_spec(spec_json)
    names = [c.name for c in clusters]
    previous = data.draw(st.lists(st.sampled_from(names), unique=True) if names else st.just([]))
    counts = data.draw(
        st.dictionaries(st.sampled_from(names), st.integers(min_value=0, max_value=5))
        if names
        else st.just({})
    )
    result = schedule(spec, clusters, SETS, previous, NOW, decision_counts=counts)

    shuffled = data.draw(st.permutations(clusters))
    again = schedule(
        spec,
        shuffled,
        list(reversed(SETS)),
        list(reversed(previous)),
        NOW,
        decision_counts=dict(reversed(list(counts.items()))),
    )
    assert again == result

    if spec.number_of_clusters is not None:
        assert len(result.decisions) <= spec.number_of_clusters
    decided = [d.cluster_name for d in result.decisions]
    explained = [n.cluster_name for n in result.not_selected]
    assert sorted(decided + explained) == sorted(names)
    assert len(set(decided)) == len(decided)
    assert all(n.reason for n in result.not_selected)
    ranked = [(-d.score, d.cluster_name) for d in result.decisions]
    assert ranked == sorted(ranked)
    assert sorted(c for g in result.groups for c in g.clusters) == sorted(decided)
    assert result.satisfied == (result.reason == "AllDecisionsScheduled")
    if result.wake_at is not None:
        assert result.wake_at > NOW


@settings(max_examples=200, deadline=None)
@given(
    added=st.floats(min_value=NOW - 5000, max_value=NOW),
    seconds=st.integers(min_value=0, max_value=10_000),
    chosen_before=st.booleans(),
)
def test_a_toleration_with_seconds_selects_until_its_expiry_which_is_wake_at(
    *, added: float, seconds: int, chosen_before: bool
) -> None:
    clusters = [tainted("a", TAINT_UNREACHABLE, TaintEffect.NO_SELECT, added=added)]
    spec = {
        "tolerations": [
            {"key": TAINT_UNREACHABLE, "operator": "Exists", "tolerationSeconds": seconds}
        ]
    }
    result = run(spec, clusters, previous=["a"] if chosen_before else [])
    expiry = added + seconds
    if expiry > NOW:
        assert result.selected == ("a",)
        assert result.wake_at == expiry
    else:
        assert result.selected == ()
        assert result.wake_at is None
        assert reasons(result)["a"].startswith(f"toleration expired at {format_time(expiry)}")
        # At the wake-up time the same placement drops the cluster: the driver's next run.
    later = run(spec, clusters, now=expiry)
    assert later.selected == ()


def test_a_cluster_selector_names_its_first_term_not_met() -> None:
    selector = parse_spec(OCM_EXAMPLE).predicates[0]
    good = cluster("a", labels={"env": "prod"}, claims={"region": "us"})
    assert selector.miss(good) is None
    assert selector.miss(cluster("b", labels={"env": "prod", "zone": "z9"})) == (
        "label zone notin (z9) not matched"
    )
    assert selector.miss(cluster("c", labels={"env": "prod"})) == (
        "claim region in (eu west,us) not matched"
    )
