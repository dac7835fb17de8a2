"""The cloud's compact view of NodePools and ResourcePolicies, from what the agent writes.

The statuses are made by the agent's own pure functions (``pool_status_document``,
``policy_status``), so a change of their shape that the view does not follow fails here.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleet_model.elastic.autoscaler import PoolStatus, pool_status_document
from fleet_model.elastic.nodepool import parse_node_pool
from fleet_model.elastic.policy import parse_resource_policy
from fleet_model.elastic.units import invalid_status, policy_status
from tunnel_server.fleet import elastic_shape
from tunnel_server.fleet.elastic_shape import (
    MAX_CONDITIONS,
    MAX_TEXT,
    MemberAnswerError,
    member_list,
    policy_item,
    pool_item,
    refusal,
    timestamp,
)

NOW = 1_800_000_000.0
API_VERSION = "elastic.edgefleet.io/v1alpha1"


def pool_doc(name: str = "cloud", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "NodePool",
        "metadata": {"name": name, "creationTimestamp": "2026-12-01T10:00:00Z"},
        "spec": {
            "max": 4,
            "node": {"capacity": {"cpu": "1500m", "memory": "6Gi", "pods": 17}},
            "provider": {"kwok": {}},
            **spec,
        },
    }


def policy_doc() -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "ResourcePolicy",
        "metadata": {
            "namespace": "shop",
            "name": "web",
            "generation": 2,
            "creationTimestamp": "2026-12-01T10:00:00Z",
        },
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "units": [
                {"name": "local", "nodeSelector": {"tier": "local"}, "max": 4},
                {"name": "cloud", "nodeSelector": {"tier": "cloud"}, "max": 4},
                {"nodeSelector": {"tier": "virtual"}},
            ],
        },
    }


def running(name: str, node: str) -> dict[str, Any]:
    return {
        "metadata": {"namespace": "shop", "name": name, "labels": {"app": "web"}},
        "spec": {"nodeName": node},
        "status": {"phase": "Running"},
    }


NODES = {"n-local": {"tier": "local"}, "n-cloud": {"tier": "cloud"}, "n-virtual": {"tier": "v"}}


def test_a_pool_with_the_agents_status() -> None:
    doc = pool_doc(priority=10, min=1)
    status = PoolStatus(
        name="cloud",
        nodes=3,
        creating=1,
        removing=0,
        backoff_until=NOW + 30,
        last_error="exit 3: quota exceeded",
    )
    doc["status"] = pool_status_document(parse_node_pool(doc), status, now=NOW)
    item = pool_item(doc)
    assert {k: item[k] for k in ("name", "priority", "min", "max", "provider")} == {
        "name": "cloud",
        "priority": 10,
        "min": 1,
        "max": 4,
        "provider": "kwok",
    }
    assert (item["nodes"], item["creating"], item["removing"]) == (3, 1, 0)
    assert item["reported"] is True
    assert item["nodeCapacity"] == {"cpu": "1500m", "memory": "6Gi", "pods": "17"}
    assert item["createdAt"] == "2026-12-01T10:00:00+00:00"
    by_type = {c["type"]: c for c in item["conditions"]}
    assert set(by_type) == {"ScalingUp", "ProviderReady", "AtMax"}
    ready = by_type["ProviderReady"]
    assert (ready["status"], ready["reason"]) == ("False", "BackingOff")
    assert "exit 3: quota exceeded" in ready["message"]
    assert ready["lastTransitionAt"] == timestamp("2027-01-15T08:00:00Z")
    assert by_type["AtMax"]["status"] == "True"  # 3 + 1 creating of 4


def test_a_pool_the_agent_has_not_seen_yet_has_the_crd_defaults_and_no_counts() -> None:
    item = pool_item(pool_doc(provider={"command": {"path": "/usr/bin/grow"}}))
    assert (item["priority"], item["min"], item["max"]) == (0, 0, 4)
    assert item["provider"] == "command"
    assert item["reported"] is False
    assert (item["nodes"], item["creating"], item["removing"]) == (None, None, None)
    assert item["conditions"] == []


def test_a_policy_with_pods_per_unit_from_the_agents_status() -> None:
    doc = policy_doc()
    policy = parse_resource_policy(doc)
    pods = [running(f"web-{i}", "n-local") for i in range(4)]
    pods += [running(f"web-c{i}", "n-cloud") for i in range(3)]
    pods += [running("web-x", "n-virtual")]  # on a node of no unit: outside
    doc["status"] = policy_status(policy, pods, NODES, now=NOW)
    item = policy_item(doc)
    assert (item["namespace"], item["name"]) == ("shop", "web")
    assert item["units"] == [
        {"name": "local", "max": 4, "pods": 4},
        {"name": "cloud", "max": 4, "pods": 3},
        {"name": "unit-2", "max": None, "pods": 0},
    ]
    assert (item["groups"], item["waiting"], item["outside"]) == (1, 0, 1)
    assert (item["generation"], item["observedGeneration"]) == (2, 2)
    assert [c["type"] for c in item["conditions"]] == ["Accepted", "Overlapping", "UnitsFull"]
    assert item["conditions"][0]["status"] == "True"


def test_a_refused_policy_shows_why_and_no_counts() -> None:
    doc = policy_doc()
    doc["status"] = invalid_status(
        "/spec/units/0/nodeSelector: must not be empty", generation=2, previous=None, now=NOW
    )
    item = policy_item(doc)
    assert [u["pods"] for u in item["units"]] == [None, None, None]
    assert (item["groups"], item["waiting"], item["outside"]) == (None, None, None)
    (accepted,) = item["conditions"]
    assert (accepted["type"], accepted["status"], accepted["reason"]) == (
        "Accepted",
        "False",
        "InvalidSpec",
    )
    assert "nodeSelector" in accepted["message"]


def test_garbage_from_a_member_is_shown_as_unknown_never_an_error() -> None:
    doc = {
        "metadata": {"name": "x\x1b[31mred", "creationTimestamp": "yesterday"},
        "spec": {
            "priority": True,
            "min": -3,
            "max": 10**12,
            "provider": {"kwok": {}, "command": {}},
        },
        "status": {
            "nodes": "3",
            "creating": 1.5,
            "conditions": [
                "not a condition",
                {"status": "True"},  # no type: left out
                {"type": "A", "status": 7, "message": "m" * 5000, "lastTransitionTime": 3},
                *({"type": f"T{i}", "status": "True"} for i in range(40)),
            ],
        },
    }
    item = pool_item(doc)
    assert item["name"] == "x [31mred"  # control characters become spaces
    assert item["createdAt"] is None
    assert (item["priority"], item["min"], item["max"], item["provider"]) == (
        None,
        None,
        None,
        None,
    )
    assert (item["nodes"], item["creating"]) == (None, None)
    first = item["conditions"][0]
    assert (first["type"], first["status"], first["lastTransitionAt"]) == ("A", "Unknown", None)
    assert len(first["message"]) == MAX_TEXT
    assert len(item["conditions"]) == MAX_CONDITIONS
    assert policy_item({"spec": {"units": "many"}, "status": []})["units"] == []


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(),
        lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
        max_leaves=40,
    )
)
def test_any_json_value_makes_an_item(value: object) -> None:
    for shape in (pool_item, policy_item):
        for doc in (
            {"metadata": value, "spec": value, "status": value},
            {"spec": {"units": value}},
        ):
            item = shape(doc)
            assert isinstance(item["name"], str)


def test_times_are_rfc3339_utc_or_none() -> None:
    assert timestamp("2026-12-03T16:05:00Z") == "2026-12-03T16:05:00+00:00"
    assert timestamp("2026-12-03T18:05:00+02:00") == "2026-12-03T16:05:00+00:00"
    assert timestamp("2026-12-03T16:05:00") is None  # no zone: not a Kubernetes time
    assert timestamp("soon") is None
    assert timestamp(1_800_000_000) is None


def test_the_member_list_and_its_page() -> None:
    listed = member_list(
        {
            "kind": "NodePoolList",
            "metadata": {"continue": "abc", "remainingItemCount": 7},
            "items": [{"metadata": {"name": "a"}}, {"metadata": {}}, "junk"],
        }
    )
    assert [i["metadata"]["name"] for i in listed.items] == ["a"]
    assert (listed.continue_token, listed.remaining) == ("abc", 7)
    last = member_list({"metadata": {"continue": ""}, "items": []})
    assert (last.continue_token, last.remaining) == (None, None)


@pytest.mark.parametrize(
    "document",
    [
        None,
        [],
        {"kind": "Status"},
        {"items": {}},
        {"items": [], "metadata": {"continue": 5}},
        {"items": [], "metadata": {"continue": "x" * (elastic_shape.MAX_MEMBER_CONTINUE + 1)}},
    ],
)
def test_what_is_not_a_list_is_refused(document: object) -> None:
    with pytest.raises(MemberAnswerError):
        member_list(document)


def test_the_members_refusals_become_our_problems_with_its_words() -> None:
    status = {
        "kind": "Status",
        "message": 'nodepools.elastic.edgefleet.io is forbidden: User "edgefleet:viewer" '
        "cannot list resource",
        "reason": "Forbidden",
        "code": 403,
    }
    forbidden = refusal(403, status, cluster="east", plural="nodepools")
    assert (forbidden.status, forbidden.reason) == (403, "member_forbidden")
    assert 'User "edgefleet:viewer" cannot list resource' in forbidden.detail
    missing = refusal(
        404,
        {"message": "the server could not find the requested resource"},
        cluster="east",
        plural="nodepools",
    )
    assert (missing.status, missing.reason) == (404, "elastic_not_installed")
    assert "40-elastic-crds.yaml" in missing.detail
    assert "could not find the requested resource" in missing.detail
    assert refusal(410, None, cluster="east", plural="nodepools").reason == "expired"
    other = refusal(500, b"oops", cluster="east", plural="resourcepolicies")
    assert (other.status, other.reason) == (502, "member_error")
    assert "500" in other.detail
