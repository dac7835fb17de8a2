"""The SQLite fleet store: versions, generations, preconditions, the change log, two processes."""

from __future__ import annotations

import asyncio
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet_model.labels import parse_label_selector
from tunnel_server.fleet.hub.hub import CLUSTER_LABEL, FleetHub, FleetSettings, from_environment
from tunnel_server.fleet.hub.store import (
    ChangesExpiredError,
    ConflictError,
    FleetEvents,
    ObjectNotFoundError,
    StoredObject,
)
from tunnel_server.fleet.hub.store_sqlite import FLEET_FILE, SqliteFleetStore


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteFleetStore]:
    opened = SqliteFleetStore.open(tmp_path, changes_kept=5)
    yield opened
    opened.close()


def _put(store: SqliteFleetStore, name: str, **fields: object) -> tuple[StoredObject, bool]:
    return store.put(
        "Placement",
        name,
        labels=fields.get("labels", {}),  # type: ignore[arg-type]
        annotations=fields.get("annotations", {}),  # type: ignore[arg-type]
        spec=fields.get("spec", {}),  # type: ignore[arg-type]
        expected_version=fields.get("expected"),  # type: ignore[arg-type]
        now=1_000.0,
    )


def test_the_file_is_private_and_versioned(tmp_path: Path) -> None:
    SqliteFleetStore.open(tmp_path).close()
    mode = stat.S_IMODE((tmp_path / FLEET_FILE).stat().st_mode)
    assert mode == 0o600
    # Opening again finds its own schema version and migrates nothing.
    again = SqliteFleetStore.open(tmp_path)
    assert again.revision() == 0
    again.close()


def test_create_then_replace_bumps_revision_and_generation(store: SqliteFleetStore) -> None:
    created, is_new = store.put(
        "Placement", "web", labels={"a": "1"}, annotations={}, spec={"x": 1}, now=5.0
    )
    assert (is_new, created.resource_version, created.generation) == (True, 1, 1)
    assert (len(created.uid), created.created_at) == (32, 5.0)
    same, is_new = store.put(
        "Placement", "web", labels={"a": "1"}, annotations={}, spec={"x": 1}, now=9.0
    )
    assert (is_new, same, store.revision()) == (False, created, 1)  # nothing changed: no write
    changed, _ = store.put(
        "Placement", "web", labels={"a": "2"}, annotations={}, spec={"x": 1}, now=9.0
    )
    assert (changed.resource_version, changed.generation) == (2, 2)
    assert (changed.uid, changed.created_at) == (created.uid, 5.0)
    document = changed.document()
    assert document["metadata"]["resourceVersion"] == "2"
    assert document["metadata"]["creationTimestamp"] == "1970-01-01T00:00:05Z"
    assert document["apiVersion"] == "fleet.edgefleet.io/v1alpha1"


def test_status_moves_the_version_but_not_the_generation(store: SqliteFleetStore) -> None:
    _put(store, "web", spec={"x": 1})
    with_status = store.set_status("Placement", "web", {"n": 1})
    assert (with_status.resource_version, with_status.generation) == (2, 1)
    again = store.set_status("Placement", "web", {"n": 1})
    assert (again, store.revision()) == (with_status, 2)  # unchanged: nothing written
    replaced, _ = _put(store, "web", spec={"x": 2})
    assert replaced.status == {"n": 1}  # a spec write keeps the status
    with pytest.raises(ObjectNotFoundError):
        store.set_status("Placement", "nothing", {})


def test_preconditions(store: SqliteFleetStore) -> None:
    _put(store, "web")
    with pytest.raises(ConflictError) as stale:
        _put(store, "web", spec={"x": 1}, expected=7)
    assert (stale.value.current, stale.value.expected) == (1, 7)
    with pytest.raises(ConflictError) as missing:
        _put(store, "other", expected=1)
    assert missing.value.current is None
    _put(store, "web", spec={"x": 1}, expected=1)
    with pytest.raises(ConflictError):
        store.delete("Placement", "web", expected_version=1)
    with pytest.raises(ConflictError):
        store.set_status("Placement", "web", {"a": 1}, expected_version=1)
    assert store.get("Placement", "web") is not None
    gone = store.delete("Placement", "web", expected_version=2)
    assert gone.resource_version == 3
    assert store.get("Placement", "web") is None
    with pytest.raises(ObjectNotFoundError):
        store.delete("Placement", "web")


def test_list_by_name_and_selector(store: SqliteFleetStore) -> None:
    for name, env in (("c", "prod"), ("a", "dev"), ("b", "prod")):
        _put(store, name, labels={"env": env})
    store.put("Work", "w", labels={"env": "prod"}, annotations={}, spec={}, now=1.0)
    assert [o.name for o in store.list("Placement")] == ["a", "b", "c"]
    selector = parse_label_selector("env=prod")
    assert [o.name for o in store.list("Placement", selector=selector)] == ["b", "c"]
    assert [o.name for o in store.list("Work", selector=selector)] == ["w"]
    assert store.list("GitSource") == []


def test_changes_replay_in_order_and_expire(store: SqliteFleetStore) -> None:
    _put(store, "a")
    _put(store, "a", spec={"x": 1})
    store.put("Work", "w", labels={}, annotations={}, spec={}, now=1.0)
    store.delete("Placement", "a")
    changes = store.changes_since(0)
    assert [(c.revision, c.type, c.object.name) for c in changes] == [
        (1, "ADDED", "a"),
        (2, "MODIFIED", "a"),
        (3, "ADDED", "w"),
        (4, "DELETED", "a"),
    ]
    assert [c.revision for c in store.changes_since(2, kind="Placement")] == [4]
    assert changes[3].object.spec == {"x": 1}  # the last state of what was deleted
    for n in range(4):  # 8 writes with 5 kept: revisions 1..3 are gone
        _put(store, f"n{n}")
    assert [c.revision for c in store.changes_since(3)] == [4, 5, 6, 7, 8]
    with pytest.raises(ChangesExpiredError):
        store.changes_since(2)
    assert store.changes_since(8) == []


def test_a_second_connection_sees_the_writes_of_the_first(tmp_path: Path) -> None:
    first = SqliteFleetStore.open(tmp_path)
    second = SqliteFleetStore.open(tmp_path)
    try:
        assert second.get("Placement", "web") is None  # cached empty
        first.put("Placement", "web", labels={}, annotations={}, spec={"x": 1}, now=1.0)
        seen = second.get("Placement", "web")
        assert seen is not None
        assert seen.spec == {"x": 1}
        second.put("Placement", "web", labels={}, annotations={}, spec={"x": 2}, now=1.0)
        mine = first.get("Placement", "web")
        assert mine is not None
        assert (mine.spec, mine.resource_version) == ({"x": 2}, 2)
    finally:
        first.close()
        second.close()


def test_stored_values_are_copies(store: SqliteFleetStore) -> None:
    spec = {"items": [1]}
    _put(store, "web", spec=spec)
    spec["items"].append(2)
    stored = store.get("Placement", "web")
    assert stored is not None
    assert stored.spec == {"items": [1]}
    with pytest.raises(ValueError, match="unknown fleet kind"):
        store.put("Nope", "x", labels={}, annotations={}, spec={}, now=1.0)


def test_hub_labels_works_and_wakes_waiters(store: SqliteFleetStore) -> None:
    events = FleetEvents(store.revision, poll_interval=60.0)
    hub = FleetHub(store=store, events=events, settings=FleetSettings())

    async def scenario() -> tuple[int, int]:
        waiting = asyncio.create_task(events.wait_past(0, 30.0))  # noqa: TID251 - a test's own
        await asyncio.sleep(0)
        work, _ = hub.put("Work", "w", labels={}, annotations={}, spec={"clusterName": "c1"})
        woke = await waiting
        quiet = await events.wait_past(woke, 0.05)  # nothing written: returns at the timeout
        assert work.labels == {CLUSTER_LABEL: "c1"}
        return woke, quiet

    assert asyncio.run(scenario()) == (1, 1)


def test_settings_from_the_environment() -> None:
    settings = from_environment({"EDGEFLEET_FLEET_CHANGES_KEPT": "20"})
    assert settings.changes_kept == 20
    assert isinstance(settings.changes_kept, int)
    with pytest.raises(ValueError, match="EDGEFLEET_FLEET_CHANGES_KEPT"):
        from_environment({"EDGEFLEET_FLEET_CHANGES_KEPT": "0"})


def test_changes_remember_labels_and_cluster_before_a_modification(
    store: SqliteFleetStore,
) -> None:
    store.put("Work", "w", labels={"a": "1"}, annotations={}, spec={"clusterName": "c1"}, now=1.0)
    store.put("Work", "w", labels={"a": "2"}, annotations={}, spec={"clusterName": "c2"}, now=1.0)
    store.set_status("Work", "w", {"ok": True})
    added, moved, status = store.changes_since(0)
    assert (added.labels_before, added.cluster_before) == (None, None)
    assert (moved.labels_before, moved.cluster_before) == ({"a": "1"}, "c1")
    assert (status.labels_before, status.cluster_before) == ({"a": "2"}, "c2")
