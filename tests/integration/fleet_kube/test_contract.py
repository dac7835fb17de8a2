"""The ``FleetStore`` contract, run on both backends: SQLite and the Kubernetes API.

What every caller of the store relies on, whatever the backend: create vs replace vs no-op,
generation on spec only, status apart, preconditions (``ConflictError``), lists sorted and
selected, and a change log that replays every write in order (and expires).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fleet_model.labels import parse_label_selector
from tunnel_server.fleet.hub.store import (
    ChangesExpiredError,
    ConflictError,
    FleetStore,
    ObjectNotFoundError,
    StoredObject,
)
from tunnel_server.fleet.hub.store_kube import KubeFleetStore
from tunnel_server.fleet.hub.store_sqlite import SqliteFleetStore

Opener = Callable[..., FleetStore]


@pytest.fixture(params=["sqlite", "kubernetes"])
def open_any(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    if request.param == "kubernetes":
        yield request.getfixturevalue("open_fleet")
        return
    opened: list[SqliteFleetStore] = []

    def make(*, changes_kept: int = 10_000) -> FleetStore:
        opened.append(SqliteFleetStore.open(tmp_path, changes_kept=changes_kept))
        return opened[-1]

    yield make
    for store in opened:
        store.close()


def _put(store: FleetStore, name: str, **fields: Any) -> tuple[StoredObject, bool]:
    return store.put(
        fields.get("kind", "Placement"),
        name,
        labels=fields.get("labels", {}),
        annotations=fields.get("annotations", {}),
        spec=fields.get("spec", {}),
        expected_version=fields.get("expected"),
        now=1_000.0,
    )


def test_create_replace_and_no_op(open_any: Opener) -> None:
    store = open_any()
    start = store.revision()
    created, is_new = _put(store, "web", labels={"a": "1"}, spec={"x": 1})
    assert (is_new, created.generation) == (True, 1)
    assert created.uid
    assert store.revision() > start
    assert store.get("Placement", "web") == created  # read your write, at once
    at = store.revision()
    same, is_new = _put(store, "web", labels={"a": "1"}, spec={"x": 1})
    assert (is_new, same.resource_version, store.revision()) == (
        False,
        created.resource_version,
        at,
    )
    changed, is_new = _put(store, "web", labels={"a": "1"}, spec={"x": 2})
    assert (is_new, changed.generation, changed.uid) == (False, 2, created.uid)
    assert changed.resource_version > created.resource_version
    assert changed.spec == {"x": 2}
    assert changed.document()["metadata"]["resourceVersion"] == str(changed.resource_version)


def test_status_is_apart_from_spec(open_any: Opener) -> None:
    store = open_any()
    created, _ = _put(store, "web", spec={"x": 1})
    with_status = store.set_status("Placement", "web", {"phase": "Ready", "n": 3})
    assert with_status.generation == created.generation
    assert with_status.resource_version > created.resource_version
    assert (with_status.status, with_status.spec) == ({"phase": "Ready", "n": 3}, {"x": 1})
    again = store.set_status("Placement", "web", {"phase": "Ready", "n": 3})
    assert again.resource_version == with_status.resource_version
    # A new spec keeps the status; a status replace drops keys it no longer has.
    replaced, _ = _put(store, "web", spec={"x": 5})
    assert replaced.status == {"phase": "Ready", "n": 3}
    assert store.set_status("Placement", "web", {"phase": "Gone"}).status == {"phase": "Gone"}
    with pytest.raises(ObjectNotFoundError):
        store.set_status("Placement", "nothing", {"a": 1})


def test_preconditions(open_any: Opener) -> None:
    store = open_any()
    first, _ = _put(store, "web", spec={"x": 1})
    second, _ = _put(store, "web", spec={"x": 2}, expected=first.resource_version)
    with pytest.raises(ConflictError) as stale:
        _put(store, "web", spec={"x": 3}, expected=first.resource_version)
    assert stale.value.current == second.resource_version
    with pytest.raises(ConflictError) as missing:
        _put(store, "other", spec={}, expected=first.resource_version)
    assert missing.value.current is None
    with pytest.raises(ConflictError):
        store.set_status("Placement", "web", {"a": 1}, expected_version=first.resource_version)
    with pytest.raises(ConflictError):
        store.delete("Placement", "web", expected_version=first.resource_version)
    gone = store.delete("Placement", "web", expected_version=second.resource_version)
    assert gone.spec == {"x": 2}
    assert store.get("Placement", "web") is None
    with pytest.raises(ObjectNotFoundError):
        store.delete("Placement", "web")


def test_lists_are_sorted_and_selected(open_any: Opener) -> None:
    store = open_any()
    for name, tier in (("c", "gold"), ("a", "gold"), ("b", "silver")):
        _put(store, name, kind="ManagedCluster", labels={"tier": tier}, spec={})
    assert [o.name for o in store.list("ManagedCluster")] == ["a", "b", "c"]
    gold = store.list("ManagedCluster", selector=parse_label_selector("tier=gold"))
    assert [o.name for o in gold] == ["a", "c"]
    assert store.list("Placement") == []


def test_changes_replay_every_write_in_order(open_any: Opener) -> None:
    store = open_any()
    start = store.revision()
    _put(store, "w1", kind="Work", labels={"k": "v"}, spec={"clusterName": "east"})
    _put(store, "w1", kind="Work", labels={"k": "w"}, spec={"clusterName": "west"})
    store.set_status("Work", "w1", {"ok": True})
    _put(store, "p1", spec={})
    store.delete("Work", "w1")
    changes = store.changes_since(start)
    assert [(c.type, c.object.kind) for c in changes] == [
        ("ADDED", "Work"),
        ("MODIFIED", "Work"),
        ("MODIFIED", "Work"),
        ("ADDED", "Placement"),
        ("DELETED", "Work"),
    ]
    revisions = [c.revision for c in changes]
    assert revisions == sorted(set(revisions))
    assert revisions[-1] == store.revision()
    assert (changes[1].labels_before, changes[1].cluster_before) == ({"k": "v"}, "east")
    assert changes[2].object.status == {"ok": True}
    works = store.changes_since(start, kind="Work")
    assert [c.type for c in works] == ["ADDED", "MODIFIED", "MODIFIED", "DELETED"]
    assert store.changes_since(revisions[2], kind="Work") == [changes[4]]
    assert store.changes_since(store.revision()) == []


def test_the_change_log_expires(open_any: Opener) -> None:
    store = open_any(changes_kept=2)
    start = store.revision()
    for n in range(4):
        _put(store, f"p{n}", spec={})
    assert len(store.changes_since(store.revision() - 1)) == 1
    with pytest.raises(ChangesExpiredError):
        store.changes_since(start)


def test_both_backends_are_fleet_stores(open_any: Opener) -> None:
    store = open_any()
    assert isinstance(store, (SqliteFleetStore, KubeFleetStore))
