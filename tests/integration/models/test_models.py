"""Device models uploaded through the API reach the agents through the tunnel and are used there.

Real ``tunnel-server run``, real ``edge-agent run`` with twins on a real mosquitto (the twins
end-to-end system); the agent's received models are read from its folder on disk, and the device
is the simulator ``edge-agent simulate`` runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from device_models import DeviceModel
from tests.harness.waiting import eventually_async
from tests.integration.twins_e2e.conftest import NODE, READY_TIMEOUT, System

pytestmark = pytest.mark.mqtt


def pump_yaml(version: str, *, maximum: int) -> str:
    return f"""\
apiVersion: edgefleet.io/v1
kind: DeviceModel
name: pump
version: "{version}"
description: A pump with a speed.
properties:
  - name: rpm
    type: int
    unit: rpm
    min: 0
    max: {maximum}
    kind: telemetry
"""


async def upload(
    system: System,
    text: str | bytes,
    *,
    content_type: str = "application/yaml",
    if_match: str | None = None,
    token: str | None = None,
) -> tuple[int, dict[str, Any], Any]:
    headers = {
        "Authorization": f"Bearer {token or system.server.admin_token}",
        "Content-Type": content_type,
    }
    if if_match is not None:
        headers["If-Match"] = if_match
    url = system.server.url + "/api/v1/device-models"
    async with system.http.post(url, data=text, headers=headers) as answer:
        return answer.status, await answer.json(content_type=None), answer.headers


def received(system: System, name: str) -> Path:
    return system.agent.data_dir / "twins" / "models" / f"{name}.yaml"


async def wait_received(system: System, name: str, version: str) -> None:
    """The agent stored ``name`` at ``version`` in its received-models folder."""

    async def on_disk() -> str | None:
        assert system.agent.process is not None
        system.agent.process.check_running()  # a crash ends the wait at once
        path = received(system, name)
        return DeviceModel.from_yaml(path.read_bytes()).version if path.exists() else None

    await eventually_async(
        on_disk,
        lambda got: got == version,
        what=f"model {name} {version} on the agent",
        within=READY_TIMEOUT,
    )


async def test_an_upload_reaches_an_online_agent_which_validates_with_it(system: System) -> None:
    status, body, headers = await upload(system, pump_yaml("1.0.0", maximum=10))
    assert status == 201, body
    assert headers["ETag"] == '"1.0.0"'
    assert headers["Location"] == "/api/v1/device-models/pump"
    assert body["source"] == "uploaded"
    assert body["createdBy"] == "admin"
    assert body["model"]["properties"][0]["max"] == 10
    await wait_received(system, "pump", "1.0.0")

    credential = await system.claim("p-1", "pump")  # onboarding knows the model now
    device = await system.wait_device("p-1")
    assert device["model"] == "pump"
    async with system.device(credential) as sim:
        too_fast = await sim.report({"rpm": 50})
        assert too_fast["code"] != 200, too_fast  # the edge checks against max 10
        ok = await sim.report({"rpm": 5})
        assert ok["code"] == 200, ok

        status, body, _ = await upload(system, pump_yaml("1.1.0", maximum=100), if_match='"1.0.0"')
        assert status == 201, body
        await wait_received(system, "pump", "1.1.0")
        faster = await sim.report({"rpm": 50})  # no restart: the new version validates
        assert faster["code"] == 200, faster
        twin = await system.cloud_twin("p-1", reported=faster["version"])
    assert twin["reported"]["rpm"] == 50

    status, series = await system.api(
        "GET", f"/api/v1/devices/{NODE}:p-1/telemetry?property=rpm&windowSeconds=600"
    )
    assert status == 200, series
    assert series["unit"] == "rpm"
    assert series["properties"] == ["rpm"]
    assert sum(point["samples"] for point in series["points"]) == 2
    assert series["points"][-1]["last"] == 50
    assert max(point["max"] for point in series["points"]) == 50
    assert min(point["min"] for point in series["points"]) == 5

    status, problem = await system.api("GET", f"/api/v1/devices/{NODE}:p-1/telemetry?property=nope")
    assert (status, problem["reason"]) == (404, "property_not_found")
    status, problem = await system.api("GET", f"/api/v1/devices/{NODE}:zz/telemetry?property=rpm")
    assert (status, problem["reason"]) == (404, "device_not_found")

    status, versions = await system.api("GET", "/api/v1/device-models/pump/versions")
    assert status == 200
    assert [item["version"] for item in versions["items"]] == ["1.1.0", "1.0.0"]
    status, old = await system.api("GET", "/api/v1/device-models/pump?version=1.0.0")
    assert (status, old["model"]["properties"][0]["max"]) == (200, 10)


async def test_an_agent_stopped_during_an_upload_gets_the_model_after_restart(
    system: System,
) -> None:
    system.agent.stop()
    valve = pump_yaml("2.0.0", maximum=5).replace("name: pump", "name: valve")
    status, body, _ = await upload(system, valve)
    assert status == 201, body
    assert not received(system, "valve").exists()
    await system.start_agent()
    await wait_received(system, "valve", "2.0.0")
    await system.claim("v-1", "valve")  # refused unless the agent knows the model
    assert (await system.wait_device("v-1"))["model"] == "valve"


async def test_bad_uploads_get_problem_documents(system: System) -> None:
    viewer = system.server.cli("users", "create", "watcher", "--role", "viewer").strip()
    operator = system.server.cli("users", "create", "runner", "--role", "operator").strip()
    status, problem, _ = await upload(system, pump_yaml("1.0.0", maximum=10), token=viewer)
    assert (status, problem["reason"]) == (403, "forbidden")
    status, body, _ = await upload(system, pump_yaml("1.0.0", maximum=10), token=operator)
    assert (status, body["createdBy"]) == (201, "runner")
    status, listing = await system.api("GET", "/api/v1/device-models", token=viewer)
    assert status == 200
    assert "pump" in [item["name"] for item in listing["items"]]

    status, problem, _ = await upload(
        system, pump_yaml("1.0.1", maximum=10).replace("min: 0", "min: 50")
    )
    assert (status, problem["reason"]) == (400, "invalid_model")
    assert [p["path"] for p in problem["problems"]] == ["properties[0].min"]

    status, problem, _ = await upload(
        system, pump_yaml("1.0.1", maximum=10).replace("kind: telemetry", "mxa: 5")
    )
    assert (status, problem["reason"]) == (400, "invalid_model")
    assert "properties[0].mxa" in [p["path"] for p in problem["problems"]]

    status, problem, _ = await upload(system, "a: &x [1]\nb: *x\n")
    assert (status, problem["reason"]) == (400, "invalid_model")

    status, problem, _ = await upload(system, pump_yaml("1.0.0", maximum=99))
    assert (status, problem["reason"], problem["currentVersion"]) == (
        409,
        "version_not_higher",
        "1.0.0",
    )

    status, problem, _ = await upload(system, pump_yaml("1.2.0", maximum=10), if_match='"0.9"')
    assert (status, problem["reason"]) == (412, "precondition_failed")

    as_json = yaml.safe_load(pump_yaml("1.0.1", maximum=10))
    as_json["properties"][0]["colour"] = "red"
    status, problem, _ = await upload(
        system, yaml.safe_dump(as_json).encode(), content_type="text/plain"
    )
    assert (status, problem["reason"]) == (415, "unsupported_media_type")
    status, problem, _ = await upload(system, json.dumps(as_json), content_type="application/json")
    assert (status, problem["reason"]) == (400, "invalid_model")
    assert [p["path"] for p in problem["problems"]] == ["properties[0].colour"]
    del as_json["properties"][0]["colour"]
    status, body, _ = await upload(system, json.dumps(as_json), content_type="application/json")
    assert (status, body["version"]) == (201, "1.0.1")

    status, problem, _ = await upload(system, "x" * (64 * 1024 + 1))
    assert (status, problem["reason"]) == (413, "body_too_large")

    status, listing = await system.api("GET", "/api/v1/device-models?limit=2")
    assert status == 200
    assert len(listing["items"]) == 2
    assert listing["metadata"]["continue"] is not None
    status, pump = await system.api("GET", "/api/v1/device-models/pump")
    assert (status, pump["version"]) == (200, "1.0.1")  # none of the bad ones was stored
    status, problem = await system.api("GET", "/api/v1/device-models/nope")
    assert (status, problem["reason"]) == (404, "model_not_found")
