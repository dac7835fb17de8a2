"""Both sides edit both sections during an outage, and they converge by the rule.

Desired: the cloud wins; reported: the edge wins. Keys only one side wrote survive, and the
device is told the desired value that won. The edge writes desired only for a model with
``localControl: true`` (the cloud drops the edge's desired changes for any other model), so the
device here is a thermostat whose model allows it.
"""

from __future__ import annotations

from typing import Any

import pytest

from device_models import BUILTIN_MODEL_YAML
from edge_agent.twins.topics import Op
from tests.harness.waiting import eventually_async
from tests.integration.twins_e2e.conftest import NODE, READY_TIMEOUT, System

pytestmark = pytest.mark.mqtt
TEST_WRITES = True
"""Each side writes the section only the other side may write through the product: the test
launchers' write routes (conftest.py), which exist in no product process."""


LOCAL_THERMOSTAT = BUILTIN_MODEL_YAML["thermostat"].replace(
    "name: thermostat\n", "name: thermostat-local\nlocalControl: true\n", 1
)


def values(section: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in section.items() if not k.startswith("$")}


def key_metadata(section: dict[str, object]) -> dict[str, object]:
    metadata = section["$metadata"]
    assert isinstance(metadata, dict)
    return {k: v for k, v in metadata.items() if not k.startswith("$")}


async def test_edits_on_both_sides_during_an_outage_converge_by_the_rule(system: System) -> None:
    await system.upload_model(LOCAL_THERMOSTAT)
    credential = await system.claim("th-c", "thermostat-local")
    await system.wait_device("th-c")
    async with system.device(credential) as device:
        assert (await device.report({"temperature": 20.0, "firmware": "1.0"}))["code"] == 200
        await system.cloud_twin("th-c", reported=1)

        system.proxy.cut()  # the outage
        await system.wait_edge(lambda s: not s["sync"]["connected"])
        # cloud: desired through the API, and a reported edit (as an operator tool might)
        status, body = await system.patch("th-c", {"setpoint": 19.0, "mode": "cool"})
        assert status == 200, body
        await system.cloud_write("th-c", "reported", {"firmware": "cloud", "heating": True})
        # edge: a desired edit made locally, and the device's own reports
        await system.edge_write(
            "th-c", "desired", {"setpoint": 25.0, "schedule": {"enabled": True}}
        )
        answer = await device.report({"firmware": "edge", "temperature": 21.0})
        assert answer["code"] == 200
        # The edge holds both of its edits before the link comes back.
        await eventually_async(
            lambda: system.edge_twin("th-c"),
            lambda twin: (
                values(twin["desired"]).get("setpoint") == 25.0
                and values(twin["reported"]).get("firmware") == "edge"
            ),
            what="the edge's own edits in its replica",
        )
        system.proxy.restore()

        async def both_sides() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
            await system.wait_synced()
            _, info = await system.api("GET", f"/api/v1/devices/{NODE}:th-c")
            return info, await system.cloud_twin("th-c"), await system.edge_twin("th-c")

        _, cloud, edge = await eventually_async(
            both_sides,
            lambda seen: (
                seen[0]["pendingDesired"] == 0
                and all(values(seen[1][s]) == values(seen[2][s]) for s in ("desired", "reported"))
            ),
            what="cloud and edge twins equal, nothing pending",
            within=READY_TIMEOUT,
            every=0.1,
        )

        # desired: the cloud wins the key both wrote; the edge's other key survives
        assert values(cloud["desired"]) == {
            "setpoint": 19.0,
            "mode": "cool",
            "schedule": {"enabled": True},
        }
        # reported: the edge wins the key both wrote; the cloud's other key survives
        assert values(cloud["reported"]) == {
            "firmware": "edge",
            "temperature": 21.0,
            "heating": True,
        }
        for section in ("desired", "reported"):
            assert key_metadata(cloud[section]) == key_metadata(edge[section])
        # the device was sent the cloud's setpoint and sees no setpoint left to do
        delta = await device.wait_for(Op.DELTA, lambda m: m["delta"].get("setpoint") == 19.0)
        assert delta["delta"]["mode"] == "cool"
