"""Local control (``localControl: true``): HA commands applied at the edge, then synced.

While the cloud is unreachable the edge applies them; the cloud then takes or drops the edge's
desired changes by the model, and the conflict rule decides a key both sides wrote.

Edge: a real EdgeTwinReplica and store with a recording publisher. Cloud: a real
CloudTwinReplica and store fed the edge's outbox records (tests/unit/twin_sync/edge_sim.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from device_models import DeviceModel, Section, TwinChange, apply_change
from device_models.sync_requests import NOT_TAKEN, UNREACHABLE, RequestRefusedError
from edge_agent.twins.home_assistant import HomeAssistantDiscovery, HomeAssistantSettings
from edge_agent.twins.payloads import Code
from edge_agent.twins.replica import EdgeTwinReplica, LocalWriteError
from edge_agent.twins.twin_store import TwinStore
from tests.unit.twin_sync.edge_sim import NODE, EdgeSim, make_cloud
from tests.unit.twins.test_home_assistant_desired_requests import AuditList
from tests.unit.twins.test_home_assistant_discovery import Recorder, ScriptedCloud, onboard
from tests.unit.twins.test_replica_unit import outbox_kinds, service
from tunnel_aio import TunnelStream
from tunnel_server.twins.service import CloudTwinReplica, EdgeDesiredWrite
from tunnel_server.twins.sync import EdgeTwinLinks, _Link

LAMP = DeviceModel.from_yaml(
    """\
apiVersion: edgefleet.io/v1
kind: DeviceModel
name: lamp
version: "1.0.0"
localControl: true
properties:
  - name: "on"
    type: bool
    access: read-write
  - name: brightness
    type: int
    min: 0
    max: 100
    access: read-write
"""
)


async def edge_with_lamp(tmp_path: Path) -> tuple[EdgeTwinReplica, TwinStore, Recorder]:
    twins, store = service(tmp_path)
    assert twins.models.offer(LAMP)
    await onboard(twins, store, "l1", "lamp")
    await onboard(twins, store, "t1", "thermostat")
    broker = Recorder()
    twins.attach(cast("Any", PublishAny(broker)))
    return twins, store, broker


class PublishAny:
    """The replica publishes twin/desired unretained; the Recorder insists on retained."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self.sent: list[tuple[str, bytes, bool]] = []

    async def publish(self, topic: str, payload: bytes, *, retain: bool) -> None:
        self.sent.append((topic, payload, retain))
        await self.recorder.publish(topic, payload, retain=True)


# ---------------------------------------------------------------------------------- model


def test_local_control_is_off_unless_the_model_says_true() -> None:
    assert LAMP.local_control is True
    assert DeviceModel.from_dict({**LAMP.to_dict(), "localControl": False}).local_control is False
    plain = {key: value for key, value in LAMP.to_dict().items() if key != "localControl"}
    assert DeviceModel.from_dict(plain).local_control is False
    with pytest.raises(Exception, match="localControl: must be true or false"):
        DeviceModel.from_dict({**LAMP.to_dict(), "localControl": "yes"})


@given(flag=st.booleans())
def test_the_flag_round_trips_and_is_written_only_when_true(*, flag: bool) -> None:
    model = DeviceModel.from_dict({**LAMP.to_dict(), "localControl": flag})
    written = model.to_dict()
    assert ("localControl" in written) is flag  # an older agent knows no such field
    assert DeviceModel.from_dict(written) == model


# ---------------------------------------------------------------------------------- edge


async def test_an_edge_write_reaches_the_device_and_the_outbox(tmp_path: Path) -> None:
    twins, store, broker = await edge_with_lamp(tmp_path)
    version = await twins.write_local_desired("l1", {"on": True})
    assert version == 1
    record = twins.device("l1")
    assert record is not None
    assert record.replica.twin.desired.values == {"on": True}
    assert outbox_kinds(store) == ["twin-change"]
    [(_, body)] = store.outbox_peek(limit=10, max_bytes=10**6)
    change = TwinChange.from_json(json.loads(body)["change"])
    assert (change.section, dict(change.values)) == (Section.DESIRED, {"on": True})
    # The device hears it as it hears a cloud change: twin/desired, then the retained delta.
    desired = json.loads(broker.retained["edgefleet/devices/l1/twin/desired"])
    assert desired == {"version": 1, "patch": {"on": True}}
    delta = json.loads(broker.retained["edgefleet/devices/l1/twin/delta"])
    assert delta == {"version": 1, "delta": {"on": True}}


async def test_an_edge_write_is_refused_without_local_control_or_a_fitting_value(
    tmp_path: Path,
) -> None:
    twins, store, _ = await edge_with_lamp(tmp_path)
    cases: list[tuple[str, dict[str, Any], Code]] = [
        ("t1", {"setpoint": 21.0}, Code.BAD_REQUEST),  # thermostat: no local control
        ("l1", {"brightness": 101}, Code.INVALID_VALUE),
        ("l1", {"power": 3}, Code.INVALID_VALUE),  # not a property
        ("l1", {}, Code.BAD_REQUEST),
        ("ghost", {"on": True}, Code.UNKNOWN_DEVICE),
    ]
    for device, patch, code in cases:
        with pytest.raises(LocalWriteError) as refused:
            await twins.write_local_desired(device, patch)
        assert refused.value.code is code, (device, patch, refused.value.message)
    assert outbox_kinds(store) == []
    record = twins.device("l1")
    assert record is not None
    assert record.replica.twin.desired.version == 0


async def test_commands_apply_locally_only_when_the_cloud_never_got_them(tmp_path: Path) -> None:
    twins, _, _ = await edge_with_lamp(tmp_path)
    cloud = ScriptedCloud(
        RequestRefusedError(UNREACHABLE),  # the stream broke under the request
        RequestRefusedError(NOT_TAKEN),  # an older cloud
        RequestRefusedError("the cloud did not answer in time"),  # it may have applied it
        RequestRefusedError(UNREACHABLE),  # thermostat: no local control
    )
    ha = HomeAssistantDiscovery(
        settings=HomeAssistantSettings(enabled=True), node="edge-1", twins=twins, forwarder=cloud
    )
    broker = Recorder()
    ha.attach(broker)
    shown: list[str] = []
    for device, name, payload in (
        ("l1", "brightness", b"40"),
        ("l1", "brightness", b"50"),
        ("l1", "brightness", b"60"),
        ("t1", "setpoint", b"21"),
    ):
        ha.command(device, name, payload)
        await ha.forward_next()
        shown.append(json.loads(broker.retained[f"edgefleet/devices/{device}/ha/command"])["state"])
    cloud.connected = False  # no stream at all
    ha.command("l1", "on", b"ON")
    await ha.forward_next()
    shown.append(json.loads(broker.retained["edgefleet/devices/l1/ha/command"])["state"])
    ha.command("l1", "brightness", b"101")  # checked before anything: refused
    await ha.forward_next()
    shown.append(json.loads(broker.retained["edgefleet/devices/l1/ha/command"])["state"])

    assert shown == [
        "applied locally (cloud unreachable)",
        "applied locally (the cloud does not take commands)",
        "refused: the cloud did not answer in time",
        "refused: cloud unreachable",
        "applied locally (cloud unreachable)",
        "refused: brightness: must be <= 100 (got 101)",
    ]
    record = twins.device("l1")
    assert record is not None
    assert record.replica.twin.desired.values == {"brightness": 50, "on": True}
    assert ha.metrics.commands_applied_locally == 3
    assert ha.metrics.commands_refused == 3
    assert ha.metrics.commands_forwarded == 0


# ---------------------------------------------------------------------------------- cloud


def cloud_with_lamp(tmp_path: Path) -> CloudTwinReplica:
    cloud = make_cloud(tmp_path)
    assert cloud.models.offer(LAMP)
    return cloud


def test_the_cloud_applies_edge_desired_only_for_a_model_with_local_control(
    tmp_path: Path,
) -> None:
    cloud = cloud_with_lamp(tmp_path)
    edge = EdgeSim()
    edge.onboard("l1", "lamp")
    edge.onboard("t1", "thermostat")
    edge.write("l1", Section.DESIRED, {"on": True})
    edge.write("t1", Section.DESIRED, {"setpoint": 21.0})
    edge.report("t1", {"temperature": 20.0})  # the same origin's next change still applies
    result = cloud.apply_batch(node=edge.node, origin=edge.origin, records=edge.take())
    assert (result.applied, result.rejected) == (4, 1)
    assert result.to_json() == {"applied": 4, "duplicates": 0, "rejected": 1}
    lamp, thermostat = cloud.device((NODE, "l1")), cloud.device((NODE, "t1"))
    assert lamp is not None
    assert thermostat is not None
    assert lamp.replica.twin.desired.values == {"on": True}
    assert thermostat.replica.twin.desired.values == {}
    assert thermostat.replica.twin.reported.values == {"temperature": 20.0}
    assert thermostat.sync_error is not None
    assert "local control" in thermostat.sync_error
    assert [(w.device, w.keys, w.refused) for w in result.desired_writes] == [
        ("l1", ("on",), None),
        ("t1", ("setpoint",), "local_control_not_allowed"),
    ]
    cloud.store.close()


def test_edge_desired_writes_are_audited_as_the_node(tmp_path: Path) -> None:
    cloud = cloud_with_lamp(tmp_path)
    links = EdgeTwinLinks(cloud)
    audit = AuditList()
    links.audit = audit
    link = _Link(stream=cast("TunnelStream", None), node=NODE, cloud=cloud, links=links)
    link._audit_edge_write(EdgeDesiredWrite(device="l1", change="o#3", keys=("on",)))
    link._audit_edge_write(
        EdgeDesiredWrite(
            device="t1", change="o#4", keys=("x",), refused="local_control_not_allowed"
        )
    )
    first, second = audit.records
    assert (first.user, first.role, first.status, first.target) == (
        f"node:{NODE}",
        "local-control",
        200,
        f"{NODE}:l1",
    )
    assert (second.status, second.reason) == (403, "local_control_not_allowed")
    link.close()
    cloud.store.close()


def deliver_downlink(cloud: CloudTwinReplica, edge: EdgeSim, device: str) -> None:
    """The cloud's queued changes for `device`, applied on the edge in order."""
    rows = cloud.store.downlink_after(NODE, 0, 100)
    for row in rows:
        body = json.loads(row.body)
        if body.get("device") == device and "change" in body:
            change = TwinChange.from_json(body["change"])
            edge.replicas[device] = apply_change(edge.replicas[device], change).replica
    cloud.downlink_done([row.id for row in rows])


@settings(max_examples=60, deadline=None)
@given(
    edge_values=st.lists(st.integers(0, 100), min_size=1, max_size=4),
    cloud_values=st.lists(st.integers(0, 100), max_size=3),
    cloud_first=st.booleans(),
)
def test_after_an_outage_the_cloud_wins_brightness_and_both_sides_agree(
    tmp_path_factory: pytest.TempPathFactory,
    *,
    edge_values: list[int],
    cloud_values: list[int],
    cloud_first: bool,
) -> None:
    """Edge applies HA commands locally during a cut, the cloud may write too: converge."""
    cloud = cloud_with_lamp(tmp_path_factory.mktemp("cloud"))
    edge = EdgeSim()
    edge.onboard("l1", "lamp")
    cloud.apply_batch(node=edge.node, origin=edge.origin, records=edge.take())
    # the outage: each side writes on its own, nothing crosses
    for value in edge_values:
        edge.write("l1", Section.DESIRED, {"brightness": value})
    edge.write("l1", Section.DESIRED, {"on": True})  # a key only the edge wrote
    for value in cloud_values:
        cloud.write((NODE, "l1"), Section.DESIRED, {"brightness": value})
    # the link returns: both queues drain, in either order
    if cloud_first:
        deliver_downlink(cloud, edge, "l1")
        cloud.apply_batch(node=edge.node, origin=edge.origin, records=edge.take())
    else:
        cloud.apply_batch(node=edge.node, origin=edge.origin, records=edge.take())
        deliver_downlink(cloud, edge, "l1")
    row = cloud.device((NODE, "l1"))
    assert row is not None
    expected = cloud_values[-1] if cloud_values else edge_values[-1]
    assert row.replica.twin.desired.values == {"brightness": expected, "on": True}
    assert edge.replicas["l1"].twin.desired.values == row.replica.twin.desired.values
    cloud.store.close()
