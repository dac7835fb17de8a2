"""Fleet objects through the REST API of a real server: every kind's life, lists, preconditions.

The server runs its hub controller and GitSource syncer, as in production: they write the status
of ManagedClusters, Placements, WorkSets and GitSources (and a ManagedCluster's built-in taints)
whenever they like. Checks of those kinds compare what the test wrote (metadata and spec) and
leave the hub its part; the checks that need nobody else to write (preconditions, long polls)
use Works of a cluster that does not exist, whose status only an agent would write.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.harness.waiting import eventually
from tests.integration.fleet.api.conftest import PLURALS, SPECS, Answer, Fleet, document

CLUSTER_LABEL = "fleet.edgefleet.io/cluster"
BUILTIN_TAINTS = ("fleet.edgefleet.io/unreachable", "fleet.edgefleet.io/unavailable")
HUB_WRITTEN = frozenset({"ManagedCluster", "Placement", "WorkSet", "GitSource"})
"""Kinds whose status (and, for clusters, built-in taints) the hub writes on its own."""
NOWHERE = "no-such-cluster"
"""A cluster nobody made: no agent writes the status of its Works, no hub pass touches them."""


def _ours(body: dict[str, Any]) -> dict[str, Any]:
    """What the test writes of an object.

    Metadata without the counters, spec without built-in taints (the hub's), no status.
    """
    meta = {k: v for k, v in body["metadata"].items() if k not in ("resourceVersion", "generation")}
    spec = dict(body["spec"])
    if isinstance(spec.get("taints"), list):
        taints = [t for t in spec["taints"] if t.get("key") not in BUILTIN_TAINTS]
        if taints:
            spec["taints"] = taints
        else:
            del spec["taints"]
    return {"metadata": meta, "spec": spec}


def _delete_last(fleet: Fleet, path: str) -> tuple[Answer, Answer]:
    """DELETE conditioned on the version just read (again when the hub wrote in between).

    Returns the document read and the DELETE's answer.
    """
    for _ in range(20):
        last = fleet.call("GET", path)
        assert last.status == 200, last.body
        deleted = fleet.call("DELETE", path, headers={"If-Match": last.headers["ETag"]})
        if deleted.status != 412:
            return last, deleted
    raise AssertionError(f"{path}: every conditional DELETE lost to another writer")


def _generation_settled(fleet: Fleet, kind: str, path: str) -> int:
    """The generation once the hub made its own spec changes.

    A ManagedCluster that never renewed a lease gets the unreachable taint at the hub's first
    pass (a spec change, so a generation); other kinds' specs are only the test's.
    """
    if kind != "ManagedCluster":
        return 1
    read = eventually(
        lambda: fleet.call("GET", path),
        lambda answer: any(
            t["key"] == BUILTIN_TAINTS[0] for t in answer.body["spec"].get("taints", [])
        ),
        what="the hub tainting a cluster without a lease unreachable",
    )
    return int(read.body["metadata"]["generation"])


@pytest.mark.parametrize("kind", sorted(SPECS))
def test_every_kind_is_created_read_replaced_patched_and_deleted(  # noqa: PLR0915 one life
    fleet: Fleet, kind: str
) -> None:
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
    assert read.status == 200
    if kind in HUB_WRITTEN:
        assert _ours(read.body) == _ours(created.body)
        assert int(read.body["metadata"]["resourceVersion"]) >= int(meta["resourceVersion"])
    else:
        assert read.body == created.body
    generation = _generation_settled(fleet, kind, path)

    replaced = fleet.put(document(kind, name, labels={"tier": "two"}))
    assert replaced.status == 200, replaced.body
    assert replaced.body["metadata"]["generation"] == generation + 1
    assert replaced.body["metadata"]["uid"] == meta["uid"]
    assert replaced.body["metadata"]["labels"]["tier"] == "two"
    assert _ours(replaced.body)["spec"] == SPECS[kind]
    assert int(replaced.body["metadata"]["resourceVersion"]) > int(meta["resourceVersion"])

    unchanged = fleet.put(document(kind, name, labels={"tier": "two"}))
    assert unchanged.status == 200, unchanged.body
    if kind in HUB_WRITTEN:  # the hub may have written status since: spec and metadata stay
        assert _ours(unchanged.body) == _ours(replaced.body)
        assert unchanged.body["metadata"]["generation"] == generation + 1
    else:
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
    assert patched.body["metadata"]["generation"] == generation + 2
    assert _ours(patched.body)["spec"] == SPECS[kind]

    status = fleet.call("PUT", path + "/status", {"status": {"seen": True}})
    assert status.status == 200, status.body
    assert status.body["status"] == {"seen": True}
    assert status.body["metadata"]["generation"] == generation + 2  # status is not a generation

    last, deleted = _delete_last(fleet, path)
    assert deleted.status == 200, deleted.body
    # The last document (whoever wrote its status), at the revision of its deletion.
    assert int(deleted.body["metadata"].pop("resourceVersion")) > int(
        last.body["metadata"].pop("resourceVersion")
    )
    assert deleted.body == last.body
    assert deleted.body["metadata"]["uid"] == meta["uid"]
    if kind not in HUB_WRITTEN:
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


def test_an_admin_write_keeps_the_hubs_built_in_taints(fleet: Fleet) -> None:
    """PUT and PATCH replace the admin's taints; the hub's stay as its health rules left them."""
    path = "/api/v1/fleet/managedclusters/kept-taints"
    assert fleet.put(document("ManagedCluster", "kept-taints")).status == 201
    tainted = eventually(
        lambda: fleet.call("GET", path),
        lambda answer: bool(answer.body["spec"].get("taints")),
        what="the hub tainting a cluster without a lease unreachable",
    )
    hubs = tainted.body["spec"]["taints"]
    assert [(t["key"], t["effect"]) for t in hubs] == [(BUILTIN_TAINTS[0], "NoSelect")]
    team = {"key": "team", "value": "a", "effect": "PreferNoSelect"}
    forged = {**hubs[0], "timeAdded": "2020-01-01T00:00:00Z"}  # neither restarts nor moves it
    spec = {**SPECS["ManagedCluster"], "taints": [team, forged]}
    replaced = fleet.put(document("ManagedCluster", "kept-taints", spec=spec))
    assert replaced.status == 200, replaced.body
    taints = replaced.body["spec"]["taints"]
    assert [t for t in taints if t["key"] in BUILTIN_TAINTS] == hubs
    [admin] = [t for t in taints if t["key"] == "team"]
    assert admin["timeAdded"].endswith("Z")  # stamped by the hub on write
    again = fleet.put(document("ManagedCluster", "kept-taints", spec=spec))
    assert again.body["spec"]["taints"] == taints  # a second apply keeps the stamp
    dropped = fleet.call(
        "PATCH",
        path,
        {"spec": {"taints": None}},
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert dropped.status == 200, dropped.body
    assert dropped.body["spec"]["taints"] == hubs
    assert fleet.call("DELETE", path).status == 200


def _work(name: str, **metadata: Any) -> dict[str, Any]:
    """A Work of the cluster nobody made (only this test writes it)."""
    return document("Work", name, spec={**SPECS["Work"], "clusterName": NOWHERE}, **metadata)


def test_preconditions_refuse_a_stale_write(fleet: Fleet) -> None:
    path = "/api/v1/fleet/works/precondition"
    first = fleet.put(_work("precondition"))
    assert first.status == 201, first.body
    version = first.body["metadata"]["resourceVersion"]
    assert fleet.put(_work("precondition", labels={"moved": "on"})).status == 200

    stale_body = fleet.put(_work("precondition", resourceVersion=version))
    assert (stale_body.status, stale_body.body["reason"]) == (409, "conflict")
    assert stale_body.body["currentVersion"] != version

    stale_tag = fleet.put(_work("precondition"), headers={"If-Match": f'"{version}"'})
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

    fresh = fleet.put(_work("precondition"), headers={"If-Match": tag})
    assert fresh.status == 200, fresh.body
    rv = fresh.body["metadata"]["resourceVersion"]
    by_body = fleet.put(_work("precondition", labels={"b": "c"}, resourceVersion=rv))
    assert by_body.status == 200, by_body.body
    missing = fleet.put(_work("never-made", resourceVersion="5"))
    assert (missing.status, missing.body["reason"]) == (409, "conflict")
    assert fleet.call("DELETE", path, headers={"If-Match": by_body.headers["ETag"]}).status == 200


def test_a_long_poll_answers_when_the_object_changes(fleet: Fleet) -> None:
    made = fleet.put(_work("polled"))
    assert made.status == 201, made.body
    version = made.body["metadata"]["resourceVersion"]
    path = f"/api/v1/fleet/works/polled?waitForChange=true&resourceVersion={version}"
    quiet = fleet.call("GET", path + "&timeoutSeconds=1")
    assert quiet.body["metadata"]["resourceVersion"] == version  # no change: the same object
    old = str(int(version) - 1)
    moved = fleet.call(
        "GET", f"/api/v1/fleet/works/polled?waitForChange=true&resourceVersion={old}"
    )
    assert moved.body["metadata"]["resourceVersion"] == version  # not at `old`: answered at once
    missing = fleet.call("GET", "/api/v1/fleet/works/polled?waitForChange=true")
    assert (missing.status, missing.body["reason"]) == (400, "bad_parameter")
