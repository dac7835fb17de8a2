"""Work specs (what is taken, every problem at once) and the work-level conditions."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleet_model.documents import API_VERSION, validate_document
from fleet_model.problems import SpecError
from fleet_model.times import parse_time
from fleet_model.work import (
    DEFAULT_FIELD_MANAGER,
    MAX_MANIFESTS,
    WorkSpec,
    aggregate_conditions,
    find_condition,
    parse_spec,
    parse_template,
    rfc3339,
)

T0 = 1_796_000_000.0


def deployment(name: str = "web", namespace: str | None = "default") -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name}
    if namespace is not None:
        metadata["namespace"] = namespace
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": metadata, "spec": {}}


def work(**fields: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"clusterName": "east", "workload": {"manifests": [deployment()]}}
    spec.update(fields)
    return spec


def problems_of(spec: object, parse: Any = parse_spec) -> list[tuple[str, str]]:
    with pytest.raises(SpecError) as caught:
        parse(spec)
    return caught.value.problems


def paths_of(spec: object, parse: Any = parse_spec) -> list[str]:
    return [path for path, _ in problems_of(spec, parse)]


# ---------------------------------------------------------------- parsing


def test_a_work_is_taken_with_ocm_defaults_but_server_side_apply() -> None:
    parsed = parse_spec(
        work(
            workload={
                "manifests": [
                    deployment(),
                    {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}},
                ]
            }
        )
    )
    assert parsed.cluster_name == "east"
    assert parsed.delete_propagation == "Foreground"
    first, second = parsed.manifests
    assert (first.group, first.version, first.kind, first.namespace, first.name) == (
        "apps",
        "v1",
        "Deployment",
        "default",
        "web",
    )
    assert (second.group, second.api_version, second.namespace, second.ordinal) == (
        "",
        "v1",
        None,
        1,
    )
    assert first.describe() == "apps/Deployment default/web"
    strategy = parsed.update_strategy_for(
        group="apps", resource="deployments", namespace="default", name="web"
    )
    assert (strategy.type, strategy.force, strategy.field_manager) == (
        "ServerSideApply",
        False,
        DEFAULT_FIELD_MANAGER,
    )
    assert DEFAULT_FIELD_MANAGER == "edgefleet-work"


def test_manifest_configs_are_found_by_resource_and_wildcards() -> None:
    parsed = parse_spec(
        work(
            manifestConfigs=[
                {
                    "resourceIdentifier": {
                        "group": "apps",
                        "resource": "deployments",
                        "namespace": "default",
                        "name": "web",
                    },
                    "feedbackRules": [
                        {"type": "WellKnownStatus"},
                        {
                            "type": "JSONPaths",
                            "jsonPaths": [{"name": "ready", "path": ".status.readyReplicas"}],
                        },
                    ],
                    "updateStrategy": {
                        "type": "ServerSideApply",
                        "serverSideApply": {"force": True, "fieldManager": "ops"},
                    },
                },
                {
                    "resourceIdentifier": {"resource": "configmaps", "namespace": "*", "name": "*"},
                    "updateStrategy": {"type": "CreateOnly"},
                },
            ],
            deleteOption={"propagationPolicy": "Orphan"},
        )
    )
    assert parsed.delete_propagation == "Orphan"
    web = parsed.config_for(group="apps", resource="deployments", namespace="default", name="web")
    assert web is not None
    assert [r.type for r in web.feedback_rules] == ["WellKnownStatus", "JSONPaths"]
    assert web.feedback_rules[1].json_paths[0].path == ".status.readyReplicas"
    strategy = parsed.update_strategy_for(
        group="apps", resource="deployments", namespace="default", name="web"
    )
    assert (strategy.force, strategy.field_manager) == (True, "ops")
    any_map = parsed.update_strategy_for(group="", resource="configmaps", namespace="x", name="y")
    assert any_map.type == "CreateOnly"
    other = parsed.update_strategy_for(
        group="apps", resource="deployments", namespace="p", name="q"
    )
    assert other.type == "ServerSideApply"


def test_every_problem_is_reported_with_its_path() -> None:
    bad = {
        "clusterName": "East_1",
        "workload": {
            "manifests": [
                {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {}},
                {"apiVersion": "Apps/v1/x", "kind": "9lives", "metadata": {"name": "a/b"}},
                {"kind": "Pod", "metadata": {"name": "p", "namespace": "Not_A_Label"}},
                {"apiVersion": "v1", "kind": "Pod", "metadata": {"generateName": "p-"}},
                "not an object",
            ]
        },
        "manifestConfigs": [
            {
                "resourceIdentifier": {"resource": "Deployments", "name": ""},
                "feedbackRules": [
                    {"type": "JSONPaths", "jsonPaths": [{"name": "r", "path": "status"}]}
                ],
                "updateStrategy": {"type": "Update", "serverSideApply": {"force": True}},
            },
        ],
        "deleteOption": {"propagationPolicy": "SelectivelyOrphan"},
        "manifestConfig": [],
    }
    assert paths_of(bad) == [
        "/spec/manifestConfig",
        "/spec/clusterName",
        "/spec/workload/manifests/0/metadata/name",
        "/spec/workload/manifests/1/apiVersion",
        "/spec/workload/manifests/1/kind",
        "/spec/workload/manifests/1/metadata/name",
        "/spec/workload/manifests/2/apiVersion",
        "/spec/workload/manifests/2/metadata/namespace",
        "/spec/workload/manifests/3/metadata/generateName",
        "/spec/workload/manifests/3/metadata/name",
        "/spec/workload/manifests/4",
        "/spec/manifestConfigs/0/resourceIdentifier/resource",
        "/spec/manifestConfigs/0/resourceIdentifier/name",
        "/spec/manifestConfigs/0/feedbackRules/0/jsonPaths/0/path",
        "/spec/manifestConfigs/0/updateStrategy/serverSideApply",
        "/spec/deleteOption/propagationPolicy",
    ]


def test_a_work_needs_manifests_and_one_object_once() -> None:
    assert paths_of(work(workload=None)) == ["/spec/workload"]
    assert paths_of(work(workload={"manifests": []})) == ["/spec/workload/manifests"]
    twice = problems_of(work(workload={"manifests": [deployment(), deployment()]}))
    assert twice == [
        (
            "/spec/workload/manifests/1",
            "apps/Deployment default/web is already manifest 0: one object once",
        )
    ]
    # The same name in another namespace or of another kind is another object.
    parse_spec(work(workload={"manifests": [deployment(), deployment(namespace="shop")]}))


def test_at_most_500_manifests() -> None:
    many = [deployment(f"web-{i}") for i in range(MAX_MANIFESTS)]
    assert len(parse_spec(work(workload={"manifests": many})).manifests) == MAX_MANIFESTS
    too_many = [*many, deployment("one-more")]
    assert problems_of(work(workload={"manifests": too_many})) == [
        ("/spec/workload/manifests", "at most 500 manifests per Work (split it)")
    ]


def test_feedback_names_are_unique_across_rules() -> None:
    rule = {"type": "JSONPaths", "jsonPaths": [{"name": "ready", "path": ".status.readyReplicas"}]}
    spec = work(
        manifestConfigs=[
            {
                "resourceIdentifier": {"group": "apps", "resource": "deployments", "name": "web"},
                "feedbackRules": [rule, rule],
            }
        ]
    )
    assert paths_of(spec) == ["/spec/manifestConfigs/0/feedbackRules/1/jsonPaths/0/name"]


def test_a_template_is_a_work_spec_without_cluster_name() -> None:
    template = parse_template({"workload": {"manifests": [deployment()]}})
    assert not isinstance(template, WorkSpec)
    assert template.manifests[0].name == "web"
    assert problems_of(work(), parse_template) == [
        (
            "/spec/manifestWorkTemplate/clusterName",
            "unknown field; expected workload, manifestConfigs, deleteOption",
        )
    ]


def test_the_document_envelope_hands_the_spec_here() -> None:
    doc = {"apiVersion": API_VERSION, "kind": "Work", "metadata": {"name": "web.east"}}
    taken = validate_document({**doc, "spec": work()}, kind="Work")
    assert isinstance(taken.parsed, WorkSpec)
    with pytest.raises(SpecError) as caught:
        validate_document({**doc, "spec": {"workload": {}}})
    assert [p for p, _ in caught.value.problems] == [
        "/spec/clusterName",
        "/spec/workload/manifests",
    ]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
spec_like = st.fixed_dictionaries(
    {},
    optional={
        "clusterName": st.sampled_from(["east", "", "A"]) | json_values,
        "workload": st.fixed_dictionaries(
            {"manifests": st.lists(st.just(deployment()) | json_values, max_size=3)}
        )
        | json_values,
        "manifestConfigs": json_values,
        "deleteOption": st.fixed_dictionaries(
            {"propagationPolicy": st.sampled_from(["Foreground", "Orphan", "x"])}
        )
        | json_values,
    },
)


@given(spec_like | json_values)
def test_anything_is_either_taken_or_refused_with_problems(value: object) -> None:
    problems: list[tuple[str, str]] = []
    try:
        parsed = parse_spec(value)
    except SpecError as error:
        problems = error.problems
        assert problems, "a refusal must say why"
        assert all(path.startswith("/spec") for path, _ in problems)
    else:
        assert parsed.manifests


# ---------------------------------------------------------------- conditions


def manifest(  # noqa: PLR0917 - the four statuses read best in a row
    applied: str | None,
    available: str | None,
    degraded: str | None = "False",
    progressing: str | None = None,
    reason: str = "",
    message: str = "",
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for kind, status in (
        ("Applied", applied),
        ("Available", available),
        ("Degraded", degraded),
        ("Progressing", progressing),
    ):
        if status is not None:
            out.append(
                {"type": kind, "status": status, "reason": reason or kind, "message": message}
            )
    return out


def by_type(conditions: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in conditions}


def test_applied_and_available_everywhere_is_a_completed_work() -> None:
    conditions = aggregate_conditions([manifest("True", "True")] * 3, 4, T0)
    assert [(c["type"], c["status"], c["reason"]) for c in conditions] == [
        ("Applied", "True", "AppliedManifestWorkComplete"),
        ("Available", "True", "ResourcesAvailable"),
        ("Degraded", "False", "AsExpected"),
        ("Progressing", "False", "Completed"),
    ]
    assert {c["observedGeneration"] for c in conditions} == {4}
    assert {c["lastTransitionTime"] for c in conditions} == {rfc3339(T0)}


def test_a_conflict_is_reported_with_the_api_servers_message() -> None:
    refused = manifest(
        "False",
        "True",
        reason="Conflict",
        message='Apply failed with 1 conflict: conflict with "kubectl"',
    )
    conditions = by_type(aggregate_conditions([manifest("True", "True"), refused, refused], 2, T0))
    assert conditions["Applied"]["status"] == "False"
    assert conditions["Applied"]["reason"] == "Conflict"
    assert conditions["Applied"]["message"] == (
        'manifest 1: Apply failed with 1 conflict: conflict with "kubectl" (and 1 more)'
    )
    assert conditions["Progressing"]["status"] == "True"


def test_degraded_and_missing_resources() -> None:
    conditions = by_type(
        aggregate_conditions(
            [
                manifest("True", "False"),
                manifest(
                    "True",
                    "True",
                    "True",
                    reason="Invalid",
                    message='Deployment.apps "web" is invalid',
                ),
                [],
            ],
            1,
            T0,
        )
    )
    assert (conditions["Applied"]["status"], conditions["Applied"]["reason"]) == (
        "Unknown",
        "Applying",
    )
    assert conditions["Available"]["message"] == "1 of 3 resources are not available"
    assert conditions["Degraded"]["status"] == "True"
    assert conditions["Degraded"]["message"] == 'manifest 1: Deployment.apps "web" is invalid'
    assert conditions["Progressing"]["status"] == "True"


def test_degraded_keeps_the_work_progressing() -> None:
    conditions = by_type(aggregate_conditions([manifest("True", "True", "True")], 1, T0))
    assert conditions["Progressing"]["status"] == "True"


def test_transition_times_move_only_when_the_status_does() -> None:
    first = aggregate_conditions([manifest("True", "False")], 1, T0)
    second = aggregate_conditions([manifest("True", "True")], 2, T0 + 60, first)
    times = {c["type"]: c["lastTransitionTime"] for c in second}
    assert times["Applied"] == rfc3339(T0)  # still True: kept
    assert times["Degraded"] == rfc3339(T0)
    assert times["Available"] == rfc3339(T0 + 60)  # False -> True
    assert times["Progressing"] == rfc3339(T0 + 60)  # True -> False
    assert {c["observedGeneration"] for c in second} == {2}


def test_long_messages_are_cut() -> None:
    conditions = aggregate_conditions([manifest("False", "False", message="x" * 10_000)], 1, T0)
    assert len(conditions[0]["message"]) == 1024


def test_times_round_trip_and_junk_is_none() -> None:
    assert parse_time(rfc3339(T0)) == T0
    assert parse_time("2026-12-03T20:00:00+01:00") == parse_time("2026-12-03T19:00:00Z")
    for junk in (None, 5, "", "yesterday", "2026-12-03T20:00:00", "9" * 100):
        assert parse_time(junk) is None
    assert find_condition("junk", "Applied") is None
    assert find_condition([1, {"type": "Applied"}], "Applied") == {"type": "Applied"}


statuses = st.sampled_from(["True", "False", "Unknown", None])
Four = tuple[str | None, str | None, str | None, str | None]


@given(
    st.lists(st.tuples(statuses, statuses, statuses, statuses), max_size=6),
    st.lists(st.tuples(statuses, statuses, statuses, statuses), max_size=6),
)
def test_aggregation_rules_hold_for_any_manifests(before: list[Four], after: list[Four]) -> None:
    first = aggregate_conditions([manifest(a, b, c, d) for a, b, c, d in before], 1, T0)
    second = by_type(
        aggregate_conditions([manifest(a, b, c, d) for a, b, c, d in after], 2, T0 + 5, first)
    )
    old = by_type(first)
    assert list(second) == ["Applied", "Available", "Degraded", "Progressing"]
    for kind, condition in second.items():
        moved = condition["status"] != old[kind]["status"]
        assert condition["lastTransitionTime"] == rfc3339(T0 + 5 if moved else T0)
    applied = [m[0] for m in after]
    available = [m[1] for m in after]
    assert (second["Applied"]["status"] == "True") == all(s == "True" for s in applied)
    assert (second["Available"]["status"] == "False") == ("False" in available)
    assert (second["Degraded"]["status"] == "True") == any(m[2] == "True" for m in after)
    done = (
        second["Applied"]["status"] == "True"
        and second["Available"]["status"] == "True"
        and second["Degraded"]["status"] == "False"
        and not any(m[3] == "True" for m in after)
    )
    assert (second["Progressing"]["status"] == "False") == done
