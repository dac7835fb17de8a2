"""The Home Assistant harness works: a real Home Assistant core on a real mosquitto.

Discovery config is published by hand here (the agent's own discovery comes with issue 20's
end-to-end test): a retained ``sensor`` (°C, device_class temperature) and a ``switch``, both
on one device. Home Assistant must list them with unit and state, register the device with its
model and manufacturer, publish the switch's command when ``switch.turn_on`` is called, drop
an entity when its config is emptied, and never try to pip-install anything while doing it.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from typing import Any

import pytest

from tests.harness.homeassistant import HomeAssistant
from tests.harness.mqtt import Broker
from tests.harness.waiting import eventually_async

# The session's Home Assistant starts inside the first test's setup: minutes on busy cores.
pytestmark = [pytest.mark.mqtt, pytest.mark.timeout(900)]

WITHIN = 90.0  # a guard against hangs on two busy cores, not a measurement


async def _entity_id(ha: HomeAssistant, unique_id: str) -> str:
    """The entity id Home Assistant gave the MQTT entity with this unique_id."""

    async def probe() -> list[str]:
        registry = await asyncio.to_thread(ha.entity_registry)
        return [
            e["entity_id"]
            for e in registry
            if e["platform"] == "mqtt" and e.get("unique_id") == unique_id
        ]

    found = await eventually_async(
        probe, what=f"an MQTT entity with unique_id {unique_id}", within=WITHIN
    )
    return found[0]


async def _state(ha: HomeAssistant, entity_id: str) -> dict[str, Any] | None:
    return await asyncio.to_thread(ha.state, entity_id)


async def test_discovery_entities_device_command_and_removal(
    home_assistant: HomeAssistant, mqtt_broker: Broker
) -> None:
    ha = home_assistant
    node = f"harness{secrets.token_hex(4)}"
    device = {
        "identifiers": [f"edgefleet-{node}"],
        "name": f"Thermostat {node}",
        "model": "TH-100",
        "manufacturer": "EdgeFleet Test Works",
    }
    base = f"edgefleet-test/{node}"
    sensor_config: dict[str, Any] = {
        "name": "Temperature",
        "unique_id": f"{node}-temperature",
        "state_topic": f"{base}/temperature",
        "unit_of_measurement": "°C",
        "device_class": "temperature",
        "state_class": "measurement",
        "device": device,
    }
    switch_config: dict[str, Any] = {
        "name": "Relay",
        "unique_id": f"{node}-relay",
        "state_topic": f"{base}/relay",
        "command_topic": f"{base}/relay/set",
        "payload_on": "ON",
        "payload_off": "OFF",
        "device": device,
    }
    sensor_topic = f"homeassistant/sensor/{node}/temperature/config"
    switch_topic = f"homeassistant/switch/{node}/relay/config"

    async with mqtt_broker.client(identifier=f"ha-harness-{node}") as client:
        await client.subscribe(switch_config["command_topic"], qos=1)
        await client.publish(sensor_topic, json.dumps(sensor_config), qos=1, retain=True)
        await client.publish(switch_topic, json.dumps(switch_config), qos=1, retain=True)

        sensor_id = await _entity_id(ha, sensor_config["unique_id"])
        switch_id = await _entity_id(ha, switch_config["unique_id"])
        assert sensor_id.startswith("sensor.")
        assert switch_id.startswith("switch.")

        # Retained, as a device's state is: HA may subscribe to the state topic after the
        # entity is in its registry, and a retained state reaches it whenever it does.
        await client.publish(sensor_config["state_topic"], "21.5", qos=1, retain=True)
        await client.publish(switch_config["state_topic"], "OFF", qos=1, retain=True)

        async def both_states() -> tuple[str | None, str | None]:
            sensor, switch = await _state(ha, sensor_id), await _state(ha, switch_id)
            return (sensor or {}).get("state"), (switch or {}).get("state")

        await eventually_async(
            both_states, lambda s: s == ("21.5", "off"), what="the states in HA", within=WITHIN
        )
        states = {s["entity_id"]: s for s in await asyncio.to_thread(ha.states)}
        assert states[sensor_id]["attributes"]["unit_of_measurement"] == "°C"
        assert states[sensor_id]["attributes"]["device_class"] == "temperature"
        assert states[sensor_id]["attributes"]["state_class"] == "measurement"
        assert states[switch_id]["state"] == "off"

        devices = [
            d
            for d in await asyncio.to_thread(ha.devices)
            if ["mqtt", f"edgefleet-{node}"] in d["identifiers"]
        ]
        assert len(devices) == 1, devices
        assert devices[0]["model"] == "TH-100"
        assert devices[0]["manufacturer"] == "EdgeFleet Test Works"
        assert devices[0]["name"] == f"Thermostat {node}"
        by_entity = {e["entity_id"]: e for e in await asyncio.to_thread(ha.entity_registry)}
        assert by_entity[sensor_id]["device_id"] == devices[0]["id"]
        assert by_entity[switch_id]["device_id"] == devices[0]["id"]

        # HA publishes the command and (not optimistic: it has a state topic) waits for the
        # device's report before it shows "on".
        await asyncio.to_thread(ha.call_service, "switch", "turn_on", {"entity_id": switch_id})
        async with asyncio.timeout(WITHIN):
            async for message in client.messages:
                if str(message.topic) == switch_config["command_topic"]:
                    assert message.payload == b"ON"
                    break
        assert (await _state(ha, switch_id) or {}).get("state") == "off"
        await client.publish(switch_config["state_topic"], "ON", qos=1, retain=True)
        await eventually_async(
            lambda: _state(ha, switch_id),
            lambda s: (s or {}).get("state") == "on",
            what="the switch on after the device reported it",
            within=WITHIN,
        )

        # An empty retained config removes the entity (and its registry entry).
        await client.publish(sensor_topic, b"", qos=1, retain=True)
        await eventually_async(
            lambda: _state(ha, sensor_id),
            lambda s: s is None,
            what=f"{sensor_id} gone from HA's states",
            within=WITHIN,
        )
        registry = await asyncio.to_thread(ha.entity_registry)
        assert sensor_id not in {e["entity_id"] for e in registry}
        assert switch_id in {e["entity_id"] for e in registry}
        # Leave nothing retained behind for later tests on the session's broker.
        for topic in (switch_topic, sensor_config["state_topic"], switch_config["state_topic"]):
            await client.publish(topic, b"", qos=1, retain=True)

    assert ha.install_attempts() == []
