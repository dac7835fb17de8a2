"""HA discovery end to end: a real server, agent and mosquitto; HA's view read from the broker.

A thermostat and a relay are onboarded through the claim flow; a separate MQTT client with the
broker role docs/home-assistant.md gives Home Assistant reads the retained discovery configs,
the device state a report produces, and sees a revoked device's configs deleted (empty retained
payloads), while the other device's stay.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiomqtt

from tests.harness import mqtt
from tests.harness.waiting import eventually_async
from tests.integration.twins_e2e.conftest import NODE, READY_TIMEOUT, System

PREFIX = "homeassistant"
# Device ids are broker-wide and the dynsec broker is shared by the session: ids of our own,
# so a device left registered here never belongs to another module's node.
THERMO = "ha-thermo-1"
RELAY = "ha-relay-1"
HA_ACLS = [
    ("subscribePattern", f"{PREFIX}/#"),
    ("publishClientReceive", f"{PREFIX}/#"),
    ("subscribePattern", "edgefleet/devices/+/twin/state"),
    ("publishClientReceive", "edgefleet/devices/+/twin/state"),
    ("subscribePattern", "edgefleet/devices/+/ha/command"),
    ("publishClientReceive", "edgefleet/devices/+/ha/command"),
    ("subscribePattern", "edgefleet/devices/+/availability"),
    ("publishClientReceive", "edgefleet/devices/+/availability"),
    ("subscribePattern", "edgefleet/agent/availability"),
    ("publishClientReceive", "edgefleet/agent/availability"),
    ("publishClientSend", "edgefleet/ha/+/+/set/+"),
    ("publishClientSend", f"{PREFIX}/status"),
]
"""The role docs/home-assistant.md gives Home Assistant's broker user."""


def config_topic(component: str, device: str, name: str) -> str:
    return f"{PREFIX}/{component}/edgefleet_{NODE}/{device}_{name}/config"


async def make_ha_user(broker: mqtt.Broker) -> tuple[str, str]:
    username, password = f"ha-{secrets.token_hex(4)}", secrets.token_urlsafe(16)
    role = f"{username}-role"
    answer = await broker.dynsec_command({"command": "createRole", "rolename": role})
    assert "error" not in answer, answer
    for acltype, topic in HA_ACLS:
        command = {
            "command": "addRoleACL",
            "rolename": role,
            "acltype": acltype,
            "topic": topic,
            "allow": True,
        }
        answer = await broker.dynsec_command(command)
        assert "error" not in answer, answer
    answer = await broker.dynsec_command(
        {
            "command": "createClient",
            "username": username,
            "password": password,
            "roles": [{"rolename": role}],
        }
    )
    assert "error" not in answer, answer
    return username, password


class BrokerView:
    """What a subscriber to some filters has seen last on each topic (b"" = deleted)."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.latest: dict[str, bytes] = {}
        self.changed = asyncio.Event()

    async def run(self) -> None:
        async for message in self.client.messages:
            payload = message.payload
            assert isinstance(payload, bytes)
            self.latest[str(message.topic)] = payload
            self.changed.set()

    async def until(self, predicate: Callable[[dict[str, bytes]], bool], what: str) -> None:
        try:
            async with asyncio.timeout(READY_TIMEOUT):
                while not predicate(self.latest):
                    self.changed.clear()
                    await self.changed.wait()
        except TimeoutError:
            raise AssertionError(f"not seen within {READY_TIMEOUT} s: {what}") from None

    def config(self, topic: str) -> dict[str, Any]:
        body: dict[str, Any] = json.loads(self.latest[topic])
        return body


@asynccontextmanager
async def ha_view(system: System, user: tuple[str, str]) -> AsyncIterator[BrokerView]:
    client = system.broker.client(
        username=user[0], password=user[1], identifier=f"ha-{secrets.token_hex(4)}"
    )
    async with client:
        await client.subscribe([(f"{PREFIX}/#", 1), ("edgefleet/devices/+/twin/state", 1)])
        view = BrokerView(client)
        async with asyncio.TaskGroup() as group:
            reader = group.create_task(view.run(), name="ha-view.reader")
            yield view
            reader.cancel()


async def metric(system: System, name: str) -> float:
    url = f"http://127.0.0.1:{system.agent.local_api_port}/metrics"
    async with system.http.get(url) as answer:
        text = await answer.text()
    for line in text.splitlines():
        if line.startswith((f"{name} ", f"{name}_total ")):
            return float(line.split()[-1])
    return -1.0


async def test_thermostat_and_relay_show_in_ha_and_a_revoked_device_goes(system: System) -> None:
    user = await make_ha_user(system.broker)
    thermo = await system.claim(THERMO, "thermostat")
    await system.claim(RELAY, "relay-switch")
    await system.wait_device(THERMO)
    await system.wait_device(RELAY)
    wanted = {
        config_topic("sensor", THERMO, "temperature"),
        config_topic("number", THERMO, "setpoint"),
        config_topic("select", THERMO, "mode"),
        config_topic("binary_sensor", THERMO, "heating"),
        config_topic("switch", RELAY, "on"),
        f"{PREFIX}/binary_sensor/edgefleet_{NODE}/agent/config",
    }
    async with ha_view(system, user) as view:
        await view.until(lambda seen: wanted <= seen.keys(), "the discovery configs")

        temperature = view.config(config_topic("sensor", THERMO, "temperature"))
        assert temperature["unique_id"] == f"edgefleet_{NODE}_{THERMO}_temperature"
        assert temperature["unit_of_measurement"] == "°C"
        assert temperature["device_class"] == "temperature"
        assert temperature["state_class"] == "measurement"
        assert temperature["state_topic"] == f"edgefleet/devices/{THERMO}/twin/state"
        assert "command_topic" not in temperature
        assert temperature["availability"] == [
            {"topic": f"edgefleet/devices/{THERMO}/availability"},
            {"topic": "edgefleet/agent/availability"},
        ]
        assert temperature["device"] == {
            "identifiers": [f"edgefleet_{NODE}_{THERMO}"],
            "name": THERMO,
            "model": "thermostat",
            "manufacturer": "EdgeFleet",
            "sw_version": "1.0.0",
            "via_device": f"edgefleet_{NODE}",
        }
        setpoint = view.config(config_topic("number", THERMO, "setpoint"))
        assert (setpoint["min"], setpoint["max"], setpoint["step"]) == (5, 30, 0.5)
        assert setpoint["command_topic"] == f"edgefleet/ha/{NODE}/{THERMO}/set/setpoint"
        mode = view.config(config_topic("select", THERMO, "mode"))
        assert mode["options"] == ["off", "heat", "cool", "auto"]
        relay = view.config(config_topic("switch", RELAY, "on"))
        assert relay["command_topic"] == f"edgefleet/ha/{NODE}/{RELAY}/set/on"
        assert relay["device"]["model"] == "relay-switch"

        # A report shows in the retained state HA's templates read.
        async with system.device(thermo) as device:
            answer = await device.report({"temperature": 21.5, "mode": "heat"})
            assert answer["code"] == 200, answer
        state_topic = f"edgefleet/devices/{THERMO}/twin/state"
        await view.until(
            lambda seen: json.loads(seen.get(state_topic) or b"{}").get("version") == 1,
            "the thermostat's state",
        )
        assert json.loads(view.latest[state_topic]) == {
            "version": 1,
            "reported": {"temperature": 21.5, "mode": "heat"},
        }

        # A command from HA goes to the cloud (test_commands.py follows it to the device).
        await view.client.publish(f"edgefleet/ha/{NODE}/{RELAY}/set/on", b"ON", qos=1)
        await eventually_async(
            lambda: metric(system, "edge_agent_twins_home_assistant_commands_accepted"),
            lambda value: value == 1.0,
            what="the command accepted by the cloud",
            within=READY_TIMEOUT,
        )

        # Revoked: every config of the relay becomes an empty retained payload.
        relay_topics = {topic for topic in view.latest if f"/{RELAY}_" in topic}
        assert len(relay_topics) == 4  # on, powerOnState, switchCount, "Last command"
        status, body = await system.api(
            "POST", f"/api/v1/devices/{NODE}:{RELAY}/revoke", {"twin": "keep"}
        )
        assert status == 200, body
        await view.until(
            lambda seen: all(seen[topic] == b"" for topic in relay_topics), "relay cleared"
        )
        assert view.latest[state_topic]  # the thermostat is untouched

    # A fresh subscriber (HA restarting) gets the thermostat's configs and none of the relay's.
    async with ha_view(system, user) as fresh:
        await fresh.until(lambda seen: wanted - relay_topics <= seen.keys(), "retained configs")
        await asyncio.sleep(0)  # let retained messages already received land
        assert not [topic for topic in fresh.latest if f"/{RELAY}_" in topic]
