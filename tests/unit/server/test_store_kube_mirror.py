"""KubeStore's mirror (pure), and object names for opaque ids.

Versions are ordered, late events ignored, deletions leave tombstones, a relist replaces a
kind, and the revision counts spec changes only.
"""

from __future__ import annotations

from typing import Any

import pytest

from tunnel_server.kubestore import _model as m


def _node(name: str, version: int, generation: int, **spec: Any) -> m.Obj:
    obj = m.new_object(m.NODE, name, {"kind": "node", "state": "approved", "createdAt": 1.0})
    obj["metadata"].update(resourceVersion=str(version), generation=generation)
    obj["spec"].update(spec)
    return obj


def test_an_older_version_never_replaces_a_newer_one() -> None:
    mirror = m.Mirror()
    assert mirror.put(m.NODE, _node("a", 5, 1))
    assert mirror.revision == 1
    assert not mirror.put(m.NODE, _node("a", 4, 1, state="revoked")), "a late watch event"
    assert mirror.put(m.NODE, _node("a", 5, 1)) is False, "the same version again"
    held = mirror.get(m.NODE, "a")
    assert held is not None
    assert held["spec"]["state"] == "approved"
    assert mirror.revision == 1


def test_a_status_write_does_not_move_the_revision() -> None:
    mirror = m.Mirror()
    mirror.put(m.NODE, _node("a", 5, 1))
    heartbeat = _node("a", 6, 1)
    heartbeat["status"] = {"lastSeen": 10.0}
    assert mirror.put(m.NODE, heartbeat)
    assert mirror.revision == 1
    assert mirror.put(m.NODE, _node("a", 7, 2, state="revoked"))
    assert mirror.revision == 2


def test_a_deleted_object_is_not_brought_back_by_a_late_event() -> None:
    mirror = m.Mirror()
    mirror.put(m.NODE, _node("a", 5, 1, certificates=[{"serial": "s1"}]))
    assert mirror.find("cert", "s1") == "a"
    assert mirror.delete(m.NODE, _node("a", 8, 1))
    assert mirror.get(m.NODE, "a") is None
    assert mirror.find("cert", "s1") is None
    assert not mirror.put(m.NODE, _node("a", 6, 1)), "an event older than the deletion"
    assert mirror.put(m.NODE, _node("a", 9, 1)), "created again afterwards"
    assert mirror.revision == 3


def test_a_relist_replaces_the_kind_and_counts_real_changes() -> None:
    mirror = m.Mirror()
    mirror.put(m.NODE, _node("a", 5, 1))
    mirror.put(m.NODE, _node("b", 6, 1))
    before = mirror.revision
    mirror.reset(m.NODE, [_node("a", 5, 1), _node("c", 9, 1)])
    assert sorted(o["metadata"]["name"] for o in mirror.all(m.NODE)) == ["a", "c"]
    assert mirror.revision == before + 2, "b gone, c new; a unchanged"


@pytest.mark.parametrize(
    ("opaque", "verbatim"),
    [("tok001", True), ("abc-def", True), ("x-abc", False), ("Upper", False), ("a_b", False)],
)
def test_opaque_ids_name_objects_injectively(opaque: str, verbatim: bool) -> None:  # noqa: FBT001
    name = m.id_name(opaque)
    assert (name == opaque) is verbatim
    assert len(name) <= 63
    assert m.id_name(opaque + "1") != name
