"""ResourcePolicy: parsing (every problem, bounded), the selector algebra, which policy governs."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet_model.elastic.policy import (
    API_VERSION,
    MAX_UNITS,
    ResourcePolicy,
    TryNextPolicy,
    disjoint,
    governing_policy,
    group_key,
    matching_policies,
    negate,
    parse_resource_policy,
)
from fleet_model.labels import LabelRequirement, Op
from fleet_model.problems import SpecError

FAST = settings(max_examples=60, deadline=None)


def policy_doc(
    *,
    name: str = "web",
    namespace: str = "shop",
    created: str | None = "2027-01-15T08:00:00Z",
    **spec: Any,
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if created is not None:
        metadata["creationTimestamp"] = created
    body = {
        "selector": {"matchLabels": {"app": "web"}},
        "units": [
            {"name": "local", "nodeSelector": {"site": "dc1"}},
            {"name": "cloud", "nodeSelector": {"matchLabels": {"pool": "cloud"}}, "max": 4},
            {
                "name": "virtual",
                "nodeSelector": {
                    "matchExpressions": [
                        {"key": "type", "operator": "In", "values": ["virtual-kubelet"]}
                    ]
                },
            },
        ],
    }
    body.update(spec)
    return {"apiVersion": API_VERSION, "kind": "ResourcePolicy", "metadata": metadata, "spec": body}


def problems_of(doc: object) -> list[tuple[str, str]]:
    with pytest.raises(SpecError) as caught:
        parse_resource_policy(doc)
    return caught.value.problems


def pod(labels: dict[str, str], namespace: str = "shop") -> dict[str, Any]:
    return {"metadata": {"name": "p", "namespace": namespace, "labels": labels}, "spec": {}}


# ---------------------------------------------------------------- parsing


def test_a_full_policy_is_read_with_its_defaults() -> None:
    policy = parse_resource_policy(policy_doc(matchLabelKeys=["pod-template-hash"]))
    assert (policy.namespace, policy.name, policy.created) == ("shop", "web", 1_800_000_000.0)
    assert [u.name for u in policy.units] == ["local", "cloud", "virtual"]
    assert [u.max for u in policy.units] == [None, 4, None]
    assert policy.units[0].node_selector.requirements == (
        LabelRequirement("site", Op.EQUALS, ("dc1",)),
    )
    assert policy.units[2].node_selector.requirements == (
        LabelRequirement("type", Op.IN, ("virtual-kubelet",)),
    )
    assert policy.when_try_next.policy is TryNextPolicy.LACK_RESOURCE_OR_EXCEED_MAX
    assert policy.when_try_next.timeout_seconds == 60
    assert policy.match_label_keys == ("pod-template-hash",)


def test_a_plain_node_selector_map_means_the_same_as_match_labels() -> None:
    plain = parse_resource_policy(policy_doc(units=[{"nodeSelector": {"pool": "cloud"}}]))
    wrapped = parse_resource_policy(
        policy_doc(units=[{"nodeSelector": {"matchLabels": {"pool": "cloud"}}}])
    )
    assert plain.units == wrapped.units
    assert plain.units[0].name == "unit-0"


def test_when_try_next_units_is_read() -> None:
    policy = parse_resource_policy(
        policy_doc(whenTryNextUnits={"policy": "TimeoutOrExceedMax", "timeoutSeconds": 30})
    )
    assert policy.when_try_next.policy is TryNextPolicy.TIMEOUT_OR_EXCEED_MAX
    assert policy.when_try_next.timeout_seconds == 30


def test_every_problem_is_reported_at_once_with_its_path() -> None:
    doc = policy_doc(
        name="Bad_Name",
        selector={"matchLabels": {"app": "no spaces"}},
        units=[
            {"name": "a", "nodeSelector": {"x": "1"}, "max": -1},
            {"name": "a", "nodeSelector": {"matchExpressions": [{"key": "k", "operator": "Gt"}]}},
            {"name": "c", "max": True},
        ],
        whenTryNextUnits={"policy": "Sometimes", "timeoutSeconds": 0},
        matchLabelKeys=["pod-template-hash", "pod-template-hash", "bad key"],
        extra=1,
    )
    paths = {path for path, _ in problems_of(doc)}
    assert {
        "/metadata/name",
        "/spec",
        "/spec/selector/matchLabels/app",
        "/spec/units/0/max",
        "/spec/units/1/name",
        "/spec/units/1/nodeSelector/matchExpressions/0/operator",
        "/spec/units/2/nodeSelector",
        "/spec/units/2/max",
        "/spec/whenTryNextUnits/policy",
        "/spec/whenTryNextUnits/timeoutSeconds",
        "/spec/matchLabelKeys/1",
        "/spec/matchLabelKeys/2",
    } <= paths


@pytest.mark.parametrize(
    ("units", "expected"),
    [
        (None, "non-empty list"),
        ([], "non-empty list"),
        ("local", "non-empty list"),
        ([{"nodeSelector": {"n": str(i)}} for i in range(MAX_UNITS + 1)], "at most 16 units"),
        ([{"nodeSelector": {"n": str(i)}} for i in range(1000)], "at most 16 units"),
    ],
)
def test_units_must_be_a_list_of_1_to_16(units: object, expected: str) -> None:
    problems = problems_of(policy_doc(units=units))
    assert any(path == "/spec/units" and expected in message for path, message in problems)


def test_a_unit_after_one_that_takes_every_node_is_refused() -> None:
    problems = problems_of(policy_doc(units=[{"nodeSelector": {}}, {"nodeSelector": {"a": "b"}}]))
    assert problems == [
        ("/spec/units/1", "can never be used: unit 'unit-0' before it selects every node")
    ]


def test_units_that_overlap_too_much_to_exclude_are_refused() -> None:
    # Every unit has five requirements on different keys: excluding four full ones takes 5^4.
    units = [{"nodeSelector": {f"k{unit}-{i}": "v" for i in range(5)}} for unit in range(5)]
    problems = problems_of(policy_doc(units=units))
    assert [path for path, _ in problems] == ["/spec/units"]
    assert "overlap" in problems[0][1]


def test_units_on_one_key_with_different_values_are_disjoint_so_any_number_is_fine() -> None:
    units = [{"nodeSelector": {"tier": f"t{i}", "zone": "z"}} for i in range(MAX_UNITS)]
    assert len(parse_resource_policy(policy_doc(units=units)).units) == MAX_UNITS


@pytest.mark.parametrize(
    "garbage",
    [
        None,
        [],
        "policy",
        {"metadata": "x", "spec": []},
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a", "namespace": "b"}},
    ],
)
def test_garbage_documents_get_a_spec_error(garbage: object) -> None:
    assert problems_of(garbage)


def test_a_ten_megabyte_policy_is_refused_quickly_with_a_short_message() -> None:
    huge = "x" * 10_000_000
    docs = [
        policy_doc(units=[{"name": huge, "nodeSelector": {huge: huge}}]),
        policy_doc(selector={"matchLabels": {f"k{i}": "v" for i in range(200_000)}}),
        policy_doc(selector={"matchExpressions": [{"key": huge, "operator": huge}]}),
        policy_doc(selector={huge: 1}),
        policy_doc(matchLabelKeys=[huge]),
        policy_doc(units=[{"nodeSelector": {"a": "b"}, huge: 1}] * 16),
        policy_doc(units=[{"nodeSelector": {"a": "b"}, "max": huge}]),
    ]
    for doc in docs:
        started = time.monotonic()
        with pytest.raises(SpecError) as caught:
            parse_resource_policy(doc)
        assert len(str(caught.value)) < 4096
        assert time.monotonic() - started < 5  # generous: only catches quadratic blow-ups


def test_a_spec_error_lists_a_bounded_number_of_problems() -> None:
    units = [
        {"name": "Bad_" + str(i), "nodeSelector": {"matchExpressions": [{}] * 32}, "max": -1}
        for i in range(16)
    ]
    problems = problems_of(policy_doc(units=units))
    assert len(problems) <= 65
    assert problems[-1][1].startswith("and ")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 20) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
spec_keys = st.sampled_from(
    ["selector", "units", "whenTryNextUnits", "matchLabelKeys", "strategy", "x"]
)


@FAST
@given(spec=st.dictionaries(spec_keys, json_values, max_size=5))
def test_any_json_spec_is_taken_or_refused_with_a_spec_error(spec: dict[str, Any]) -> None:
    doc = {"metadata": {"name": "p", "namespace": "n"}, "spec": spec}
    problems: list[tuple[str, str]] = []
    try:
        policy = parse_resource_policy(doc)
    except SpecError as error:
        problems = error.problems
    else:
        assert 1 <= len(policy.units) <= MAX_UNITS
        return
    assert problems
    json.dumps(problems)


# ---------------------------------------------------------------- selector algebra


requirements = st.builds(
    LabelRequirement,
    st.sampled_from(["a", "b"]),
    st.sampled_from([Op.IN, Op.NOT_IN, Op.EXISTS, Op.NOT_EXISTS]),
    st.just(()),
).flatmap(
    lambda r: (
        st.just(r)
        if r.op in {Op.EXISTS, Op.NOT_EXISTS}
        else st.lists(st.sampled_from(["1", "2", "3"]), min_size=1, max_size=3, unique=True).map(
            lambda values: LabelRequirement(r.key, r.op, tuple(sorted(values)))
        )
    )
)
label_sets = st.dictionaries(st.sampled_from(["a", "b"]), st.sampled_from(["1", "2", "3"]))


@FAST
@given(requirement=requirements, labels=label_sets)
def test_negate_matches_exactly_the_other_label_sets(
    requirement: LabelRequirement, labels: dict[str, str]
) -> None:
    assert negate(requirement).matches(labels) is not requirement.matches(labels)


@FAST
@given(
    a=st.lists(requirements, max_size=3),
    b=st.lists(requirements, max_size=3),
    labels=label_sets,
)
def test_disjoint_is_sound(
    a: list[LabelRequirement], b: list[LabelRequirement], labels: dict[str, str]
) -> None:
    if disjoint(a, b):
        assert not (all(r.matches(labels) for r in a) and all(r.matches(labels) for r in b))


# ---------------------------------------------------------------- governing policy


def parsed(
    name: str, created: str | None, selector: dict[str, Any] | None = None
) -> ResourcePolicy:
    doc = policy_doc(name=name, created=created)
    doc["spec"]["selector"] = selector
    return parse_resource_policy(doc)


def test_the_oldest_policy_governs_then_the_smallest_name() -> None:
    old = parsed("zeta", "2027-01-01T00:00:00Z")
    young_a = parsed("alpha", "2027-02-01T00:00:00Z")
    young_b = parsed("beta", "2027-02-01T00:00:00Z")
    unstored = parsed("aaa", None)
    assert governing_policy(pod({}), [young_b, unstored, young_a, old]) is old
    assert governing_policy(pod({}), [young_b, unstored, young_a]) is young_a
    assert [p.name for p in matching_policies(pod({}), [unstored, young_b, old, young_a])] == [
        "zeta",
        "alpha",
        "beta",
        "aaa",
    ]


def test_only_policies_of_the_pods_namespace_whose_selector_matches_govern() -> None:
    web = parsed("web", "2027-01-01T00:00:00Z", {"matchLabels": {"app": "web"}})
    everything = parsed("all", "2027-02-01T00:00:00Z")
    assert governing_policy(pod({"app": "web"}), [everything, web]) is web
    assert governing_policy(pod({"app": "db"}), [everything, web]) is everything
    assert governing_policy(pod({"app": "web"}, namespace="other"), [everything, web]) is None
    # An admission request gives the namespace beside an object that has none.
    bare = {"metadata": {"labels": {"app": "web"}}}
    assert governing_policy(bare, [web], namespace="shop") is web


@FAST
@given(
    order=st.permutations(range(5)),
    days=st.lists(st.integers(1, 3), min_size=5, max_size=5),
)
def test_governing_policy_does_not_depend_on_the_order_of_the_list(
    order: list[int], days: list[int]
) -> None:
    policies = [parsed(f"p{i}", f"2027-01-0{days[i]}T00:00:00Z") for i in range(5)]
    winner = governing_policy(pod({}), [policies[i] for i in order])
    assert winner is not None
    assert winner == min(policies, key=lambda p: (p.created, p.name))


def test_group_key_is_the_match_label_values_in_order() -> None:
    policy = parse_resource_policy(policy_doc(matchLabelKeys=["pod-template-hash", "track"]))
    assert group_key(policy, pod({"pod-template-hash": "abc"})) == ("abc", None)
    assert group_key(policy, pod({"track": "canary", "pod-template-hash": "d"})) == ("d", "canary")
