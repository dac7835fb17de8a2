"""statusFeedback values and resource health from live objects (pure)."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleet_model.feedback import (
    MAX_RAW_BYTES,
    PathError,
    evaluate,
    feedback,
    field_value,
    health,
    parse_path,
)

DEPLOYMENT: dict[str, Any] = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "web", "generation": 2},
    "spec": {"replicas": 3},
    "status": {
        "observedGeneration": 2,
        "replicas": 3,
        "readyReplicas": 3,
        "availableReplicas": 3,
        "updatedReplicas": 3,
        "conditions": [
            {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"},
            {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"},
        ],
    },
}


def values(obj: object, kind: str, rules: object) -> dict[str, Any]:
    found, problems = feedback(obj, kind, rules)
    assert problems == []
    return {v["name"]: v["fieldValue"] for v in found}


def test_well_known_status_of_a_deployment() -> None:
    got = values(DEPLOYMENT, "Deployment", [{"type": "WellKnownStatus"}])
    assert got["readyReplicas"] == {"type": "Integer", "integer": 3}
    assert set(got) == {
        "replicas",
        "readyReplicas",
        "availableReplicas",
        "updatedReplicas",
        "observedGeneration",
    }


def test_well_known_status_leaves_absent_fields_out_and_knows_jobs() -> None:
    job = {"status": {"succeeded": 1}}
    assert values(job, "Job", [{"type": "WellKnownStatus"}]) == {
        "succeeded": {"type": "Integer", "integer": 1}
    }
    assert values({"status": {"x": 1}}, "ConfigMap", [{"type": "WellKnownStatus"}]) == {}


def test_json_paths_scalars_filters_and_indexes() -> None:
    rules = [
        {
            "type": "JSONPaths",
            "jsonPaths": [
                {"name": "ready", "path": ".status.readyReplicas"},
                {"name": "avail", "path": '.status.conditions[?(@.type=="Available")].status'},
                {"name": "first", "path": "{.status.conditions[0].reason}"},
                {"name": "last", "path": "status.conditions[-1].type"},
                {"name": "notProg", "path": ".status.conditions[?(@.type!='Progressing')].type"},
                {"name": "cond", "path": ".status.conditions[1]"},
                {"name": "missing", "path": ".status.nothing"},
            ],
        }
    ]
    got = values(DEPLOYMENT, "Deployment", rules)
    assert got["ready"] == {"type": "Integer", "integer": 3}
    assert got["avail"] == {"type": "String", "string": "True"}
    assert got["first"] == {"type": "String", "string": "NewReplicaSetAvailable"}
    assert got["last"] == {"type": "String", "string": "Available"}
    assert got["notProg"] == {"type": "String", "string": "Available"}
    assert got["cond"]["type"] == "JsonRaw"
    assert "MinimumReplicasAvailable" in got["cond"]["jsonRaw"]
    assert "missing" not in got


def test_booleans_are_booleans_and_never_integers() -> None:
    assert field_value(value=True) == {"type": "Boolean", "boolean": True}
    found, value = evaluate({"a": [{"ok": True, "v": 1}, {"ok": 1, "v": 2}]}, ".a[?(@.ok==true)].v")
    assert (found, value) == (True, 1)


def test_values_over_the_bound_are_problems_not_values() -> None:
    obj = {"status": {"big": "x" * (MAX_RAW_BYTES + 1), "list": list(range(1000))}}
    rules = [
        {
            "type": "JSONPaths",
            "jsonPaths": [
                {"name": "big", "path": ".status.big"},
                {"name": "list", "path": ".status.list"},
                {"name": "bad", "path": ".status..x"},
            ],
        }
    ]
    found, problems = feedback(obj, "ConfigMap", rules)
    assert found == []
    assert len(problems) == 3
    assert any("'bad'" in p and "field name" in p for p in problems)


@pytest.mark.parametrize(
    "path",
    ["", ".", ".a[", ".a[*]", "..a", ".a[?(@.b>1)]", "$.a.b" + ".c" * 40, "x" * 600],
)
def test_unsupported_paths_are_refused_with_a_reason(path: str) -> None:
    with pytest.raises(PathError):
        parse_path(path)


def test_deployment_health_follows_generation_and_available_replicas() -> None:
    assert health(DEPLOYMENT, "Deployment").state == "Ready"
    stale = {**DEPLOYMENT, "metadata": {"generation": 3}}
    assert health(stale, "Deployment").state == "Progressing"
    short = {**DEPLOYMENT, "spec": {"replicas": 4}}
    verdict = health(short, "Deployment")
    assert (verdict.state, verdict.message) == ("Progressing", "3/4 available, 3/4 updated")
    stuck = {
        **DEPLOYMENT,
        "status": {
            **DEPLOYMENT["status"],
            "conditions": [
                {"type": "Progressing", "reason": "ProgressDeadlineExceeded", "message": "slow"}
            ],
        },
    }
    assert health(stuck, "Deployment").state == "Failed"


def test_job_daemonset_statefulset_and_other_health() -> None:
    complete = {"status": {"conditions": [{"type": "Complete", "status": "True"}]}}
    failed = {"status": {"conditions": [{"type": "Failed", "status": "True", "message": "x"}]}}
    assert health(complete, "Job").state == "Ready"
    assert health(failed, "Job").state == "Failed"
    assert health({"status": {"active": 1}}, "Job").state == "Progressing"
    ds = {
        "status": {"desiredNumberScheduled": 3, "numberAvailable": 3, "updatedNumberScheduled": 2}
    }
    assert health(ds, "DaemonSet").state == "Progressing"
    sts = {"spec": {"replicas": 2}, "status": {"readyReplicas": 2, "updatedReplicas": 2}}
    assert health(sts, "StatefulSet").state == "Ready"
    assert health({}, "ConfigMap").state == "Ready"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=30,
)
kinds = st.sampled_from(["Deployment", "StatefulSet", "DaemonSet", "Job", "ConfigMap", ""])


@given(obj=json_values, kind=kinds, rules=json_values)
def test_no_object_or_rules_crash_feedback_or_health(obj: object, kind: str, rules: object) -> None:
    found, problems = feedback(obj, kind, rules)
    assert all(isinstance(p, str) for p in problems)
    assert all(
        v["fieldValue"]["type"] in {"Integer", "String", "Boolean", "JsonRaw"} for v in found
    )
    assert health(obj, kind).state in {"Ready", "Progressing", "Failed"}


@given(obj=json_values, path=st.text(max_size=60))
def test_no_path_crashes_evaluate(obj: object, path: str) -> None:
    with contextlib.suppress(PathError):
        evaluate(obj, path)


@given(
    obj=json_values,
    path=st.lists(
        st.sampled_from([".status", ".a", "[0]", "[-1]", '[?(@.type=="A")]', "[?(@.x!=1)]", ".b"]),
        min_size=1,
        max_size=8,
    ).map("".join),
)
def test_supported_paths_always_parse_and_evaluate(obj: object, path: str) -> None:
    parse_path(path)
    evaluate(obj, path)  # MAX_MATCHES is not reachable with these small objects
