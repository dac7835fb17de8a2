"""Our agent's discovery in a real Home Assistant core (issue 20, part 1).

The twins system of this folder (real server, agent with ``home_assistant = true``, mosquitto
with dynamic security) and a real Home Assistant (scripts/homeassistant-build) whose broker
user has the role docs/home-assistant.md gives it. After a thermostat and a relay are
onboarded, HA's own registries must list both devices, behind the agent's node, with their
model and manufacturer, and each property as the entity the mapping table names, with its
unit; a report from the device becomes the entity's state; turning the relay's switch on in
HA reaches the device through the cloud (a desired patch, desired ``$version`` + 1), and HA's
switch shows "on" only once the device reports it; a revoked device leaves HA.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import sync_playwright

from edge_agent.twins.simulator import DeviceCredential
from edge_agent.twins.topics import Op
from tests.harness import homeassistant
from tests.harness.waiting import eventually_async
from tests.integration.console.conftest import CHROMIUM, CHROMIUM_ARGS
from tests.integration.home_assistant_discovery.test_discovery import (
    RELAY,
    THERMO,
    make_ha_user,
)
from tests.integration.twins_e2e.conftest import NODE, System

# Home Assistant starts inside the test: tens of seconds on two busy cores.
pytestmark = [pytest.mark.mqtt, pytest.mark.homeassistant, pytest.mark.timeout(900)]

WITHIN = 120.0  # a guard against hangs on two busy cores, not a measurement


def unique_id(device: str, prop: str) -> str:
    return f"edgefleet_{NODE}_{device}_{prop}"


async def registry(ha: homeassistant.HomeAssistant) -> dict[str, dict[str, Any]]:
    """HA's MQTT entities by unique_id."""
    entries = await asyncio.to_thread(ha.entity_registry)
    return {e["unique_id"]: e for e in entries if e["platform"] == "mqtt"}


def device_page(ha: homeassistant.HomeAssistant, device_id: str, node: str, shot: Path) -> None:
    """HA's own device page in Chromium shows the device, its node and a live state.

    The frontend takes our long-lived token the way it keeps its own (``hassTokens`` in local
    storage), so no login form is filled in. A screenshot goes to ``shot``, even on failure.
    """
    tokens = {
        "access_token": ha.token,
        "token_type": "Bearer",
        "expires_in": 86400,
        "expires": int(time.time() * 1000) + 86_400_000,
        "hassUrl": ha.url,
        "clientId": f"{ha.url}/",
        "refresh_token": "",
    }
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.add_init_script(
                f"window.localStorage.setItem('hassTokens', {json.dumps(json.dumps(tokens))});"
            )
            page.goto(f"{ha.url}/config/devices/device/{device_id}")
            try:
                # Locators pierce HA's shadow DOM; each wait fails the test if it never shows.
                for text in ("by EdgeFleet", "thermostat", node, "Temperature"):
                    page.get_by_text(text, exact=True).first.wait_for(timeout=WITHIN * 1000)
                # HA 2025 puts a no-break space between a value and its unit, 2024.3 a space.
                page.get_by_text(re.compile(r"21\.5\s*°C")).first.wait_for(timeout=WITHIN * 1000)
            finally:
                page.screenshot(path=str(shot))
        finally:
            browser.close()


async def switch_on_through_the_cloud(
    system: System,
    ha: homeassistant.HomeAssistant,
    entities: dict[str, dict[str, Any]],
    relay_credential: DeviceCredential,
) -> None:
    """HA's switch -> the agent -> the cloud (desired) -> the device; HA follows the report."""
    switch = entities[unique_id(RELAY, "on")]["entity_id"]
    desired_before = (await system.cloud_twin(RELAY))["desired"]["$version"]
    async with system.device(relay_credential, timeout=WITHIN) as relay_device:
        await asyncio.to_thread(ha.call_service, "switch", "turn_on", {"entity_id": switch})
        message = await relay_device.wait_for(Op.DESIRED)
        assert message["patch"] == {"on": True}
        twin = await system.cloud_twin(RELAY)
        assert twin["desired"]["$version"] == desired_before + 1
        assert twin["desired"]["on"] is True
        before_report = await asyncio.to_thread(ha.state, switch)
        assert before_report is not None
        assert before_report["state"] != "on"  # not optimistic: the device has not said so
        answer = await relay_device.report({"on": True})
        assert answer["code"] == 200, answer
        await eventually_async(
            lambda: asyncio.to_thread(ha.state, switch),
            lambda s: (s or {}).get("state") == "on",
            what="HA's switch on once the relay reported it",
            within=WITHIN,
        )
    # HA's "Last command" sensor of the relay says what became of it.
    found = await registry(ha)
    last_command = found[unique_id(RELAY, "ha-last-command")]["entity_id"]
    shown = await eventually_async(
        lambda: asyncio.to_thread(ha.state, last_command),
        lambda s: (s or {}).get("state") == "accepted",
        what="the relay's Last command accepted in HA",
        within=WITHIN,
    )
    assert shown is not None
    assert shown["attributes"]["property"] == "on"


async def test_devices_entities_states_and_a_revoked_device_in_home_assistant(
    system: System, tmp_path: Path
) -> None:
    user = await make_ha_user(system.broker)
    ha = await asyncio.to_thread(
        homeassistant.start, tmp_path / "ha", system.broker, username=user[0], password=user[1]
    )
    try:
        thermo = await system.claim(THERMO, "thermostat")
        relay_credential = await system.claim(RELAY, "relay-switch")
        await system.wait_device(THERMO)
        await system.wait_device(RELAY)

        wanted = {
            unique_id(THERMO, "temperature"): "sensor.",
            unique_id(THERMO, "setpoint"): "number.",
            unique_id(THERMO, "mode"): "select.",
            unique_id(THERMO, "heating"): "binary_sensor.",
            unique_id(RELAY, "on"): "switch.",
        }
        entities = await eventually_async(
            lambda: registry(ha),
            lambda found: wanted.keys() <= found.keys(),
            what="our entities in HA's entity registry",
            within=WITHIN,
        )
        for uid, domain in wanted.items():
            assert entities[uid]["entity_id"].startswith(domain), entities[uid]

        devices = {
            identifier[1]: d
            for d in await asyncio.to_thread(ha.devices)
            for identifier in d["identifiers"]
            if identifier[0] == "mqtt"
        }
        node = devices[f"edgefleet_{NODE}"]
        thermostat = devices[f"edgefleet_{NODE}_{THERMO}"]
        relay = devices[f"edgefleet_{NODE}_{RELAY}"]
        assert (thermostat["model"], thermostat["manufacturer"]) == ("thermostat", "EdgeFleet")
        assert relay["model"] == "relay-switch"
        assert thermostat["via_device_id"] == node["id"]
        assert relay["via_device_id"] == node["id"]
        assert entities[unique_id(THERMO, "temperature")]["device_id"] == thermostat["id"]
        assert entities[unique_id(RELAY, "on")]["device_id"] == relay["id"]

        temperature = entities[unique_id(THERMO, "temperature")]["entity_id"]
        mode = entities[unique_id(THERMO, "mode")]["entity_id"]
        async with system.device(thermo) as device:
            answer = await device.report({"temperature": 21.5, "mode": "heat"})
            assert answer["code"] == 200, answer
            state = await eventually_async(
                lambda: asyncio.to_thread(ha.state, temperature),
                lambda s: (s or {}).get("state") == "21.5",
                what="the reported temperature as the sensor's state in HA",
                within=WITHIN,
            )
            assert state is not None
            assert state["attributes"]["unit_of_measurement"] == "°C"
            assert state["attributes"]["device_class"] == "temperature"
            assert state["attributes"]["state_class"] == "measurement"
            select = await asyncio.to_thread(ha.state, mode)
            assert select is not None
            assert select["state"] == "heat"
            assert select["attributes"]["options"] == ["off", "heat", "cool", "auto"]

            # What an operator sees, while the device is online: HA's device page in Chromium.
            shot = tmp_path / "ha-device-page.png"
            await asyncio.to_thread(device_page, ha, thermostat["id"], NODE, shot)
            if copy_to := os.environ.get("EDGEFLEET_HA_SCREENSHOT"):  # docs/home-assistant.md
                shutil.copyfile(shot, copy_to)

        await switch_on_through_the_cloud(system, ha, entities, relay_credential)

        status, body = await system.api(
            "POST", f"/api/v1/devices/{NODE}:{RELAY}/revoke", {"twin": "keep"}
        )
        assert status == 200, body
        left = await eventually_async(
            lambda: registry(ha),
            lambda found: unique_id(RELAY, "on") not in found,
            what="the revoked relay's entities gone from HA",
            within=WITHIN,
        )
        assert unique_id(THERMO, "temperature") in left
        assert ha.install_attempts() == []
    finally:
        await asyncio.to_thread(ha.stop)
