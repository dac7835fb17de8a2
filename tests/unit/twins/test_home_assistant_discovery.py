"""HomeAssistantDiscovery on a real EdgeTwinReplica and store, with a recording publisher."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from device_models import DeviceModel
from device_models.sync_requests import DesiredAnswer, RequestRefusedError
from edge_agent import config
from edge_agent.twins import dynsec, topics
from edge_agent.twins.home_assistant import HomeAssistantDiscovery, HomeAssistantSettings
from edge_agent.twins.replica import EdgeTwinReplica
from edge_agent.twins.twin_store import DeviceRecord, DeviceState, TwinStore
from tests.unit.twins.test_replica_unit import reported, service


class Recorder:
    """A publisher that keeps what a broker would retain (an empty payload deletes)."""

    def __init__(self) -> None:
        self.retained: dict[str, bytes] = {}
        self.sent: list[tuple[str, bytes]] = []
        self.fail = False

    async def publish(self, topic: str, payload: bytes, *, retain: bool) -> None:
        assert retain
        if self.fail:
            raise aiomqtt.MqttError("connection lost")
        self.sent.append((topic, payload))
        if payload:
            self.retained[topic] = payload
        else:
            self.retained.pop(topic, None)

    def configs(self) -> dict[str, dict[str, Any]]:
        return {
            topic: json.loads(body)
            for topic, body in self.retained.items()
            if topic.startswith("homeassistant/")
        }


async def onboard(twins: EdgeTwinReplica, store: TwinStore, device_id: str, model: str) -> None:
    record = DeviceRecord(
        device_id=device_id,
        model=model,
        state=DeviceState.ACTIVE,
        created=1.0,
        replica=store.new_replica(),
    )
    await twins.commit_device(record, outbox=[])


def discovery(twins: EdgeTwinReplica, **kwargs: Any) -> tuple[HomeAssistantDiscovery, Recorder]:
    found = HomeAssistantDiscovery(
        settings=HomeAssistantSettings(enabled=True, **kwargs), node="edge-1", twins=twins
    )
    recorder = Recorder()
    found.attach(recorder)
    return found, recorder


async def test_devices_appear_update_state_and_disappear(tmp_path: Path) -> None:
    twins, store = service(tmp_path)
    await onboard(twins, store, "t1", "thermostat")
    ha, broker = discovery(twins)
    await ha.republish()
    configs = broker.configs()
    assert "homeassistant/binary_sensor/edgefleet_edge-1/agent/config" in configs
    setpoint = configs["homeassistant/number/edgefleet_edge-1/t1_setpoint/config"]
    assert setpoint["state_topic"] == "edgefleet/devices/t1/twin/state"
    assert setpoint["command_topic"] == "edgefleet/ha/edge-1/t1/set/setpoint"
    # temperature, heating, setpoint, mode, firmware and "Last command"; schedule skipped
    assert ha.entities == 6
    last = configs["homeassistant/sensor/edgefleet_edge-1/t1_ha-last-command/config"]
    assert last["state_topic"] == "edgefleet/devices/t1/ha/command"
    assert ha.skipped == 1
    assert json.loads(broker.retained["edgefleet/devices/t1/twin/state"]) == {
        "version": 0,
        "reported": {},
    }

    await twins.handle_batch([reported("t1", {"rid": "a", "patch": {"temperature": 21.5}})])
    await ha.refresh(["t1"])
    assert json.loads(broker.retained["edgefleet/devices/t1/twin/state"]) == {
        "version": 1,
        "reported": {"temperature": 21.5},
    }
    sent = len(broker.sent)
    await ha.refresh(["t1"])  # nothing changed: nothing sent
    assert len(broker.sent) == sent

    await onboard(twins, store, "r1", "relay-switch")
    await ha.reconcile()
    assert "homeassistant/switch/edgefleet_edge-1/r1_on/config" in broker.configs()

    await twins.remove_device("t1")
    await ha.reconcile()
    left = broker.configs()
    assert not [topic for topic in left if "/t1_" in topic]
    assert "edgefleet/devices/t1/twin/state" not in broker.retained
    assert "homeassistant/switch/edgefleet_edge-1/r1_on/config" in left


@pytest.mark.parametrize("noticed_by", ["refresh", "reconcile"])
async def test_a_new_model_version_republishes_and_clears_removed_properties(
    tmp_path: Path, noticed_by: str
) -> None:
    twins, store = service(tmp_path)
    await onboard(twins, store, "t1", "thermostat")
    ha, broker = discovery(twins)
    await ha.republish()
    assert "homeassistant/sensor/edgefleet_edge-1/t1_firmware/config" in broker.configs()
    old = twins.models.get("thermostat")
    assert old is not None
    data = old.to_dict()
    props = [p for p in data["properties"] if p["name"] != "firmware"]  # type: ignore[attr-defined]
    props.append({"name": "valve", "type": "int", "unit": "%", "min": 0, "max": 100})
    twins.models.offer(DeviceModel.from_dict({**data, "version": "2.0.0", "properties": props}))
    await (ha.refresh(["t1"]) if noticed_by == "refresh" else ha.reconcile())
    configs = broker.configs()
    assert "homeassistant/sensor/edgefleet_edge-1/t1_firmware/config" not in configs
    valve = configs["homeassistant/sensor/edgefleet_edge-1/t1_valve/config"]
    assert valve["device"]["sw_version"] == "2.0.0"


async def test_a_lost_session_leaves_the_work_to_the_next_republish(tmp_path: Path) -> None:
    twins, store = service(tmp_path)
    await onboard(twins, store, "t1", "relay-switch")
    ha, broker = discovery(twins)
    await ha.republish()
    await twins.remove_device("t1")
    broker.fail = True
    await ha.reconcile()  # fails: the device is still remembered as shown
    assert ha.metrics.publish_failures == 1
    broker.fail = False
    await ha.republish()
    assert not [topic for topic in broker.configs() if "/t1_" in topic]


async def test_devices_whose_ids_slug_alike_do_not_share_entities(tmp_path: Path) -> None:
    twins, store = service(tmp_path)
    await onboard(twins, store, "a_b", "relay-switch")
    await onboard(twins, store, "a.b", "relay-switch")
    ha, broker = discovery(twins)
    await ha.republish()
    switches = [topic for topic in broker.configs() if "/switch/" in topic]
    assert len(switches) == 2


async def test_off_means_silent(tmp_path: Path) -> None:
    twins, store = service(tmp_path)
    await onboard(twins, store, "t1", "thermostat")
    ha = HomeAssistantDiscovery(settings=HomeAssistantSettings(), node="edge-1", twins=twins)
    recorder = Recorder()
    ha.attach(recorder)
    await ha.republish()
    await ha.reconcile()
    await ha.refresh(["t1"])
    assert recorder.sent == []


async def test_commands_without_a_cloud_link_are_refused_and_shown(tmp_path: Path) -> None:
    twins, store = service(tmp_path)
    await onboard(twins, store, "t1", "thermostat")
    ha, broker = discovery(twins)  # no forwarder: no sync link to the cloud
    ha.command("t1", "setpoint", b"21.5")
    await ha.forward_next()
    assert ha.metrics.commands_refused == 1
    state = json.loads(broker.retained["edgefleet/devices/t1/ha/command"])
    assert state["state"] == "refused: cloud unreachable"
    assert state["property"] == "setpoint"


def test_command_topics_parse_only_for_this_node() -> None:
    assert topics.parse_ha_command("edge-1", "edgefleet/ha/edge-1/t1/set/setpoint") == (
        "t1",
        "setpoint",
    )
    for topic in (
        "edgefleet/ha/edge-2/t1/set/setpoint",
        "edgefleet/ha/edge-1/t1/set/set/point",
        "edgefleet/ha/edge-1/t 1/set/x",
        "edgefleet/ha/edge-1/t1/get/x",
        "edgefleet/ha/edge-1/t1/set/1x",
    ):
        assert topics.parse_ha_command("edge-1", topic) is None
    assert topics.agent_subscriptions("edge-1", home_assistant=True)[-1] == (
        "edgefleet/ha/edge-1/+/set/+"
    )
    assert "edgefleet/ha/edge-1/+/set/+" not in topics.agent_subscriptions("edge-1")
    assert topics.parse_device_topic(topics.state_topic("t1")) is None  # not a device's to send


def test_the_agent_role_may_write_the_discovery_prefix_only_when_on() -> None:
    sends = [
        acl.topic
        for acl in dynsec.agent_acls("homeassistant")
        if acl.acltype == "publishClientSend"
    ]
    assert "homeassistant/#" in sends
    assert all("homeassistant" not in acl.topic for acl in dynsec.agent_acls())


def test_settings_refuse_a_bad_prefix() -> None:
    with pytest.raises(ValueError, match="home_assistant_prefix"):
        HomeAssistantSettings(prefix="home/+")


def test_the_twins_table_takes_home_assistant_keys(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text('[twins]\nhome_assistant = true\nhome_assistant_prefix = "site/ha"\n')
    twins = config.load(path).twins
    assert (twins.home_assistant, twins.home_assistant_prefix) == (True, "site/ha")
    path.write_text('[twins]\nhome_assistant_prefix = "ha/#"\n')
    with pytest.raises(config.ConfigError, match="home_assistant_prefix"):
        config.load(path)
    (tmp_path / "pw").write_text("x\n")
    path.write_text(
        "[twins]\nenabled = true\nhome_assistant = true\n"
        f'admin_password_file = "{tmp_path / "pw"}"\n'
        f'claim_password_file = "{tmp_path / "pw"}"\n'
    )
    settings = config.twins_settings(config.load(path).twins, data_dir=tmp_path, node_name="n")
    assert (settings.home_assistant, settings.home_assistant_prefix) == (True, "homeassistant")


class ScriptedCloud:
    """A sync link whose answers a test gives in advance; records what it was asked."""

    def __init__(self, *answers: DesiredAnswer | Exception) -> None:
        self.answers = list(answers)
        self.asked: list[tuple[str, dict[str, Any], str]] = []
        self.connected = True

    async def request_desired(
        self, device: str, patch: dict[str, Any], *, source: str
    ) -> DesiredAnswer:
        self.asked.append((device, patch, source))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


async def test_commands_are_forwarded_in_order_and_each_outcome_shown(tmp_path: Path) -> None:
    twins, store = service(tmp_path)
    await onboard(twins, store, "t1", "thermostat")
    cloud = ScriptedCloud(
        DesiredAnswer(id=1, accepted=True, version=1),
        DesiredAnswer(id=2, accepted=False, reason="busy: too many changes wait for the node"),
        RequestRefusedError("the cloud did not answer in time"),
        RuntimeError("a bug"),
    )
    ha = HomeAssistantDiscovery(
        settings=HomeAssistantSettings(enabled=True), node="edge-1", twins=twins, forwarder=cloud
    )
    broker = Recorder()
    ha.attach(broker)
    topic = "edgefleet/devices/t1/ha/command"
    shown: list[str] = []
    for payload in (b"21.5", b"22", b"23", b"24", b"99"):
        ha.command("t1", "setpoint", payload)
    for _ in range(5):
        await ha.forward_next()
        shown.append(json.loads(broker.retained[topic])["state"])
    assert cloud.asked == [
        ("t1", {"setpoint": value}, "home-assistant") for value in (21.5, 22.0, 23.0, 24.0)
    ]
    assert shown[:4] == [
        "accepted",
        "refused: busy: too many changes wait for the node",
        "refused: the cloud did not answer in time",
        "refused: the agent failed to forward it",
    ]
    assert shown[4].startswith("refused: setpoint: ")  # out of range: never asked
    sent = [json.loads(body)["state"] for t, body in broker.sent if t == topic]
    assert sent.count("sent") == 4
    assert ha.metrics.commands_accepted == 1
    assert ha.metrics.commands_forwarded == 2  # the two the cloud answered
    assert ha.metrics.commands_refused == 4


async def test_a_full_command_queue_refuses_at_once(tmp_path: Path) -> None:
    twins, store = service(tmp_path)
    await onboard(twins, store, "t1", "thermostat")
    ha, _ = discovery(twins, max_queued_commands=2)
    for _ in range(3):
        ha.command("t1", "setpoint", b"21")
    assert ha.metrics.commands_refused == 1
