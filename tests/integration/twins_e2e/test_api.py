"""The cloud's twin API end to end: device -> broker -> agent -> tunnel -> cloud, and back."""

from __future__ import annotations

import asyncio
import re

import pytest

from edge_agent.twins.topics import Op
from tests.harness.waiting import eventually_async
from tests.integration.twins_e2e.conftest import NODE, System

pytestmark = pytest.mark.mqtt


async def test_an_onboarded_device_and_its_reports_reach_the_cloud_api(system: System) -> None:
    credential = await system.claim("th-1", "thermostat")
    device = await system.wait_device("th-1")
    assert device["id"] == f"{NODE}:th-1"
    assert device["model"] == "thermostat"
    assert device["state"] == "active"
    async with system.device(credential) as sim:
        answer = await sim.report({"temperature": 21.5, "heating": True})
        assert answer["code"] == 200
        twin = await system.cloud_twin("th-1", reported=answer["version"])
        status, one = await system.api("GET", "/api/v1/devices/th-1")  # a bare id, unique
    assert status == 200
    assert one["availability"] == "online"  # it came before the report, in order
    assert twin["reported"]["temperature"] == 21.5
    assert twin["reported"]["heating"] is True
    assert twin["reported"]["$version"] == 1
    assert set(twin["reported"]["$metadata"]) >= {"temperature", "heating"}
    status, page = await system.api("GET", f"/api/v1/devices?node={NODE}")
    assert status == 200
    assert [item["id"] for item in page["items"]] == [f"{NODE}:th-1"]
    assert page["metadata"] == {"continue": None}
    assert page["items"][0]["createdAt"].endswith("+00:00")  # RFC 3339
    # The agent's outbox on its /metrics: the report went out through it (issue 19 alerts).
    url = f"http://127.0.0.1:{system.agent.local_api_port}/metrics"
    async with system.http.get(url) as scraped:
        metrics = await scraped.text()
    delivered = re.search(r"(?m)^edge_agent_twins_outbox_delivered_records_total (\S+)$", metrics)
    assert delivered, metrics
    assert float(delivered[1]) >= 1
    assert re.search(r"(?m)^edge_agent_twins_outbox_records \S+$", metrics), metrics
    # The agent speaks MQTT 5 with mosquitto 2 (issue 19 item 4): /status and the gauge say so.
    assert re.search(r"(?m)^edge_agent_twins_mqtt_protocol_version 5\.0$", metrics), metrics
    assert (await system.edge_status())["mqtt_version"] == "5"
    # ...and the cloud timed its way from the agent to the store (issue 19's twin histogram).
    assert system.server.metric("tunnel_server_twins_end_to_end_seconds_count") >= 1


async def test_a_long_poll_on_both_sections_ends_with_whichever_moves(system: System) -> None:
    """The console's device page waits on desired and reported at once: a report ends it."""
    credential = await system.claim("th-9", "thermostat")
    await system.wait_device("th-9")
    async with system.device(credential) as sim:
        first = await sim.report({"temperature": 20.0})
        twin = await system.cloud_twin("th-9", reported=first["version"])
        desired, reported = twin["desired"]["$version"], twin["reported"]["$version"]
        async with asyncio.timeout(19), asyncio.TaskGroup() as group:  # the poll's own: 20 s
            poll = group.create_task(
                system.cloud_twin("th-9", desired=desired + 1, reported=reported + 1),
                name="twin-long-poll",
            )

            async def long_polls() -> float:
                return system.server.metric("tunnel_server_twins_long_polls")

            await eventually_async(
                long_polls, lambda waiting: waiting >= 1, what="the long-poll waiting at the server"
            )
            assert not poll.done(), "nothing has moved yet"
            await sim.report({"temperature": 20.5})  # only reported moves
        answer = poll.result()
    assert answer["reported"]["$version"] == reported + 1
    assert answer["reported"]["temperature"] == 20.5
    assert answer["desired"]["$version"] == desired


async def test_desired_patches_reach_the_device_in_order(system: System) -> None:
    credential = await system.claim("th-2", "thermostat")
    await system.wait_device("th-2")
    async with system.device(credential) as sim:
        setpoints = [float(value) for value in range(5, 31)]
        for setpoint in setpoints:
            status, body = await system.patch("th-2", {"setpoint": setpoint})
            assert status == 200, body
        seen: list[tuple[int, float]] = []
        while len(seen) < len(setpoints):
            message = await sim.wait_for(Op.DESIRED)
            seen.append((message["version"], message["patch"]["setpoint"]))
    assert [setpoint for _, setpoint in seen] == setpoints
    assert [version for version, _ in seen] == list(range(1, len(setpoints) + 1))
    status, device = await system.api("GET", f"/api/v1/devices/{NODE}:th-2")
    assert status == 200
    assert device["desiredVersion"] == len(setpoints)


async def test_conditional_and_invalid_patches_are_refused(system: System) -> None:
    await system.claim("th-3", "thermostat")
    await system.wait_device("th-3")
    status, twin = await system.patch("th-3", {"setpoint": 20, "$version": 0})
    assert status == 200, twin
    assert twin["desired"]["$version"] == 1
    status, body = await system.patch("th-3", {"setpoint": 21, "$version": 0})  # stale
    assert status == 409
    assert body["reason"] == "version_conflict"
    assert body["currentVersion"] == 1
    status, body = await system.patch("th-3", {"setpoint": 31})  # max is 30
    assert status == 400
    assert body["reason"] == "invalid_value"
    assert body["problems"] == [{"path": "setpoint", "reason": "must be <= 30 (got 31)"}]
    status, body = await system.patch("th-3", {"temperature": 20})  # read-only
    assert status == 400
    assert body["problems"][0]["path"] == "temperature"
    status, body = await system.api(
        "PATCH", f"/api/v1/devices/{NODE}:th-3/twin", {"reported": {"temperature": 1}}
    )
    assert (status, body["reason"]) == (400, "read_only_section")
    status, body = await system.api("GET", f"/api/v1/devices/{NODE}:nope")
    assert (status, body["reason"]) == (404, "device_not_found")
    status, body = await system.api("GET", "/api/v1/devices", token="abcdef." + "x" * 32)
    assert (status, body["reason"]) == (401, "invalid_token")
    status, body = await system.api("GET", "/api/v1/devices", token="")
    assert (status, body["reason"]) == (401, "unauthenticated")
    status, session = await system.api("POST", "/api/v1/sessions")  # a console session works too
    assert status == 201, session
    status, page = await system.api("GET", "/api/v1/devices", token=session["token"])
    assert status == 200, page
    twin = await system.cloud_twin("th-3")
    assert twin["desired"]["setpoint"] == 20
    assert twin["desired"]["$version"] == 1  # refused writes changed nothing
