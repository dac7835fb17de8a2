"""The Kubernetes fleet store's mirror and change log, without an API server.

Versions of one object only move forward (a watch event older than this replica's own write
is dropped, so a change is logged once), a delete is not undone by a late event, a relist
logs exactly the difference, and the local revision never falls below a change's
resourceVersion (so resuming from an object's version misses nothing).
"""

from __future__ import annotations

import pytest

from tunnel_server.fleet.hub.store import ChangesExpiredError, StoredObject
from tunnel_server.fleet.hub.store_kube import _Mirror, _stored


def _obj(name: str, rv: int, kind: str = "Work", **spec: object) -> StoredObject:
    return _stored(
        kind,
        {
            "metadata": {
                "name": name,
                "uid": f"uid-{name}",
                "resourceVersion": str(rv),
                "generation": 1,
                "creationTimestamp": "2026-01-02T03:04:05Z",
                "labels": {"a": "b"},
            },
            "spec": dict(spec),
        },
    )


def test_objects_decode_as_the_api_serves_them() -> None:
    obj = _obj("w", 42, clusterName="east")
    assert (obj.resource_version, obj.uid, obj.generation) == (42, "uid-w", 1)
    assert obj.created_at == 1767323045.0
    assert (obj.labels, obj.spec, obj.status) == ({"a": "b"}, {"clusterName": "east"}, {})


def test_older_or_equal_versions_are_dropped_and_logged_once() -> None:
    mirror = _Mirror(100)
    mirror.start(10)
    assert mirror.put(_obj("w", 20, clusterName="east"))
    assert not mirror.put(_obj("w", 20))  # the watch's copy of our own write
    assert not mirror.put(_obj("w", 15))  # an older event arriving late
    assert mirror.put(_obj("w", 30, clusterName="west"))
    changes = mirror.changes_since(10, None)
    assert [(c.type, c.object.resource_version) for c in changes] == [
        ("ADDED", 20),
        ("MODIFIED", 30),
    ]
    assert changes[1].cluster_before == "east"
    assert [c.revision for c in changes] == [20, 30]


def test_the_revision_is_monotonic_and_never_below_a_change() -> None:
    mirror = _Mirror(100)
    mirror.start(50)
    mirror.put(_obj("a", 60))
    mirror.put(_obj("b", 55, kind="Placement"))  # another kind's watch, behind
    mirror.put(_obj("c", 70))
    revisions = [c.revision for c in mirror.changes_since(50, None)]
    assert revisions == [60, 61, 70]
    # Resuming the Work watch from the last Work seen (60) gets the next one.
    assert [c.object.name for c in mirror.changes_since(60, "Work")] == ["c"]


def test_a_delete_is_not_undone_by_a_late_event() -> None:
    mirror = _Mirror(100)
    mirror.put(_obj("w", 20))
    assert mirror.delete(_obj("w", 20))
    assert not mirror.put(_obj("w", 20))  # the watch's ADDED of the version we deleted
    assert "w" not in mirror.objects["Work"]
    assert not mirror.delete(_obj("w", 25))  # its DELETED event: already gone
    assert mirror.put(_obj("w", 40))  # a new object of that name
    assert [c.type for c in mirror.changes_since(0, None)] == ["ADDED", "DELETED", "ADDED"]


def test_a_relist_logs_the_difference() -> None:
    mirror = _Mirror(100)
    mirror.reset("Work", [_obj("kept", 5), _obj("gone", 6), _obj("changed", 7)], 8)
    mirror.start(8)
    mirror.put(_obj("mine", 12))  # written by this replica after the next list was taken
    assert mirror.reset("Work", [_obj("kept", 5), _obj("changed", 9), _obj("new", 10)], 11)
    changes = [(c.type, c.object.name) for c in mirror.changes_since(8, "Work")]
    assert sorted(changes) == [
        ("ADDED", "mine"),
        ("ADDED", "new"),
        ("DELETED", "gone"),
        ("MODIFIED", "changed"),
    ]
    assert sorted(mirror.objects["Work"]) == ["changed", "kept", "mine", "new"]
    assert not mirror.reset("Work", list(mirror.objects["Work"].values()), 12)


def test_the_log_is_bounded_and_expires() -> None:
    mirror = _Mirror(2)
    mirror.start(1)
    for n in range(2, 6):
        mirror.put(_obj(f"w{n}", n))
    assert [c.revision for c in mirror.changes_since(3, None)] == [4, 5]
    with pytest.raises(ChangesExpiredError):
        mirror.changes_since(2, None)
