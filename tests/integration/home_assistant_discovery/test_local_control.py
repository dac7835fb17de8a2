"""Local control end to end: with the link cut, an HA command is applied at the edge.

For a model with ``localControl: true``, and it syncs later under the conflict rule.

A real server, agent and mosquitto (dynsec); the fault proxy between agent and server cuts the
link. The model is uploaded through the cloud's API and reaches the agent over the tunnel, as
an operator's would. A model without local control is still refused with the link cut
(test_commands.py, relay-switch).
"""

from __future__ import annotations

from typing import Any

import pytest

from edge_agent.twins.topics import Op
from tests.harness.waiting import eventually_async
from tests.integration.home_assistant_discovery.test_commands import (
    command_topic,
    last_command,
    watch,
)
from tests.integration.home_assistant_discovery.test_discovery import ha_view, make_ha_user, metric
from tests.integration.twins_e2e.conftest import NODE, READY_TIMEOUT, System

pytestmark = pytest.mark.mqtt

# Device ids are broker-wide on the session's broker: these are this file's own.
LAMP_CUT = "ha-lamp-1"
LAMP_CONFLICT = "ha-lamp-2"
LAMP_MODEL = """\
apiVersion: edgefleet.io/v1
kind: DeviceModel
name: ha-lamp
version: "1.0.0"
description: A dimmable lamp the site may switch while the cloud is away.
localControl: true
properties:
  - name: "on"
    type: bool
    access: read-write
  - name: brightness
    type: int
    unit: "%"
    min: 0
    max: 100
    access: read-write
"""


def values(section: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in section.items() if not key.startswith("$")}


async def test_with_the_link_cut_a_command_is_applied_locally_and_synced_later(
    system: System,
) -> None:
    await system.upload_model(LAMP_MODEL)
    user = await make_ha_user(system.broker)
    lamp = await system.claim(LAMP_CUT, "ha-lamp")
    await system.wait_device(LAMP_CUT)
    before = (await system.cloud_twin(LAMP_CUT))["desired"]["$version"]
    async with ha_view(system, user) as view, system.device(lamp, timeout=60.0) as device:
        await watch(view, LAMP_CUT)
        system.proxy.cut()
        await system.wait_edge(lambda s: not s["sync"]["connected"])
        await view.client.publish(command_topic(LAMP_CUT, "on"), b"ON", qos=1)

        # The device gets it at once, through the normal desired path, with the link cut.
        message = await device.wait_for(Op.DESIRED)
        assert message["patch"] == {"on": True}
        shown = await last_command(view, LAMP_CUT, "applied")
        assert shown["state"] == "applied locally (cloud unreachable)"
        assert shown["property"] == "on"
        assert values((await system.edge_twin(LAMP_CUT))["desired"]) == {"on": True}
        assert "on" not in (await system.cloud_twin(LAMP_CUT))["desired"]  # not heard yet

        system.proxy.restore()
        # Back online, the edge's change syncs as a normal desired change.
        twin = await system.cloud_twin(LAMP_CUT, desired=before + 1)
        assert twin["desired"]["$version"] == before + 1
        assert values(twin["desired"]) == {"on": True}

    status, audit = await system.api("GET", f"/api/v1/audit?target={NODE}:{LAMP_CUT}")
    assert status == 200, audit
    records = [item for item in audit["items"] if item["user"] == f"node:{NODE}"]
    assert [(r["role"], r["action"], r["status"]) for r in records] == [
        ("local-control", "devices.twin.update", 200)
    ]
    assert await metric(system, "edge_agent_twins_home_assistant_commands_refused") == 0.0
    assert await metric(system, "edge_agent_twins_home_assistant_commands_forwarded") == 0.0


async def test_a_key_the_cloud_also_wrote_during_the_cut_is_the_clouds(system: System) -> None:
    await system.upload_model(LAMP_MODEL)
    user = await make_ha_user(system.broker)
    lamp = await system.claim(LAMP_CONFLICT, "ha-lamp")
    await system.wait_device(LAMP_CONFLICT)
    async with ha_view(system, user) as view, system.device(lamp, timeout=60.0) as device:
        await watch(view, LAMP_CONFLICT)
        system.proxy.cut()
        await system.wait_edge(lambda s: not s["sync"]["connected"])
        await view.client.publish(command_topic(LAMP_CONFLICT, "brightness"), b"40", qos=1)
        await view.client.publish(command_topic(LAMP_CONFLICT, "on"), b"ON", qos=1)
        message = await device.wait_for(Op.DESIRED, lambda m: "on" in m["patch"])
        assert await last_command(view, LAMP_CONFLICT, "applied locally")
        assert values((await system.edge_twin(LAMP_CONFLICT))["desired"]) == {
            "brightness": 40,
            "on": True,
        }
        # Meanwhile an operator sets the brightness in the cloud.
        status, body = await system.patch(LAMP_CONFLICT, {"brightness": 70})
        assert status == 200, body
        system.proxy.restore()

        async def both_sides() -> tuple[dict[str, Any], dict[str, Any]]:
            return await system.cloud_twin(LAMP_CONFLICT), await system.edge_twin(LAMP_CONFLICT)

        cloud, edge = await eventually_async(
            both_sides,
            lambda seen: (
                values(seen[0]["desired"]) == values(seen[1]["desired"])
                and values(seen[0]["desired"]).get("on") is True
            ),
            what="cloud and edge desired equal, with the edge's key",
            within=READY_TIMEOUT,
            every=0.1,
        )
        # desired: the cloud wins the key both wrote; the key only the edge wrote survives
        assert values(cloud["desired"]) == {"brightness": 70, "on": True}
        assert values(edge["desired"]) == {"brightness": 70, "on": True}
        # the device is told the cloud's value, and has nothing else left to do
        message = await device.wait_for(Op.DESIRED, lambda m: m["patch"].get("brightness") == 70)
        assert message["patch"] == {"brightness": 70}
        delta = await device.wait_for(Op.DELTA, lambda m: m["delta"].get("brightness") == 70)
        assert delta["delta"] == {"brightness": 70, "on": True}
