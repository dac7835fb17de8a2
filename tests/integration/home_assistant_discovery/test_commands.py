"""HA commands end to end: HA's broker user -> agent -> cloud (desired) -> device -> HA's state.

A real server, agent and mosquitto (dynsec); the fault proxy between agent and server cuts
the link for the refusal case. A command is published exactly as Home Assistant publishes
it, by a broker user with the role docs/home-assistant.md gives HA; what HA would show is
read back from the broker (the "Last command" sensor's retained state, the twin state).
"""

from __future__ import annotations

import json
from typing import Any

from edge_agent.twins.topics import Op
from tests.harness.waiting import eventually_async
from tests.integration.home_assistant_discovery.test_discovery import (
    BrokerView,
    ha_view,
    make_ha_user,
    metric,
)
from tests.integration.twins_e2e.conftest import NODE, READY_TIMEOUT, System

# The broker outlives a test (retained messages too): each test has its own devices.
RELAY = "relay-7"
RELAY_CUT = "relay-8"
RELAY_RO = "relay-9"
THERMO = "thermo-7"


def command_topic(device: str, prop: str) -> str:
    return f"edgefleet/ha/{NODE}/{device}/set/{prop}"


def last_command_topic(device: str) -> str:
    return f"edgefleet/devices/{device}/ha/command"


async def last_command(view: BrokerView, device: str, state: str) -> dict[str, Any]:
    """Wait until the device's "Last command" says `state` (a prefix); its JSON."""
    topic = last_command_topic(device)

    def shown(seen: dict[str, bytes]) -> bool:
        body = seen.get(topic)
        return bool(body) and str(json.loads(body or b"{}").get("state", "")).startswith(state)

    await view.until(shown, f"'{state}' in {device}'s Last command")
    body: dict[str, Any] = json.loads(view.latest[topic])
    return body


async def watch(view: BrokerView, *devices: str) -> None:
    await view.client.subscribe([(last_command_topic(device), 1) for device in devices])


async def test_a_switch_command_reaches_the_device_through_the_cloud(system: System) -> None:
    user = await make_ha_user(system.broker)
    relay = await system.claim(RELAY, "relay-switch")
    await system.wait_device(RELAY)
    before = await system.cloud_twin(RELAY)
    desired_before = before["desired"]["$version"]
    reported_before = before["reported"]["$version"]
    async with ha_view(system, user) as view, system.device(relay, timeout=60.0) as device:
        await watch(view, RELAY)
        await view.client.publish(command_topic(RELAY, "on"), b"ON", qos=1)

        # The device gets it through the normal desired path, as the next desired version.
        message = await device.wait_for(Op.DESIRED)
        assert message["patch"] == {"on": True}
        assert message["version"] == desired_before + 1
        shown = await last_command(view, RELAY, "accepted")
        assert shown["property"] == "on"

        twin = await system.cloud_twin(RELAY)
        assert twin["desired"]["$version"] == desired_before + 1  # moved by exactly one
        assert twin["desired"]["on"] is True
        assert twin["reported"]["$version"] == reported_before  # nothing optimistic

        # HA's state changes only when the device reports it.
        state_topic = f"edgefleet/devices/{RELAY}/twin/state"
        assert (
            json.loads(view.latest.get(state_topic) or b"{}").get("reported", {}).get("on")
            is not True
        )
        answer = await device.report({"on": True})
        assert answer["code"] == 200, answer
        await view.until(
            lambda seen: (
                json.loads(seen.get(state_topic) or b"{}").get("reported", {}).get("on") is True
            ),
            "the reported state in HA's state topic",
        )
        twin = await system.cloud_twin(RELAY, reported=reported_before + 1)
        assert twin["reported"]["$version"] == reported_before + 1

    status, audit = await system.api("GET", f"/api/v1/audit?target={NODE}:{RELAY}")
    assert status == 200, audit
    records = [item for item in audit["items"] if item["user"] == f"node:{NODE}"]
    assert len(records) == 1, audit
    assert records[0]["role"] == "home-assistant"
    assert records[0]["action"] == "devices.twin.update"
    assert records[0]["status"] == 200
    assert await metric(system, "edge_agent_twins_home_assistant_commands_accepted") == 1.0
    assert await metric(system, "edge_agent_twins_home_assistant_commands_forwarded") == 1.0


async def test_with_the_link_cut_a_command_is_refused_not_queued(system: System) -> None:
    user = await make_ha_user(system.broker)
    await system.claim(RELAY_CUT, "relay-switch")
    await system.wait_device(RELAY_CUT)
    before = await system.cloud_twin(RELAY_CUT)
    async with ha_view(system, user) as view:
        await watch(view, RELAY_CUT)
        system.proxy.cut()
        await system.wait_edge(lambda s: not s["sync"]["connected"])
        await view.client.publish(command_topic(RELAY_CUT, "on"), b"ON", qos=1)
        shown = await last_command(view, RELAY_CUT, "refused")
        assert shown["state"] == "refused: cloud unreachable"
        system.proxy.restore()
        await system.wait_synced()
    # Back online, nothing of it arrives: desired never moved.
    twin = await system.cloud_twin(RELAY_CUT)
    assert twin["desired"]["$version"] == before["desired"]["$version"]
    assert "on" not in twin["desired"]
    assert await metric(system, "edge_agent_twins_home_assistant_commands_refused") == 1.0
    assert await metric(system, "edge_agent_twins_home_assistant_commands_forwarded") == 0.0


async def test_read_only_and_out_of_range_commands_are_refused_with_the_reason(
    system: System,
) -> None:
    user = await make_ha_user(system.broker)
    await system.claim(THERMO, "thermostat")
    await system.claim(RELAY_RO, "relay-switch")
    await system.wait_device(THERMO)
    await system.wait_device(RELAY_RO)
    before = await system.cloud_twin(THERMO)
    async with ha_view(system, user) as view:
        await watch(view, THERMO, RELAY_RO)
        # switchCount is read-only: HA has no command topic for it, but a client may publish.
        await view.client.publish(command_topic(RELAY_RO, "switchCount"), b"3", qos=1)
        shown = await last_command(view, RELAY_RO, "refused")
        assert shown["state"] == "refused: switchCount is read-only"
        # The setpoint's range is 5..30.
        await view.client.publish(command_topic(THERMO, "setpoint"), b"99", qos=1)
        shown = await last_command(view, THERMO, "refused")
        assert shown["property"] == "setpoint"
        assert "30" in shown["state"], shown
        # A select option that is not one.
        await view.client.publish(command_topic(THERMO, "mode"), b"turbo", qos=1)
        await view.until(
            lambda seen: json.loads(seen[last_command_topic(THERMO)])["property"] == "mode",
            "the mode command's outcome",
        )
        shown = await last_command(view, THERMO, "refused")
        assert shown["state"] == "refused: mode: not one of its options"
    twin = await system.cloud_twin(THERMO)
    assert twin["desired"]["$version"] == before["desired"]["$version"]
    await eventually_async(
        lambda: metric(system, "edge_agent_twins_home_assistant_commands_refused"),
        lambda value: value == 3.0,
        what="three refusals counted",
        within=READY_TIMEOUT,
    )
