"""The cloud's twin store after ``restore``: a new sync origin, desired re-sent, edge counts gone.

The end-to-end case (real server, agent, mosquitto) is tests/integration/twins_restore/; these
check the rebase itself and that ``restore`` marks the twin database (and only a restore does).
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from pathlib import Path

import pytest

from daemon_support.twin_database import Durability, mark_restored
from device_models import Replica, Role, Section, TwinChange, apply_change, write_change
from tunnel_server import backup
from tunnel_server.twins.store import DeviceRow, DeviceState, TwinStore

EDGE = "edge-1.0a0b0c0d"


def open_store(path: Path) -> TwinStore:
    return TwinStore(path, durability=Durability.FULL, cache_devices=16, max_dead_letters=16)


def _row(store: TwinStore, device: str, *, state: DeviceState, desired: dict[str, object]) -> None:
    replica = store.new_replica()
    edge = Replica(origin=EDGE, role=Role.EDGE)
    for temperature in (20.0, 21.0):  # two edge changes applied: its count is 2
        edge, change = write_change(edge, Section.REPORTED, {"temperature": temperature}, now=1.0)
        replica = apply_change(replica, change).replica
    for key, value in desired.items():
        replica, _ = write_change(replica, Section.DESIRED, {key: value}, now=2.0)
    txn = store.begin()
    txn.put(
        DeviceRow(
            node="edge-1",
            device=device,
            model="thermostat",
            model_version="1.0.0",
            state=state,
            created=1.0,
            updated=2.0,
            replica=replica,
            edge_origin=EDGE,
        )
    )
    store.commit(txn)


def test_a_restored_database_moves_to_a_new_origin_and_resends_desired(tmp_path: Path) -> None:
    path = tmp_path / "twins.sqlite3"
    store = open_store(path)
    _row(store, "th-1", state=DeviceState.ACTIVE, desired={"setpoint": 20.0, "mode": "heat"})
    _row(store, "th-2", state=DeviceState.REMOVED, desired={"setpoint": 18.0})
    old_origin = store.origin
    store.close()

    mark_restored(path, at="2026-12-04T20:00:00+00:00")
    assert not path.with_name(path.name + "-wal").exists()  # checkpointed into the file
    store = open_store(path)
    assert store.origin != old_origin
    assert store.origin.startswith("cloud.")
    active = store.device(("edge-1", "th-1"))
    assert active is not None
    assert active.replica.origin == store.origin
    assert active.replica.applied == {}  # the edge's count here is older than the agent's
    assert dict(active.replica.twin.desired.values) == {"setpoint": 20.0, "mode": "heat"}
    assert active.replica.next_seq == 2  # the re-send is change 1 of the new origin
    queued = store.downlink_after("edge-1", 0, 10)
    assert [row.device for row in queued] == ["th-1"]  # a removed device gets nothing
    change = TwinChange.from_json(json.loads(queued[0].body)["change"])
    assert (change.origin, change.seq, change.section) == (store.origin, 1, Section.DESIRED)
    # The restored values, and null for the model's other read-write properties: what the
    # agent holds beyond them was written after the backup.
    assert dict(change.values) == {"setpoint": 20.0, "mode": "heat", "schedule": None}
    removed = store.device(("edge-1", "th-2"))
    assert removed is not None
    assert removed.replica.origin == store.origin
    assert removed.replica.next_seq == 1
    rebased = store.origin
    store.close()

    store = open_store(path)  # the mark is gone: the next start keeps the origin
    assert store.origin == rebased
    assert len(store.downlink_after("edge-1", 0, 10)) == 1
    store.close()


def test_an_agent_applies_the_rebased_changes_after_the_old_ones(tmp_path: Path) -> None:
    """What the hazard was: after a restore the cloud numbered new changes as old ones."""
    path = tmp_path / "twins.sqlite3"
    store = open_store(path)
    _row(store, "th-1", state=DeviceState.ACTIVE, desired={})
    row = store.device(("edge-1", "th-1"))
    assert row is not None
    edge = Replica(origin=EDGE, role=Role.EDGE)
    replica, change = write_change(row.replica, Section.DESIRED, {"setpoint": 20.0}, now=2.0)
    edge = apply_change(edge, change).replica
    txn = store.begin()
    txn.put(dataclasses.replace(row, replica=replica))
    store.commit(txn)  # the state the backup has
    after_backup = replica
    for setpoint in (21.0, 22.0):  # made after the backup, applied by the agent
        after_backup, change = write_change(
            after_backup, Section.DESIRED, {"setpoint": setpoint}, now=3.0
        )
        edge = apply_change(edge, change).replica
    store.close()
    mark_restored(path, at="2026-12-04T20:00:00+00:00")
    store = open_store(path)
    row = store.device(("edge-1", "th-1"))
    assert row is not None
    [resent] = store.downlink_after("edge-1", 0, 10)
    result = apply_change(edge, TwinChange.from_json(json.loads(resent.body)["change"]))
    assert result.applied
    assert result.patch == {"setpoint": 20.0}
    _, new = write_change(row.replica, Section.DESIRED, {"setpoint": 23.5}, now=4.0)
    result = apply_change(result.replica, new)
    assert result.applied  # not taken for a redelivery of change 2 of the old origin
    assert result.replica.twin.desired.values == {"setpoint": 23.5}
    store.close()


def test_restore_marks_the_twin_database_and_backup_does_not(tmp_path: Path) -> None:
    source = tmp_path / "a"
    source.mkdir(mode=0o700)
    for name in backup.REQUIRED:
        (source / name).write_bytes(b"x")
    sqlite3.connect(source / "store.db").close()
    open_store(source / "twins.sqlite3").close()
    backup.backup(source, tmp_path / "b.tgz")
    with sqlite3.connect(source / "twins.sqlite3") as db:
        assert db.execute("SELECT value FROM meta WHERE key = 'restored'").fetchone() is None
    backup.restore(tmp_path / "b.tgz", tmp_path / "r")
    assert not (tmp_path / "r" / "twins.sqlite3-wal").exists()  # checkpointed into the file
    db = sqlite3.connect(tmp_path / "r" / "twins.sqlite3")
    try:
        (at,) = db.execute("SELECT value FROM meta WHERE key = 'restored'").fetchone()
    finally:
        db.close()
    assert at.endswith("+00:00")
    assert (tmp_path / "r" / "twins.sqlite3").stat().st_mode & 0o777 == 0o600


def test_restore_refuses_a_twin_database_without_meta(tmp_path: Path) -> None:
    source = tmp_path / "a"
    source.mkdir(mode=0o700)
    for name in backup.REQUIRED:
        (source / name).write_bytes(b"x")
    sqlite3.connect(source / "store.db").close()
    with sqlite3.connect(source / "twins.sqlite3") as db:
        db.execute("CREATE TABLE other (x)")
    backup.backup(source, tmp_path / "b.tgz")
    with pytest.raises(backup.ArchiveRefusedError, match="no twin database"):
        backup.restore(tmp_path / "b.tgz", tmp_path / "r")
    assert not (tmp_path / "r" / "twins.sqlite3").exists()
