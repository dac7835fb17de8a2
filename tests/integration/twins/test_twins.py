"""Twins through the real broker: validation, desired delivery, reconnects, outbox limits."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable
from typing import Any

import pytest

from device_models import Replica, Role, Section, TwinChange, builtin_models, write_change
from edge_agent.twins import CloudChangeError, OutboxSettings, simulator
from edge_agent.twins.mqtt_service import max_packet_bytes
from edge_agent.twins.simulator import SimulatedDevice, random_patch
from edge_agent.twins.topics import Op
from tests.integration.twins.conftest import TwinsEnv, running, unique

pytestmark = pytest.mark.mqtt


def cloud_writes(device_id: str, patches: list[dict[str, object]]) -> list[dict[str, object]]:
    """Cloud-side desired changes, as the cloud's outbox would send them."""
    replica = Replica(origin="cloud", role=Role.CLOUD)
    changes: list[dict[str, object]] = []
    for index, patch in enumerate(patches):
        replica, change = write_change(replica, Section.DESIRED, patch, now=1_700_000_000 + index)
        changes.append({"device": device_id, "change": change.to_json()})
    return changes


def without_rid(op: str) -> Callable[[dict[str, Any]], bool]:
    return lambda answer: answer.get("op") == op and "rid" not in answer


async def test_bad_reports_are_refused_with_reason_and_change_nothing(twins_env: TwinsEnv) -> None:
    device_id = unique("thermo")
    async with running(twins_env.service()):
        credential = await twins_env.claim(device_id, "thermostat")
        async with twins_env.device(credential) as device:
            accepted = await device.report({"temperature": 20.5})
            too_hot = await device.report({"temperature": 99})
            wrong_type = await device.report({"temperature": "hot", "heating": 1})
            unknown = await device.report({"humidity": 3})
            no_patch = await device.request(Op.REPORTED, {"patch": [1]})
            await device.client.publish(device.topic(Op.REPORTED), b"{not json", qos=1)
            not_json = await device.wait_for(Op.RESULT, without_rid("reported"))
            deep = {"rid": "deep", "patch": {"schedule": json.loads("[" * 30 + "]" * 30)}}
            await device.client.publish(device.topic(Op.REPORTED), json.dumps(deep), qos=1)
            too_deep = await device.wait_for(Op.RESULT, without_rid("reported"))
            huge = json.dumps({"rid": "huge", "patch": {"firmware": "x" * 70_000}})
            await device.client.publish(device.topic(Op.TELEMETRY), huge, qos=1)
            too_big = await device.wait_for(Op.RESULT, without_rid("telemetry"))
            twin = await device.get()
    assert accepted["code"] == 200
    assert (too_hot["code"], too_hot["reason"]) == (422, "invalid_value")
    assert too_hot["problems"] == [{"path": "temperature", "reason": "must be <= 60 (got 99)"}]
    assert wrong_type["code"] == 422
    assert {p["path"] for p in wrong_type["problems"]} == {"temperature", "heating"}
    assert unknown["code"] == 422
    assert (no_patch["code"], no_patch["reason"]) == (400, "bad_request")
    assert (not_json["code"], not_json["reason"]) == (400, "bad_request")
    assert (too_deep["code"], too_deep["reason"]) == (413, "too_large")
    assert (too_big["code"], too_big["reason"]) == (413, "too_large")
    assert twin["reported"] == {"temperature": 20.5, "$version": 1}
    cloud = twins_env.cloud
    await cloud.wait_until(lambda: len(cloud.applied_changes) == 1)
    assert len(cloud.kinds("twin-change", device_id)) == 1


async def test_repeated_request_id_is_answered_once(twins_env: TwinsEnv) -> None:
    device_id = unique("relay")
    async with running(twins_env.service()):
        credential = await twins_env.claim(device_id, "relay-switch")
        async with twins_env.device(credential) as device:
            first = await device.report({"switchCount": 1}, rid="same-1")
            again = await device.report({"switchCount": 1}, rid="same-1")
            twin = await device.get()
    assert first == again
    assert twin["reported"]["$version"] == 1


async def test_desired_changes_reach_the_device_in_order(twins_env: TwinsEnv) -> None:
    device_id = unique("thermo")
    changes = cloud_writes(device_id, [{"setpoint": 18 + i} for i in range(6)])
    async with running(twins_env.service()) as service:
        credential = await twins_env.claim(device_id, "thermostat")
        async with twins_env.device(credential) as device:
            results = [await service.apply_cloud_change(change) for change in changes]
            redelivered = await service.apply_cloud_change(json.dumps(changes[2]))
            received = [await device.wait_for(Op.DESIRED) for _ in changes]
            delta = await device.wait_for(Op.DELTA, lambda d: d["version"] == len(changes))
    assert [r.applied for r in results] == [True] * len(changes)
    assert not redelivered.applied
    assert [m["patch"] for m in received] == [{"setpoint": 18 + i} for i in range(6)]
    assert [m["version"] for m in received] == list(range(1, 7))
    assert delta["delta"] == {"setpoint": 23}
    assert service.metrics.desired_delivered == len(changes)


async def test_device_that_was_away_gets_what_it_missed(twins_env: TwinsEnv) -> None:
    device_id = unique("thermo")
    changes = cloud_writes(device_id, [{"setpoint": 21}, {"mode": "heat"}, {"setpoint": 22.5}])
    async with running(twins_env.service()) as service:
        credential = await twins_env.claim(device_id, "thermostat")
        async with twins_env.device(credential, clean_session=False):
            pass  # the broker now keeps this device's session while it is away
        for change in changes:
            await service.apply_cloud_change(change)
        async with twins_env.device(credential, clean_session=False) as device:
            queued = [await device.wait_for(Op.DESIRED) for _ in changes]
            delta = await device.wait_for(Op.DELTA, lambda d: d["version"] == 3)
        async with twins_env.device(credential) as fresh:  # a clean session: retained + get
            retained = await fresh.wait_for(Op.DELTA, lambda d: d["version"] == 3)
            twin = await fresh.get()
    assert [m["patch"] for m in queued] == [{"setpoint": 21}, {"mode": "heat"}, {"setpoint": 22.5}]
    assert delta["delta"] == retained["delta"] == {"setpoint": 22.5, "mode": "heat"}
    assert twin["desired"] == {"setpoint": 22.5, "mode": "heat", "$version": 3}


async def test_reported_value_clears_the_delta(twins_env: TwinsEnv) -> None:
    device_id = unique("relay")
    [change] = cloud_writes(device_id, [{"on": True}])
    async with running(twins_env.service()) as service:
        credential = await twins_env.claim(device_id, "relay-switch")
        async with twins_env.device(credential) as device:
            await service.apply_cloud_change(change)
            pending = await device.wait_for(Op.DELTA, lambda d: d["delta"] != {})
            await device.report({"on": True})
            done = await device.wait_for(Op.DELTA, lambda d: d["delta"] == {})
    assert pending["delta"] == {"on": True}
    assert done["version"] == 1


async def test_cloud_changes_that_cannot_apply(twins_env: TwinsEnv) -> None:
    device_id = unique("thermo")
    good, invalid, after = cloud_writes(
        device_id, [{"setpoint": 20}, {"mode": "on"}, {"mode": "off"}]
    )
    async with running(twins_env.service()) as service:
        await twins_env.claim(device_id, "thermostat")
        errors = {}
        for name, message in [
            ("not json", "{"),
            ("unknown device", {**good, "device": "nobody"}),
            ("out of order", invalid),
            ("bad shape", {"device": device_id, "change": {"seq": 1}}),
        ]:
            with pytest.raises(CloudChangeError) as caught:
                await service.apply_cloud_change(message)  # type: ignore[arg-type]
            errors[name] = str(caught.value.code)
        applied = await service.apply_cloud_change(good)
        rejected = await service.apply_cloud_change(invalid)
        later = await service.apply_cloud_change(after)
    assert errors == {
        "not json": "bad_request",
        "unknown device": "device_not_found",
        "out of order": "out_of_order",
        "bad shape": "bad_request",
    }
    assert applied.applied
    assert rejected.rejected
    assert later.applied
    assert not later.rejected
    cloud = twins_env.cloud
    await cloud.wait_until(lambda: bool(cloud.kinds("change-rejected", device_id)))
    [record] = cloud.kinds("change-rejected", device_id)
    assert record["seq"] == TwinChange.from_json(invalid["change"]).seq
    assert record["error"]["problems"][0]["path"] == "mode"


async def test_availability_goes_to_the_cloud(twins_env: TwinsEnv) -> None:
    device_id = unique("meter")
    async with running(twins_env.service()):
        credential = await twins_env.claim(device_id, "power-meter")
        async with twins_env.device(credential):
            pass
        cloud = twins_env.cloud

        def statuses() -> list[str]:
            return [r["status"] for r in cloud.kinds("availability", device_id)]

        await cloud.wait_until(lambda: statuses() == ["online", "offline"])


async def test_full_outbox_refuses_reports_then_recovers(twins_env: TwinsEnv) -> None:
    device_id = unique("relay")
    cloud = twins_env.cloud
    cloud.blocked = True
    small = OutboxSettings(max_records=3, availability_headroom=2, retry_max=60)
    async with running(twins_env.service(outbox=small)) as service:
        credential = await twins_env.claim(device_id, "relay-switch")  # record 1
        async with twins_env.device(credential) as device:  # "online" is record 2
            first = await device.report({"switchCount": 1})  # record 3
            refused = await device.report({"switchCount": 2})
            twin = await device.get()
            cloud.blocked = False
            service.outbox.kick()
            await cloud.wait_until(lambda: len(cloud.applied_changes) == 1)
            await cloud.wait_until(lambda: service.outbox.size == 0)
            retried = await device.report({"switchCount": 2})
    assert first["code"] == 200
    assert (refused["code"], refused["reason"]) == (503, "outbox_full")
    assert twin["reported"] == {"switchCount": 1, "$version": 1}
    assert retried["code"] == 200
    assert service.metrics.refused_outbox_full == 1


async def test_simulated_devices_report_valid_values(twins_env: TwinsEnv) -> None:
    rng = random.Random(3)  # noqa: S311 - simulated values
    async with running(twins_env.service()):
        for name, model in builtin_models().items():
            credential = await twins_env.claim(unique(name), name)
            device: SimulatedDevice
            async with twins_env.device(credential) as device:
                for _ in range(5):
                    answer = await device.report(random_patch(model, rng))
                    assert answer["code"] == 200, answer


async def test_simulate_command_onboards_and_reports(
    twins_env: TwinsEnv, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = twins_env.settings
    argv = [
        "--model=power-meter",
        "--count=3",
        f"--broker={settings.broker_host}:{settings.broker_port}",
        f"--claim-username={settings.claim_username}",
        f"--claim-password={settings.claim_password}",
        f"--prefix={unique('sim')}",
        "--interval=0",
        "--reports=4",
        "--seed=1",
    ]
    async with running(twins_env.service()):
        status = await asyncio.to_thread(simulator.main, argv)
        cloud = twins_env.cloud
        await cloud.wait_until(lambda: len(cloud.applied_changes) == 12)
    summary = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert status == 0
    assert summary | {"seconds": 0} == {
        "onboarded": 3,
        "reports": 12,
        "rejected": 0,
        "errors": 0,
        "seconds": 0,
    }
    assert len(cloud.kinds("device")) == 3


async def test_a_message_over_the_packet_cap_is_dropped_by_the_broker_and_harms_nothing(
    twins_env: TwinsEnv,
) -> None:
    """The agent's MQTT 5 Maximum Packet Size: the broker drops a bigger message, unanswered.

    Just over the payload limit is answered ``too_large`` (the test above); past the packet cap
    the broker never hands it over, so the agent holds no such message. The device's next
    report is answered, and since answers follow a device's messages in order, no answer for
    the giant one had come before it.
    """
    device_id = unique("thermo")
    async with running(twins_env.service()) as service:
        cap = max_packet_bytes(service.settings)
        credential = await twins_env.claim(device_id, "thermostat")
        async with twins_env.device(credential) as device:
            giant = json.dumps({"rid": "giant", "patch": {"firmware": "x" * cap}})
            await device.client.publish(device.topic(Op.REPORTED), giant, qos=1)
            after = await device.report({"temperature": 21.0})
            # An oversized message's answer carries no rid (it is not parsed): see the test above.
            earlier = device.take(Op.RESULT, without_rid("reported"))
            twin = await device.get()
    assert after["code"] == 200
    assert earlier is None
    assert twin["reported"]["temperature"] == 21.0
