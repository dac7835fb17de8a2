"""Device lifecycle through the REST API against real processes and real mosquitto dynsec.

Register (the agent expects the device; the API shows its claim secret once), onboard with it,
revoke (its broker credential goes at once: the broker disconnects it and refuses it after),
remove with the twin kept or deleted; If-Match on twin writes; bad bodies get problem documents.
"""

from __future__ import annotations

import asyncio

import aiomqtt
import pytest

from edge_agent.twins.simulator import ClaimRejectedError, DeviceCredential
from edge_agent.twins.topics import Op, device_topic
from tests.harness.waiting import eventually_async
from tests.integration.twins_e2e.conftest import NODE, READY_TIMEOUT, System

pytestmark = pytest.mark.mqtt


async def _register(system: System, device: str, model: str = "thermostat") -> str:
    status, headers, body = await system.api_full(
        "POST", "/api/v1/devices", {"node": NODE, "device": device, "model": model}
    )
    assert status == 201, body
    assert headers["Location"] == f"/api/v1/devices/{NODE}:{device}"
    assert (body["id"], body["node"], body["device"], body["model"]) == (
        f"{NODE}:{device}",
        NODE,
        device,
        model,
    )
    assert body["registeredAt"].endswith("+00:00")
    secret: str = body["claimSecret"]
    assert len(secret) >= 32
    return secret


def _client(system: System, credential: DeviceCredential) -> aiomqtt.Client:
    return aiomqtt.Client(
        system.broker.host,
        system.broker.port,
        username=credential.username,
        password=credential.password,
        identifier=credential.client_id,
    )


async def test_a_device_registered_through_the_api_onboards_with_its_claim_secret(
    system: System,
) -> None:
    secret = await _register(system, "reg-1")
    with pytest.raises(ClaimRejectedError) as wrong:
        await system.claim("reg-1", "thermostat", claim_secret="not-the-secret")
    assert wrong.value.reason == "bad_claim"
    credential = await system.claim("reg-1", "thermostat", claim_secret=secret)
    device = await system.wait_device("reg-1")
    assert (device["state"], device["model"]) == ("active", "thermostat")
    async with system.device(credential) as sim:
        answer = await sim.report({"temperature": 19.5})
        assert answer["code"] == 200
    # Once onboarded the id is taken: registering it again is refused with why.
    status, body = await system.api(
        "POST", "/api/v1/devices", {"node": NODE, "device": "reg-1", "model": "thermostat"}
    )
    assert (status, body["reason"]) == (409, "duplicate_id")
    assert "DELETE /api/v1/devices" in body["detail"]


async def test_registering_on_a_node_that_is_not_connected_is_refused(system: System) -> None:
    status, body = await system.api(
        "POST", "/api/v1/devices", {"node": "edge-away", "device": "x-1", "model": "thermostat"}
    )
    assert (status, body["reason"]) == (409, "node_offline")
    assert "edge-away" in body["detail"]
    status, body = await system.api(
        "POST", "/api/v1/devices", {"node": NODE, "device": "x-1", "model": "no-such-model"}
    )
    assert (status, body["reason"]) == (422, "model_unknown")


async def test_revoking_a_device_cuts_it_off_the_broker_at_once(system: System) -> None:
    credential = await system.claim("rv-1", "thermostat")
    await system.wait_device("rv-1")
    status, twin = await system.patch("rv-1", {"setpoint": 23.0})
    assert status == 200, twin
    disconnected = asyncio.Event()
    async with _client(system, credential) as client:
        await client.subscribe(device_topic("rv-1", Op.DESIRED), qos=1)

        async def watch() -> None:
            try:
                async for _ in client.messages:
                    pass
            except aiomqtt.MqttError:
                disconnected.set()

        async with asyncio.TaskGroup() as group:
            watcher = group.create_task(watch(), name="device-connection-watch")
            status, body = await system.api(
                "POST", f"/api/v1/devices/{NODE}:rv-1/revoke", {"twin": "keep"}
            )
            assert status == 200, body
            assert body == {
                "id": f"{NODE}:rv-1",
                "node": NODE,
                "device": "rv-1",
                "state": "revoked",
                "twin": "kept",
            }
            async with asyncio.timeout(READY_TIMEOUT):
                await disconnected.wait()  # the broker ended the device's session
            watcher.cancel()
    # Its credential is gone: the broker refuses it.
    with pytest.raises(aiomqtt.MqttCodeError):
        async with _client(system, credential) as client:
            await client.publish(device_topic("rv-1", Op.REPORTED), b"{}", qos=1)
    status, device = await system.api("GET", f"/api/v1/devices/{NODE}:rv-1")
    assert (status, device["state"]) == (200, "revoked")
    twin = await system.cloud_twin("rv-1")
    assert twin["desired"]["setpoint"] == 23.0  # kept
    # A revoked id may not claim again with the shared credential alone...
    with pytest.raises(ClaimRejectedError) as refused:
        await system.claim("rv-1", "thermostat")
    assert refused.value.reason == "bad_claim"
    assert "revoked" in str(refused.value.answer["detail"])
    # ...only once an operator registers it again; its kept desired values come back.
    secret = await _register(system, "rv-1")
    await system.claim("rv-1", "thermostat", claim_secret=secret)

    async def twin_now() -> dict[str, object]:
        return await system.cloud_twin("rv-1")

    await eventually_async(
        twin_now,
        lambda t: t["desired"].get("setpoint") == 23.0,  # type: ignore[attr-defined]
        what="the kept desired values on the re-onboarded device",
        within=READY_TIMEOUT,
    )
    status, device = await system.api("GET", f"/api/v1/devices/{NODE}:rv-1")
    assert device["state"] == "active"


async def test_revoke_with_twin_delete_forgets_the_twin(system: System) -> None:
    credential = await system.claim("rv-2", "thermostat")
    await system.wait_device("rv-2")
    status, body = await system.api(
        "POST", f"/api/v1/devices/{NODE}:rv-2/revoke", {"twin": "delete"}
    )
    assert (status, body["twin"]) == (200, "deleted"), body
    status, body = await system.api("GET", f"/api/v1/devices/{NODE}:rv-2")
    assert (status, body["reason"]) == (404, "device_not_found")
    with pytest.raises(aiomqtt.MqttCodeError):
        async with _client(system, credential):
            pass
    # The edge's device-removed record arrives after the deletion: no dead letter, no row.
    await system.wait_synced()
    status, body = await system.api("GET", f"/api/v1/devices/{NODE}:rv-2")
    assert status == 404
    # Without a body a revoke keeps the twin.
    await system.claim("rv-3", "thermostat")
    await system.wait_device("rv-3")
    status, body = await system.api("POST", f"/api/v1/devices/{NODE}:rv-3/revoke")
    assert (status, body["twin"]) == (200, "kept"), body


async def test_removing_a_device_keeps_or_deletes_its_twin(system: System) -> None:
    kept = await system.claim("rm-1", "thermostat")
    await system.claim("rm-2", "thermostat")
    await system.wait_device("rm-1")
    await system.wait_device("rm-2")
    status, body = await system.api("DELETE", f"/api/v1/devices/{NODE}:rm-1?twin=keep")
    assert (status, body) == (204, {})
    status, body = await system.api("DELETE", f"/api/v1/devices/{NODE}:rm-2?twin=delete")
    assert status == 204
    status, device = await system.api("GET", f"/api/v1/devices/{NODE}:rm-1")
    assert (status, device["state"]) == (200, "removed")
    status, body = await system.api("GET", f"/api/v1/devices/{NODE}:rm-2")
    assert (status, body["reason"]) == (404, "device_not_found")
    with pytest.raises(aiomqtt.MqttCodeError):
        async with _client(system, kept):
            pass
    # A removed device may claim again (it was not revoked): a fresh credential.
    await system.claim("rm-1", "thermostat")
    await eventually_async(
        lambda: system.api("GET", f"/api/v1/devices/{NODE}:rm-1"),
        lambda answer: answer[1].get("state") == "active",
        what="rm-1 onboarded again",
        within=READY_TIMEOUT,
    )
    status, body = await system.api("DELETE", f"/api/v1/devices/{NODE}:never-there")
    assert (status, body["reason"]) == (404, "device_not_found")


async def test_a_patch_with_a_stale_if_match_is_refused_and_changes_nothing(
    system: System,
) -> None:
    await system.claim("im-1", "thermostat")
    await system.wait_device("im-1")
    path = f"/api/v1/devices/{NODE}:im-1/twin"
    status, headers, twin = await system.api_full("GET", path)
    assert status == 200
    assert headers["ETag"] == f'"{twin["desired"]["$version"]}"' == '"0"'
    status, headers, twin = await system.api_full(
        "PATCH", path, {"desired": {"setpoint": 20.0}}, headers={"If-Match": '"0"'}
    )
    assert status == 200, twin
    assert headers["ETag"] == '"1"'
    status, _, body = await system.api_full(
        "PATCH", path, {"desired": {"setpoint": 25.0}}, headers={"If-Match": '"0"'}
    )
    assert (status, body["reason"], body["currentVersion"]) == (412, "precondition_failed", 1)
    status, _, body = await system.api_full(
        "PATCH", path, {"desired": {"setpoint": 25.0}}, headers={"If-Match": "0"}
    )
    assert (status, body["reason"]) == (400, "bad_if_match")
    twin = await system.cloud_twin("im-1")
    assert (twin["desired"]["setpoint"], twin["desired"]["$version"]) == (20.0, 1)


BAD_REQUESTS: list[tuple[str, str, object, str]] = [
    ("POST", "/api/v1/devices", {"node": NODE, "device": "b-1"}, "bad_request"),
    (
        "POST",
        "/api/v1/devices",
        {"node": NODE, "device": "b-1", "model": "thermostat", "colour": "red"},
        "unknown_field",
    ),
    (
        "POST",
        "/api/v1/devices",
        {"node": "Not A Node", "device": "b/1", "model": 7},
        "bad_request",
    ),
    ("POST", "/api/v1/devices", [1, 2], "bad_json"),
    ("POST", f"/api/v1/devices/{NODE}:b-1/revoke", {"twin": "maybe"}, "bad_request"),
    ("POST", f"/api/v1/devices/{NODE}:b-1/revoke", {"twin": "keep", "x": 1}, "unknown_field"),
    ("DELETE", f"/api/v1/devices/{NODE}:b-1?twin=maybe", None, "bad_parameter"),
    ("PATCH", f"/api/v1/devices/{NODE}:b-1/twin", {"desired": {}, "extra": 1}, "unknown_field"),
    ("GET", "/api/v1/devices?limit=0", None, "bad_parameter"),
    ("GET", "/api/v1/devices?continue=garbage", None, "bad_continue"),
    ("GET", "/api/v1/devices?state=sleeping", None, "bad_parameter"),
]


async def test_bad_requests_get_problem_documents(system: System) -> None:
    await system.claim("b-1", "thermostat")
    await system.wait_device("b-1")
    for method, path, body, reason in BAD_REQUESTS:
        status, answer = await system.api(method, path, body)
        assert (status, answer["reason"]) == (400, reason), (method, path, answer)
        assert answer["type"].endswith(f"/{reason}")
        assert answer["detail"]
        if reason == "unknown_field":
            assert answer["problems"][0]["reason"] == "unknown field"
    twin = await system.cloud_twin("b-1")
    assert twin["desired"]["$version"] == 0  # nothing refused changed it


async def test_the_device_list_pages_by_continue(system: System) -> None:
    for name in ("pg-1", "pg-2", "pg-3"):
        await system.claim(name, "thermostat")
        await system.wait_device(name)
    status, first = await system.api("GET", f"/api/v1/devices?node={NODE}&limit=2")
    assert status == 200, first
    assert [item["device"] for item in first["items"]] == ["pg-1", "pg-2"]
    assert first["metadata"]["remainingItemCount"] == 1
    token = first["metadata"]["continue"]
    status, second = await system.api(
        "GET", f"/api/v1/devices?node={NODE}&limit=2&continue={token}"
    )
    assert [item["device"] for item in second["items"]] == ["pg-3"]
    assert second["metadata"] == {"continue": None}
    status, body = await system.api("GET", f"/api/v1/devices?limit=2&continue={token}")
    assert (status, body["reason"]) == (400, "bad_continue")  # another query
    status, page = await system.api("GET", "/api/v1/devices?model=relay-switch")
    assert (status, page["items"]) == (200, [])
