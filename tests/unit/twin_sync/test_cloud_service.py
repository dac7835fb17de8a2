"""The cloud's rules for edge batches and API writes, against a real SQLite file."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from device_models import (
    Section,
    TwinChange,
    ValidationError,
    VersionConflictError,
    apply_change,
)
from tests.unit.twin_sync.edge_sim import NODE, EdgeSim, make_cloud, same_values
from tunnel_server.twins.service import (
    BatchError,
    CloudTwinReplica,
    CommandOutcome,
    DeviceRemovedError,
    MovePendingError,
    SameNodeError,
)
from tunnel_server.twins.store import DeviceState


@pytest.fixture
def cloud(tmp_path: Path) -> CloudTwinReplica:
    return make_cloud(tmp_path)


def apply(
    cloud: CloudTwinReplica, edge: EdgeSim, records: list[dict[str, object]]
) -> dict[str, int]:
    result = cloud.apply_batch(node=edge.node, origin=edge.origin, records=records)
    return {"applied": result.applied, "duplicates": result.duplicates, "rejected": result.rejected}


def test_onboarding_and_reports_reach_the_cloud_replica(cloud: CloudTwinReplica) -> None:
    edge = EdgeSim()
    edge.onboard("t1", "thermostat")
    edge.report("t1", {"temperature": 21.5, "heating": True})
    edge.availability("t1", "online")
    assert apply(cloud, edge, edge.take()) == {"applied": 3, "duplicates": 0, "rejected": 0}
    row = cloud.device((NODE, "t1"))
    assert row is not None
    assert row.model == "thermostat"
    assert row.availability == "online"
    assert row.replica.twin.reported.values == {"temperature": 21.5, "heating": True}
    assert same_values(edge.replicas["t1"], row.replica)


def test_redelivered_records_apply_once_whatever_the_overlap(cloud: CloudTwinReplica) -> None:
    edge = EdgeSim()
    edge.onboard("r1", "relay-switch")
    records = [edge.onboard("r1", "relay-switch")]  # a second onboarding: fresh replicas
    records = edge.take()
    for count in range(1, 301):
        edge.report("r1", {"switchCount": count})
    records += edge.take()
    rng = random.Random(5)  # noqa: S311 - a delivery schedule, not cryptography
    position = 0
    while position < len(records):
        # Deliver a window that starts somewhere at or before the first unacknowledged
        # record, as a retry after a lost acknowledgement does.
        start = max(0, position - rng.randrange(0, 20))
        end = min(len(records), position + rng.randrange(1, 40))
        apply(cloud, edge, records[start:end])
        position = end
    row = cloud.device((NODE, "r1"))
    assert row is not None
    assert row.replica.twin.reported.version == 300  # each change once: no more, no fewer
    assert row.replica.twin.reported.values == {"switchCount": 300}
    assert cloud.counters.changes_applied == 300
    assert cloud.store.dead_letter_count() == 0


def test_a_record_from_another_origin_or_node_is_dead_lettered(cloud: CloudTwinReplica) -> None:
    edge = EdgeSim()
    apply(cloud, edge, [edge.onboard("d1", "relay-switch")])
    intruder = EdgeSim(node="node2")
    record = intruder.onboard("d1", "relay-switch")
    # node1's session forwarding a record that claims node2's origin
    result = apply(cloud, edge, [{**record, "outboxId": 99}])
    assert result["rejected"] == 1
    change = intruder.report("d1", {"switchCount": 1})
    assert apply(cloud, edge, [{**change, "outboxId": 100}])["rejected"] == 1
    row = cloud.device((NODE, "d1"))
    assert row is not None
    assert row.replica.twin.reported.version == 0
    assert cloud.device(("node2", "d1")) is None  # a node never writes another's devices


def test_a_hello_must_carry_the_sessions_node_name(cloud: CloudTwinReplica) -> None:
    cloud.hello(NODE, "node1.abc123")
    for bad in ("node2.abc", "node1", "node1.", "node1.a.b", "xnode1.abc"):
        with pytest.raises(ValueError, match="boot id"):
            cloud.hello(NODE, bad)


def test_batches_that_break_the_protocol_are_refused_whole(cloud: CloudTwinReplica) -> None:
    edge = EdgeSim()
    first, second = edge.onboard("a", "relay-switch"), edge.onboard("b", "relay-switch")
    with pytest.raises(BatchError, match="increase"):
        apply(cloud, edge, [second, first])
    with pytest.raises(BatchError, match="outboxId"):
        apply(cloud, edge, [{"kind": "device"}])
    assert cloud.device((NODE, "a")) is None  # nothing of a refused batch stays


def test_a_value_the_cloud_model_refuses_uses_up_its_seq_and_is_reported(
    cloud: CloudTwinReplica,
) -> None:
    edge = EdgeSim()
    edge.onboard("t", "thermostat")
    bad = edge.report("t", {"setpoint": 21.0})
    bad["change"]["values"]["setpoint"] = 99.0  # past the model's max: a tampered record
    bad["change"]["metadata"]["setpoint"] = {"$lastUpdated": edge.now}
    edge.report("t", {"temperature": 20.0})
    result = apply(cloud, edge, edge.take())
    assert result == {"applied": 2, "duplicates": 0, "rejected": 1}
    row = cloud.device((NODE, "t"))
    assert row is not None
    assert row.replica.twin.reported.values == {"temperature": 20.0}  # the next one applied
    assert row.sync_error is not None
    assert "setpoint" in row.sync_error


def test_api_writes_queue_changes_the_edge_applies_in_order(cloud: CloudTwinReplica) -> None:
    edge = EdgeSim()
    apply(cloud, edge, [edge.onboard("t", "thermostat")])
    for setpoint in (18, 19, 20):
        cloud.write((NODE, "t"), Section.DESIRED, {"setpoint": setpoint})
    rows = cloud.store.downlink_after(NODE, 0, 10)
    assert len(rows) == 3
    replica = edge.replicas["t"]
    for row in rows:
        body = json.loads(row.body)
        assert body["device"] == "t"
        replica = apply_change(replica, TwinChange.from_json(body["change"])).replica
    assert replica.twin.desired.values == {"setpoint": 20}
    cloud.downlink_done([row.id for row in rows])
    assert cloud.store.downlink_count(NODE) == 0


def test_api_writes_are_validated_and_conditional(cloud: CloudTwinReplica) -> None:
    edge = EdgeSim()
    apply(cloud, edge, [edge.onboard("t", "thermostat")])
    key = (NODE, "t")
    with pytest.raises(ValidationError) as refused:
        cloud.write(key, Section.DESIRED, {"setpoint": 31})
    assert [p.path for p in refused.value.problems] == ["setpoint"]
    with pytest.raises(ValidationError, match="read-only"):
        cloud.write(key, Section.DESIRED, {"temperature": 20})  # read-only
    cloud.write(key, Section.DESIRED, {"setpoint": 20}, expected_version=0)
    with pytest.raises(VersionConflictError):
        cloud.write(key, Section.DESIRED, {"setpoint": 21}, expected_version=0)
    row = cloud.device(key)
    assert row is not None
    assert row.replica.twin.desired.version == 1
    assert cloud.store.downlink_count(NODE) == 1  # refused writes queue nothing


def test_reonboarding_starts_fresh_replicas_and_carries_desired(cloud: CloudTwinReplica) -> None:
    edge = EdgeSim()
    apply(cloud, edge, [edge.onboard("t", "thermostat")])
    cloud.write((NODE, "t"), Section.DESIRED, {"setpoint": 22, "mode": "heat"})
    apply(cloud, edge, [edge.remove("t")])
    row = cloud.device((NODE, "t"))
    assert row is not None
    assert row.state is DeviceState.REMOVED
    assert cloud.store.downlink_count(NODE) == 0  # nothing queued for a removed device
    with pytest.raises(DeviceRemovedError):
        cloud.write((NODE, "t"), Section.DESIRED, {"setpoint": 23})
    edge.onboard("t", "thermostat")
    edge.report("t", {"temperature": 19.0})
    apply(cloud, edge, edge.take())
    row = cloud.device((NODE, "t"))
    assert row is not None
    assert row.state is DeviceState.ACTIVE
    assert row.replica.twin.reported.version == 1  # numbered from 1 again with the edge
    rows = cloud.store.downlink_after(NODE, 0, 10)
    assert len(rows) == 1
    change = TwinChange.from_json(json.loads(rows[0].body)["change"])
    assert change.seq == 1
    result = apply_change(edge.replicas["t"], change)
    assert result.replica.twin.desired.values == {"setpoint": 22, "mode": "heat"}


def test_availability_keeps_the_newest_status(cloud: CloudTwinReplica) -> None:
    edge = EdgeSim()
    edge.onboard("d", "relay-switch")
    late = edge.availability("d", "offline")
    edge.availability("d", "online")
    newer = edge.take()
    apply(cloud, edge, newer)
    row = cloud.device((NODE, "d"))
    assert row is not None
    assert row.availability == "online"
    assert late["at"] < (row.availability_at or 0)


def test_the_store_survives_a_restart(tmp_path: Path) -> None:
    cloud = make_cloud(tmp_path)
    edge = EdgeSim()
    edge.onboard("t", "thermostat")
    edge.report("t", {"temperature": 20.5})
    apply(cloud, edge, edge.take())
    cloud.write((NODE, "t"), Section.DESIRED, {"setpoint": 21})
    origin = cloud.origin
    cloud.store.close()
    again = make_cloud(tmp_path)
    assert again.origin == origin
    row = again.device((NODE, "t"))
    assert row is not None
    assert row.replica.twin.desired.values == {"setpoint": 21}
    assert again.store.downlink_count(NODE) == 1
    edge.report("t", {"temperature": 20.5})
    records = edge.take()
    assert apply(again, edge, records)["applied"] == 1
    assert apply(again, edge, records)["duplicates"] == 1


def test_a_move_is_one_command_and_carries_desired_to_the_target(cloud: CloudTwinReplica) -> None:
    source, target = EdgeSim(node="edge-a"), EdgeSim(node="edge-b")
    source.onboard("m1", "thermostat")
    apply(cloud, source, source.take())
    cloud.write(("edge-a", "m1"), Section.DESIRED, {"setpoint": 19.0})
    assert cloud.move(("edge-a", "m1"), "edge-b") == "edge-b"
    assert cloud.store.pending_move(("edge-a", "m1")) == "edge-b"
    with pytest.raises(MovePendingError):
        cloud.move(("edge-a", "m1"), "edge-c")  # one move at a time
    with pytest.raises(SameNodeError):
        cloud.move(("edge-a", "m1"), "edge-a")
    queued = [json.loads(row.body) for row in cloud.store.downlink_after("edge-a", 0, 10)]
    assert queued[-1] == {"device": "m1", "command": {"op": "move", "to": "edge-b"}}

    # The target's device record may come before the source's device-moved record.
    target.onboard("m1", "thermostat")
    apply(cloud, target, target.take())
    source.replicas.pop("m1")
    source._append({"kind": "device-moved", "device": "m1", "to": "edge-b", "at": 2.0})
    apply(cloud, source, source.take())

    moved, old = cloud.device(("edge-b", "m1")), cloud.device(("edge-a", "m1"))
    assert moved is not None
    assert old is not None
    assert (moved.state, old.state) == (DeviceState.ACTIVE, DeviceState.REMOVED)
    assert moved.replica.twin.desired.values == {"setpoint": 19.0}
    assert cloud.store.pending_move(("edge-a", "m1")) is None
    assert cloud.store.downlink_count("edge-a") == 0  # nothing left for the old node
    assert cloud.resolve("m1") == [("edge-b", "m1")]  # the bare id names the live one


def test_a_refused_move_ends_and_says_why(cloud: CloudTwinReplica) -> None:
    edge = EdgeSim(node="edge-a")
    edge.onboard("m2", "thermostat")
    apply(cloud, edge, edge.take())
    cloud.move(("edge-a", "m2"), "edge-z")
    [row] = cloud.store.downlink_after("edge-a", 0, 10)
    cloud.downlink_failed("edge-a", row.id, "move_refused", "node edge-z does not use the broker")
    device = cloud.device(("edge-a", "m2"))
    assert device is not None
    assert device.state is DeviceState.ACTIVE
    assert device.sync_error is not None
    assert device.sync_error.startswith("edge refused the move: move_refused")
    assert cloud.store.pending_move(("edge-a", "m2")) is None
    cloud.move(("edge-a", "m2"), "edge-b")  # a new move may be asked for


async def test_a_lifecycle_command_is_answered_to_its_waiting_caller(
    cloud: CloudTwinReplica,
) -> None:
    """Register/remove/revoke wait for the agent: its ack or its refusal, never a dead letter."""
    done = cloud.command(("edge-a", "c1"), {"op": "remove"})
    refused = cloud.command(("edge-a", "c2"), {"op": "register", "model": "x", "secretSha256": ""})
    unanswered = cloud.command(("edge-a", "c3"), {"op": "revoke"})
    cloud.downlink_done([done])
    cloud.downlink_failed("edge-a", refused, "model_unknown", "no model x on edge-a")
    assert await cloud.wait_command(done, within=5) == CommandOutcome(ok=True)
    assert await cloud.wait_command(refused, within=5) == CommandOutcome(
        ok=False, error="model_unknown", message="no model x on edge-a"
    )
    assert await cloud.wait_command(unanswered, within=0.01) is None
    assert cloud.store.downlink_count("edge-a") == 0  # the unanswered one was taken back
    assert cloud.store.dead_letter_count() == 0


def test_a_removal_keeps_the_twin_marked_or_deletes_it(cloud: CloudTwinReplica) -> None:
    edge = EdgeSim(node="edge-a")
    for device in ("k1", "k2", "d1"):
        edge.onboard(device, "thermostat")
    apply(cloud, edge, edge.take())
    cloud.write(("edge-a", "k1"), Section.DESIRED, {"setpoint": 22.0})
    cloud.finish_removal(("edge-a", "k1"), state=DeviceState.REVOKED, delete_twin=False)
    cloud.finish_removal(("edge-a", "k2"), state=DeviceState.REMOVED, delete_twin=False)
    cloud.finish_removal(("edge-a", "d1"), state=DeviceState.REMOVED, delete_twin=True)
    # The agent's device-removed records come after: revoked stays revoked, deleted stays gone.
    for device in ("k1", "k2", "d1"):
        edge.remove(device)
    assert apply(cloud, edge, edge.take()) == {"applied": 3, "duplicates": 0, "rejected": 0}
    kept, removed = cloud.device(("edge-a", "k1")), cloud.device(("edge-a", "k2"))
    assert kept is not None
    assert removed is not None
    assert (kept.state, removed.state) == (DeviceState.REVOKED, DeviceState.REMOVED)
    assert kept.replica.twin.desired.values == {"setpoint": 22.0}
    assert cloud.device(("edge-a", "d1")) is None
    assert cloud.store.downlink_count("edge-a") == 0  # k1's queued change went with it
    with pytest.raises(DeviceRemovedError):
        cloud.write(("edge-a", "k1"), Section.DESIRED, {"setpoint": 21.0})
    # Registered and onboarded again, the kept twin's desired values come back.
    edge.onboard("k1", "thermostat")
    apply(cloud, edge, edge.take())
    again = cloud.device(("edge-a", "k1"))
    assert again is not None
    assert again.state is DeviceState.ACTIVE
    assert again.replica.twin.desired.values == {"setpoint": 22.0}
