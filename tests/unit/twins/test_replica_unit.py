"""EdgeTwinReplica without a broker: what it commits for device messages and cloud changes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from device_models import Replica, Role, Section, write_change
from edge_agent.twins.models import load_models
from edge_agent.twins.outbox import Metrics, Outbox, OutboxSettings
from edge_agent.twins.replica import CloudChangeError, EdgeTwinReplica
from edge_agent.twins.topics import DeviceTopic, Op
from edge_agent.twins.twin_store import DeviceRecord, DeviceState, Durability, TwinStore


class NeverSender:
    async def deliver(self, batch: list[dict[str, Any]]) -> None:
        raise ConnectionError(f"offline ({len(batch)})")


def service(path: Path) -> tuple[EdgeTwinReplica, TwinStore]:
    store = TwinStore(path / "t.sqlite3", node="n1", durability=Durability.NORMAL)
    metrics = Metrics()
    outbox = Outbox(store=store, sender=NeverSender(), settings=OutboxSettings(), metrics=metrics)
    twins = EdgeTwinReplica(
        store=store,
        outbox=outbox,
        models=load_models(None),
        metrics=metrics,
        max_payload_bytes=64 * 1024,
        max_cloud_change_bytes=512 * 1024,
        clock=lambda: 1_700_000_000.0,
    )
    return twins, store


async def onboarded(twins: EdgeTwinReplica, store: TwinStore, device_id: str) -> None:
    record = DeviceRecord(
        device_id=device_id,
        model="thermostat",
        state=DeviceState.ACTIVE,
        created=1.0,
        replica=store.new_replica(),
    )
    await twins.commit_device(record, outbox=[])


def reported(device_id: str, body: dict[str, Any]) -> tuple[DeviceTopic, bytes]:
    return DeviceTopic(device_id, Op.REPORTED), json.dumps(body).encode()


def outbox_kinds(store: TwinStore) -> list[str]:
    rows = store.outbox_peek(limit=100, max_bytes=10**6)
    return [json.loads(body)["kind"] for _, body in rows]


async def test_batch_commits_valid_changes_only_and_survives_reopen(tmp_path: Path) -> None:
    twins, store = service(tmp_path)
    await onboarded(twins, store, "t1")
    await twins.handle_batch(
        [
            reported("t1", {"rid": "a", "patch": {"temperature": 20}}),
            reported("t1", {"rid": "b", "patch": {"temperature": 200}}),
            reported("t1", {"rid": "a", "patch": {"temperature": 20}}),  # redelivered
            reported("t1", {"rid": "c", "patch": {"setpoint": 21}}),
            (DeviceTopic("t1", Op.AVAILABILITY), b"online"),
            (DeviceTopic("t1", Op.AVAILABILITY), b"online"),  # replayed retained message
            reported("ghost", {"rid": "d", "patch": {}}),
        ]
    )
    assert outbox_kinds(store) == ["twin-change", "twin-change", "availability"]
    store.close()
    again, store = service(tmp_path)
    record = again.device("t1")
    assert record is not None
    assert record.replica.twin.reported.values == {"temperature": 20, "setpoint": 21}
    assert record.replica.twin.reported.version == 2
    assert [rid for rid, _ in record.recent] == ["a", "c"]
    assert record.availability == "online"


async def test_cloud_change_is_applied_once_and_in_order(tmp_path: Path) -> None:
    twins, store = service(tmp_path)
    await onboarded(twins, store, "t1")
    cloud = Replica(origin="cloud", role=Role.CLOUD)
    cloud, first = write_change(cloud, Section.DESIRED, {"setpoint": 19}, now=1.0)
    cloud, second = write_change(cloud, Section.DESIRED, {"mode": "cool"}, now=2.0)
    with pytest.raises(CloudChangeError) as caught:
        await twins.apply_cloud_change({"device": "t1", "change": second.to_json()})
    assert str(caught.value.code) == "out_of_order"
    one = await twins.apply_cloud_change({"device": "t1", "change": first.to_json()})
    again = await twins.apply_cloud_change({"device": "t1", "change": first.to_json()})
    two = await twins.apply_cloud_change(json.dumps({"device": "t1", "change": second.to_json()}))
    assert (one.applied, again.applied, two.applied) == (True, False, True)
    record = twins.device("t1")
    assert record is not None
    assert record.replica.twin.desired.values == {"setpoint": 19, "mode": "cool"}
    assert record.replica.twin.desired.version == 2
