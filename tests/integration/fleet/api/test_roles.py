"""Who may read and write which fleet objects: roles per kind and cluster scope."""

from __future__ import annotations

import pytest

from tests.integration.fleet.api.conftest import PLURALS, SPECS, Fleet, document

_ADMIN_KINDS = ("ManagedCluster", "ManagedClusterSet", "GitSource")
_OPERATOR_KINDS = ("Placement", "Work", "WorkSet")


@pytest.mark.parametrize("kind", sorted(SPECS))
def test_a_viewer_reads_but_never_writes(fleet: Fleet, kind: str) -> None:
    name = f"role-{kind.lower()}"
    assert fleet.put(document(kind, name)).status in (200, 201)
    path = f"/api/v1/fleet/{PLURALS[kind]}/{name}"
    assert fleet.call("GET", path, as_="viewer").status == 200
    assert fleet.call("GET", f"/api/v1/fleet/{PLURALS[kind]}", as_="viewer").status == 200
    for method, body in (
        ("PUT", document(kind, name, labels={"by": "viewer"})),
        ("PATCH", {"metadata": {"labels": {"by": "viewer"}}}),
        ("DELETE", None),
    ):
        answer = fleet.call(method, path, body, as_="viewer")
        assert (answer.status, answer.body["reason"]) == (403, "forbidden"), method
        assert "needs role" in answer.body["detail"]
    status = fleet.call("PUT", path + "/status", {"status": {"a": 1}}, as_="operator")
    assert status.status == 403  # status is the hub's and the agents' (and admins')
    assert "by" not in fleet.call("GET", path).body["metadata"].get("labels", {})


@pytest.mark.parametrize("kind", _OPERATOR_KINDS)
def test_an_operator_writes_placements_works_and_worksets(fleet: Fleet, kind: str) -> None:
    name = f"op-{kind.lower()}"
    made = fleet.put(document(kind, name), as_="operator")
    assert made.status == 201, made.body
    path = f"/api/v1/fleet/{PLURALS[kind]}/{name}"
    assert fleet.call("DELETE", path, as_="operator").status == 200


@pytest.mark.parametrize("kind", _ADMIN_KINDS)
def test_an_operator_may_not_write_clusters_sets_or_git_sources(fleet: Fleet, kind: str) -> None:
    answer = fleet.put(document(kind, f"op-{kind.lower()}"), as_="operator")
    assert (answer.status, answer.body["reason"]) == (403, "forbidden")
    assert "admin" in answer.body["detail"]


def test_a_scoped_user_sees_and_writes_only_its_clusters(fleet: Fleet) -> None:
    for cluster in ("c1", "c2"):
        fleet.put(document("ManagedCluster", cluster))
        fleet.put(
            document("Work", f"scoped-{cluster}", spec={**SPECS["Work"], "clusterName": cluster})
        )
    fleet.put(document("Placement", "spans-clusters"))
    clusters = fleet.call("GET", "/api/v1/fleet/managedclusters", as_="scoped-viewer")
    assert [c["metadata"]["name"] for c in clusters.body["items"]] == ["c1"]
    works = fleet.call("GET", "/api/v1/fleet/works", as_="scoped-viewer")
    assert {w["spec"]["clusterName"] for w in works.body["items"]} == {"c1"}
    placements = fleet.call("GET", "/api/v1/fleet/placements", as_="scoped-viewer")
    assert placements.body["items"] == []
    hidden = fleet.call("GET", "/api/v1/fleet/works/scoped-c2", as_="scoped-viewer")
    assert hidden.status == 404
    out = fleet.call("GET", "/api/v1/fleet/managedclusters/c2", as_="scoped-viewer")
    assert (out.status, out.body["reason"]) == (403, "cluster_out_of_scope")
    status, events = fleet.watch(
        "/api/v1/fleet/works?watch=true&timeoutSeconds=1", as_="scoped-viewer"
    )
    assert status == 200
    assert {e.data["spec"]["clusterName"] for e in events} == {"c1"}

    mine = document("Work", "scoped-new", spec={**SPECS["Work"], "clusterName": "c1"})
    assert fleet.put(mine, as_="scoped-operator").status == 201
    theirs = document("Work", "scoped-new-2", spec={**SPECS["Work"], "clusterName": "c2"})
    refused = fleet.put(theirs, as_="scoped-operator")
    assert (refused.status, refused.body["reason"]) == (403, "cluster_out_of_scope")
    moved = document("Work", "scoped-new", spec={**SPECS["Work"], "clusterName": "c2"})
    assert fleet.put(moved, as_="scoped-operator").status == 403  # cannot move it out either
    placement = fleet.put(document("Placement", "scoped-p"), as_="scoped-operator")
    assert (placement.status, placement.body["reason"]) == (403, "forbidden")
    assert (
        fleet.call("DELETE", "/api/v1/fleet/works/scoped-c2", as_="scoped-operator").status == 404
    )
    assert fleet.call("GET", "/api/v1/fleet/works/scoped-c2").status == 200


def test_a_scoped_watch_sees_a_work_leave_its_clusters(fleet: Fleet) -> None:
    fleet.put(document("Work", "mover", spec={**SPECS["Work"], "clusterName": "c1"}))
    listed = fleet.call("GET", "/api/v1/fleet/works?limit=1", as_="scoped-viewer")
    start = listed.body["metadata"]["resourceVersion"]
    fleet.put(document("Work", "mover", spec={**SPECS["Work"], "clusterName": "c2"}))
    fleet.put(document("Work", "mover", spec={**SPECS["Work"], "clusterName": "c1"}))
    fleet.put(document("Work", "elsewhere", spec={**SPECS["Work"], "clusterName": "c2"}))
    status, events = fleet.watch(
        f"/api/v1/fleet/works?watch=true&resourceVersion={start}&timeoutSeconds=1",
        as_="scoped-viewer",
    )
    assert status == 200
    assert [(e.type, e.data["spec"]["clusterName"]) for e in events] == [
        ("DELETED", "c1"),  # it left the scope: gone for this caller, never showing c2
        ("ADDED", "c1"),
    ]
