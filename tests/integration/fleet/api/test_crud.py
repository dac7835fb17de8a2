"""Fleet objects through the REST API of a real server: every kind's life, lists, preconditions."""

from __future__ import annotations

import pytest

from tests.integration.fleet.api.conftest import PLURALS, SPECS, Fleet, document

CLUSTER_LABEL = "fleet.edgefleet.io/cluster"


@pytest.mark.parametrize("kind", sorted(SPECS))
def test_every_kind_is_created_read_replaced_patched_and_deleted(fleet: Fleet, kind: str) -> None:
    name = f"crud-{kind.lower()}"
    path = f"/api/v1/fleet/{PLURALS[kind]}/{name}"
    created = fleet.put(document(kind, name, labels={"tier": "one"}))
    assert created.status == 201, created.body
    assert created.headers["Location"] == path
    meta = created.body["metadata"]
    assert (meta["generation"], meta["labels"]["tier"], len(meta["uid"])) == (1, "one", 32)
    assert created.body["spec"] == SPECS[kind]
    assert created.body["status"] == {}
    assert created.headers["ETag"] == f'"{meta["resourceVersion"]}"'

    read = fleet.call("GET", path, as_="viewer")
    assert (read.status, read.body) == (200, created.body)

    replaced = fleet.put(document(kind, name, labels={"tier": "two"}))
    assert replaced.status == 200, replaced.body
    assert replaced.body["metadata"]["generation"] == 2
    assert replaced.body["metadata"]["uid"] == meta["uid"]
    assert int(replaced.body["metadata"]["resourceVersion"]) > int(meta["resourceVersion"])

    unchanged = fleet.put(document(kind, name, labels={"tier": "two"}))
    assert unchanged.body == replaced.body  # the same document again writes nothing

    patched = fleet.call(
        "PATCH",
        path,
        {"metadata": {"labels": {"tier": None, "patched": "yes"}}},
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert patched.status == 200, patched.body
    labels = patched.body["metadata"]["labels"]
    assert "tier" not in labels
    assert labels["patched"] == "yes"
    assert patched.body["metadata"]["generation"] == 3

    status = fleet.call("PUT", path + "/status", {"status": {"seen": True}})
    assert status.status == 200, status.body
    assert status.body["status"] == {"seen": True}
    assert status.body["metadata"]["generation"] == 3  # status is not a generation

    deleted = fleet.call("DELETE", path)
    assert deleted.status == 200, deleted.body
    assert deleted.body["metadata"]["uid"] == meta["uid"]
    assert deleted.body["status"] == {"seen": True}
    gone = fleet.call("GET", path)
    assert (gone.status, gone.body["reason"]) == (404, "object_not_found")
    again = fleet.call("DELETE", path)
    assert again.status == 404


def test_works_are_labelled_with_their_cluster(fleet: Fleet) -> None:
    answer = fleet.put(document("Work", "labelled", spec={**SPECS["Work"], "clusterName": "c9"}))
    assert answer.status == 201, answer.body
    assert answer.body["metadata"]["labels"] == {CLUSTER_LABEL: "c9"}
    listed = fleet.call("GET", f"/api/v1/fleet/works?labelSelector={CLUSTER_LABEL}%3Dc9")
    assert [w["metadata"]["name"] for w in listed.body["items"]] == ["labelled"]


def test_lists_select_by_label_and_page(fleet: Fleet) -> None:
    for n in range(7):
        env = "prod" if n % 2 == 0 else "dev"
        made = fleet.put(document("Placement", f"page-{n}", labels={"env": env, "set": "paging"}))
        assert made.status == 201, made.body
    prod = fleet.call("GET", "/api/v1/fleet/placements?labelSelector=set%3Dpaging,env%3Dprod")
    assert [p["metadata"]["name"] for p in prod.body["items"]] == [
        "page-0",
        "page-2",
        "page-4",
        "page-6",
    ]
    assert int(prod.body["metadata"]["resourceVersion"]) > 0
    names: list[str] = []
    query = "/api/v1/fleet/placements?labelSelector=set%3Dpaging&limit=3"
    token = None
    pages = 0
    while True:
        answer = fleet.call("GET", query + (f"&continue={token}" if token else ""))
        assert answer.status == 200, answer.body
        names += [p["metadata"]["name"] for p in answer.body["items"]]
        pages += 1
        token = answer.body["metadata"]["continue"]
        if token is None:
            break
    assert (names, pages) == ([f"page-{n}" for n in range(7)], 3)
    bad = fleet.call("GET", "/api/v1/fleet/placements?labelSelector=env%3D%3D%3D")
    assert (bad.status, bad.body["reason"]) == (400, "bad_parameter")


def test_preconditions_refuse_a_stale_write(fleet: Fleet) -> None:
    path = "/api/v1/fleet/placements/precondition"
    first = fleet.put(document("Placement", "precondition"))
    version = first.body["metadata"]["resourceVersion"]
    fleet.put(document("Placement", "precondition", labels={"moved": "on"}))

    stale_body = fleet.put(document("Placement", "precondition", resourceVersion=version))
    assert (stale_body.status, stale_body.body["reason"]) == (409, "conflict")
    assert stale_body.body["currentVersion"] != version

    stale_tag = fleet.put(
        document("Placement", "precondition"), headers={"If-Match": f'"{version}"'}
    )
    assert (stale_tag.status, stale_tag.body["reason"]) == (412, "precondition_failed")

    current = fleet.call("GET", path)
    tag = current.headers["ETag"]
    stale_patch = fleet.call(
        "PATCH",
        path,
        {"metadata": {"labels": {"x": "y"}}},
        headers={"Content-Type": "application/merge-patch+json", "If-Match": f'"{version}"'},
    )
    assert stale_patch.status == 412
    stale_delete = fleet.call("DELETE", path, headers={"If-Match": f'"{version}"'})
    assert stale_delete.status == 412
    assert fleet.call("GET", path).body == current.body  # nothing changed

    fresh = fleet.put(document("Placement", "precondition"), headers={"If-Match": tag})
    assert fresh.status == 200, fresh.body
    rv = fresh.body["metadata"]["resourceVersion"]
    by_body = fleet.put(
        document("Placement", "precondition", labels={"b": "c"}, resourceVersion=rv)
    )
    assert by_body.status == 200, by_body.body
    missing = fleet.put(document("Placement", "never-made", resourceVersion="5"))
    assert (missing.status, missing.body["reason"]) == (409, "conflict")
    assert fleet.call("DELETE", path, headers={"If-Match": by_body.headers["ETag"]}).status == 200


def test_a_long_poll_answers_when_the_object_changes(fleet: Fleet) -> None:
    made = fleet.put(document("Placement", "polled"))
    version = made.body["metadata"]["resourceVersion"]
    path = f"/api/v1/fleet/placements/polled?waitForChange=true&resourceVersion={version}"
    quiet = fleet.call("GET", path + "&timeoutSeconds=1")
    assert quiet.body["metadata"]["resourceVersion"] == version  # no change: the same object
    old = str(int(version) - 1)
    moved = fleet.call(
        "GET", f"/api/v1/fleet/placements/polled?waitForChange=true&resourceVersion={old}"
    )
    assert moved.body["metadata"]["resourceVersion"] == version  # not at `old`: answered at once
    missing = fleet.call("GET", "/api/v1/fleet/placements/polled?waitForChange=true")
    assert (missing.status, missing.body["reason"]) == (400, "bad_parameter")
