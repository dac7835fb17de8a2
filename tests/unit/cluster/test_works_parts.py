"""The work applier's pure parts: what it takes from a Work, conditions, its files."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.cluster.works.conditions import work_conditions
from edge_agent.cluster.works.kube import Resource, split_api_version
from edge_agent.cluster.works.manifests import WorkError, apply_order, parse_work
from edge_agent.cluster.works.settings import WorkSettings, WorkSettingsError, work_settings
from edge_agent.cluster.works.state import AppliedResource, WorkRecord, WorkStore

SETTINGS = WorkSettings(max_manifests=3, max_manifest_bytes=200)


def doc(manifests: object, **spec: object) -> dict[str, Any]:
    return {
        "metadata": {"name": "web", "resourceVersion": "7", "generation": 2},
        "spec": {"workload": {"manifests": manifests}, **spec},
    }


def cm(name: str, **extra: object) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, **extra}


def test_each_bad_manifest_is_reported_on_its_own() -> None:
    parsed = parse_work(
        doc([cm("a"), {"apiVersion": "apps/v1"}, cm("b", data={"x": "y" * 300})]),
        settings=SETTINGS,
    )
    assert (parsed.name, parsed.resource_version, parsed.generation) == ("web", 7, 2)
    problems = [m.problem for m in parsed.manifests]
    assert problems[0] is None
    assert problems[1] == "kind 'None' is not a Kubernetes kind"
    assert problems[2] == "378 bytes; a manifest is at most 200"


def test_too_many_manifests_and_bad_configs_are_work_problems() -> None:
    configs = [
        {"resourceIdentifier": {"resource": "configmaps", "name": "a"}},
        {"resourceIdentifier": {"resource": "configmaps"}},
        {
            "resourceIdentifier": {"resource": "configmaps", "name": "b"},
            "updateStrategy": {"type": "Replace"},
        },
    ]
    parsed = parse_work(
        doc([cm(str(i)) for i in range(5)], manifestConfigs=configs), settings=SETTINGS
    )
    assert len(parsed.manifests) == 3
    assert parsed.problems == (
        "5 manifests; at most 3 per work are applied",
        "manifestConfigs[1]: resourceIdentifier needs resource and name (strings)",
        (
            "manifestConfigs[2]: updateStrategy.type is one of "
            "ServerSideApply, Update, CreateOnly, ReadOnly"
        ),
    )
    resource = Resource("", "v1", "ConfigMap", "configmaps", namespaced=True)
    assert parsed.config_for(resource, "", "a") is not None
    assert parsed.config_for(resource, "default", "a") is None


@pytest.mark.parametrize(
    "document",
    [
        None,
        {"metadata": {"name": "UPPER", "resourceVersion": "1"}},
        {"metadata": {"name": "ok"}},
        {"metadata": {"name": "ok", "resourceVersion": "-1"}},
        {"metadata": {"name": "../etc", "resourceVersion": "1"}},
    ],
)
def test_a_work_without_a_name_or_version_is_refused(document: object) -> None:
    with pytest.raises(WorkError):
        parse_work(document, settings=SETTINGS)


def test_namespaces_then_crds_then_the_rest() -> None:
    crd = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition"}
    ns = {"apiVersion": "v1", "kind": "Namespace"}
    manifests = [cm("a"), {**crd, "metadata": {"name": "c"}}, {**ns, "metadata": {"name": "n"}}]
    parsed = parse_work(doc(manifests), settings=SETTINGS)
    assert [m.kind for m in apply_order(parsed.manifests)] == [
        "Namespace",
        "CustomResourceDefinition",
        "ConfigMap",
    ]


def test_api_versions() -> None:
    assert split_api_version("v1") == ("", "v1")
    assert split_api_version("apps/v1beta2") == ("apps", "v1beta2")
    assert split_api_version("Apps/v1") is None
    assert split_api_version("apps/1") is None


def manifest_status(name: str, **conditions: str) -> dict[str, Any]:
    return {
        "resourceMeta": {"kind": "ConfigMap", "namespace": "ns", "name": name},
        "conditions": [
            {"type": k, "status": v, "message": f"{k} of {name}"} for k, v in conditions.items()
        ],
    }


def test_work_conditions_are_the_hubs_aggregation_plus_work_problems() -> None:
    manifests = [
        manifest_status("a", Applied="True", Available="True", Degraded="False"),
        manifest_status("b", Applied="False", Available="False", Degraded="True"),
    ]
    got = {c["type"]: c for c in work_conditions(manifests, [], previous=[], now=0.0, generation=3)}
    assert got["Applied"]["status"] == "False"
    assert got["Applied"]["message"] == "manifest 1: Applied of b"
    assert got["Degraded"]["status"] == "True"
    assert got["Applied"]["observedGeneration"] == 3
    later = work_conditions(manifests, [], previous=list(got.values()), now=999.0, generation=3)
    assert {c["lastTransitionTime"] for c in later} == {"1970-01-01T00:00:00Z"}

    fine = [manifest_status("a", Applied="True", Available="True", Degraded="False")]
    problems = ["5 manifests; at most 3 per work are applied"]
    got = {
        c["type"]: c for c in work_conditions(fine, problems, previous=[], now=0.0, generation=1)
    }
    assert (got["Applied"]["status"], got["Applied"]["message"]) == ("False", problems[0])
    assert (got["Degraded"]["status"], got["Degraded"]["reason"]) == ("True", "InvalidWork")
    assert got["Available"]["status"] == "True"


def test_the_store_keeps_records_and_sets_bad_files_aside(tmp_path: Path) -> None:
    store = WorkStore(tmp_path, max_file_bytes=10_000)
    applied = AppliedResource(
        group="",
        version="v1",
        resource="configmaps",
        namespaced=True,
        namespace="ns",
        name="a",
        uid="uid-1",
        kind="ConfigMap",
    )
    store.save("web", WorkRecord(document=doc([]), applied=[applied], resource_version=7))
    (tmp_path / "broken.json").write_text("{")
    (tmp_path / "huge.json").write_text(json.dumps({"x": "y" * 20_000}))
    loaded = WorkStore(tmp_path, max_file_bytes=10_000).load()
    assert list(loaded) == ["web"]
    assert loaded["web"].applied == [applied]
    assert loaded["web"].resource_version == 7
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.bad", "huge.bad", "web.json"]


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=10),
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
        ),
        max_leaves=25,
    )
)
def test_no_document_crashes_the_parser(document: object) -> None:
    with contextlib.suppress(WorkError):
        parse_work(
            {"metadata": {"name": "w", "resourceVersion": "1"}, "spec": document}, settings=SETTINGS
        )


def test_settings_from_a_config_table() -> None:
    assert work_settings(
        {"resync_seconds": 5, "concurrency": 2, "impersonate": "edgefleet:work"}
    ) == WorkSettings(resync_seconds=5.0, concurrency=2, impersonate="edgefleet:work")
    for bad, message in (
        ({"resync_seconds": 0.1}, r"\[cluster.works\].resync_seconds: expected a number from 1"),
        ({"concurrency": 2.5}, "expected an integer"),
        ({"concurrency": True}, "expected an integer"),
        ({"resync": 5}, "unknown key"),
        ({"impersonate": "bad name"}, "expected a user name"),
        ([], "expected a table"),
    ):
        with pytest.raises(WorkSettingsError, match=message):
            work_settings(bad)
