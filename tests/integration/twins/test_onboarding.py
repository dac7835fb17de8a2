"""Onboarding through the real broker: claim credential, per-device credential and ACLs."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
from collections.abc import Callable

import aiomqtt
import pytest
from paho.mqtt.reasoncodes import ReasonCode

from edge_agent.twins import topics
from edge_agent.twins.simulator import ClaimRejectedError
from edge_agent.twins.topics import Op
from tests.harness.waiting import eventually_async
from tests.integration.twins.conftest import READY_TIMEOUT, TwinsEnv, running, unique

pytestmark = pytest.mark.mqtt


def refused(granted: object) -> bool:
    assert isinstance(granted, list)
    return all(isinstance(g, ReasonCode) and g.value >= 0x80 for g in granted)


async def test_claim_then_report_with_own_credential(twins_env: TwinsEnv) -> None:
    device_id = unique("sensor")
    async with running(twins_env.service()) as service:
        credential = await twins_env.claim(device_id, "temperature-sensor")
        assert credential.username == f"device:{device_id}"
        assert credential.client_id.startswith(f"{device_id}-")  # plus a secret suffix
        assert len(credential.client_id) == len(device_id) + 17
        async with twins_env.device(credential) as device:
            answer = await device.report({"temperature": 21.5, "battery": 80})
            twin = await device.get()
        cloud = twins_env.cloud
        await cloud.wait_until(lambda: len(cloud.applied_changes) == 1)
    assert answer == {"rid": answer["rid"], "op": "reported", "code": 200, "version": 1}
    assert twin["reported"] == {"temperature": 21.5, "battery": 80, "$version": 1}
    assert service.metrics.devices_onboarded == 1
    [announced] = cloud.kinds("device")
    assert announced["device"] == device_id
    assert announced["model"] == "temperature-sensor"
    assert cloud.replicas[device_id].twin.reported.values == {"temperature": 21.5, "battery": 80}


async def test_claim_rejections_name_the_reason(twins_env: TwinsEnv) -> None:
    taken, registered = unique("taken"), unique("registered")
    async with running(twins_env.service()) as service:
        service.register_claim(registered, "relay-switch", "s3cret-printed-on-the-box")
        await twins_env.claim(taken, "relay-switch")
        outcomes = {}
        for name, device_id, model, secret in [
            ("unknown model", unique("x"), "toaster", None),
            ("duplicate", taken, "relay-switch", None),
            ("wrong secret", registered, "relay-switch", "guess"),
            ("no secret", registered, "relay-switch", None),
            ("wrong model", registered, "thermostat", "s3cret-printed-on-the-box"),
        ]:
            with pytest.raises(ClaimRejectedError) as caught:
                await twins_env.claim(device_id, model, claim_secret=secret)
            outcomes[name] = (caught.value.answer["code"], caught.value.reason)
        accepted = await twins_env.claim(
            registered, "relay-switch", claim_secret="s3cret-printed-on-the-box"
        )
    assert outcomes == {
        "unknown model": (404, "model_unknown"),
        "duplicate": (409, "duplicate_id"),
        "wrong secret": (403, "bad_claim"),
        "no secret": (403, "bad_claim"),
        "wrong model": (403, "bad_claim"),
    }
    assert accepted.device_id == registered


async def test_registration_can_be_required(twins_env: TwinsEnv) -> None:
    async with running(twins_env.service(require_registration=True)):
        with pytest.raises(ClaimRejectedError) as caught:
            await twins_env.claim(unique("stranger"), "relay-switch")
    assert caught.value.reason == "bad_claim"
    assert "not registered" in str(caught.value.answer["detail"])


async def test_malformed_claim_gets_bad_request(twins_env: TwinsEnv) -> None:
    settings = twins_env.settings
    async with (
        running(twins_env.service()),
        aiomqtt.Client(
            twins_env.broker.host,
            twins_env.broker.port,
            username=settings.claim_username,
            password=settings.claim_password,
        ) as client,
    ):
        await client.subscribe(topics.provision_response("bad-1"), qos=1)
        await client.publish(
            topics.PROVISION_REQUEST, b'{"rid": "bad-1", "deviceId": "a/b", "model": 7}', qos=1
        )
        message = await anext(aiter(client.messages))
    assert b'"reason":"bad_request"' in message.payload
    assert b"deviceId" in message.payload


async def test_claim_credential_is_limited_to_provisioning(twins_env: TwinsEnv) -> None:
    settings = twins_env.settings
    device_id = unique("victim")
    async with running(twins_env.service()):
        credential = await twins_env.claim(device_id, "temperature-sensor")
        async with aiomqtt.Client(
            twins_env.broker.host,
            twins_env.broker.port,
            username=settings.claim_username,
            password=settings.claim_password,
            protocol=aiomqtt.ProtocolVersion.V5,
        ) as intruder:
            twin_topics = await intruder.subscribe(f"{topics.device_prefix(device_id)}/#", qos=1)
            everything = await intruder.subscribe("#", qos=1)
            provisioning = await intruder.subscribe(topics.PROVISION_RESPONSE_FILTER, qos=1)
            # Refused by the broker: the agent never sees it, so the twin stays empty.
            await intruder.publish(
                topics.device_topic(device_id, Op.REPORTED),
                b'{"rid": "forged", "patch": {"battery": 1}}',
                qos=1,
            )
        async with twins_env.device(credential) as device:
            twin = await device.get()
    assert refused(twin_topics)
    assert refused(everything)
    assert not refused(provisioning)
    assert twin["reported"] == {"$version": 0}


async def test_a_claim_holder_cannot_take_over_a_devices_session(twins_env: TwinsEnv) -> None:
    # Every device ships with the claim credential. One that watches all onboarding answers
    # and connects with a device's id as its client id must not push the device off the
    # broker (MQTT lets a new connection with a taken client id end the old one).
    settings = twins_env.settings
    device_id = unique("target")
    async with running(twins_env.service()):
        async with aiomqtt.Client(
            twins_env.broker.host,
            twins_env.broker.port,
            username=settings.claim_username,
            password=settings.claim_password,
        ) as watcher:
            await watcher.subscribe(topics.PROVISION_RESPONSE_FILTER, qos=1)
            credential = await twins_env.claim(device_id, "temperature-sensor")
            async with asyncio.timeout(10):
                seen = await anext(aiter(watcher.messages))
        assert isinstance(seen.payload, bytes)
        assert credential.client_id.encode() not in seen.payload  # sealed, like the password
        async with twins_env.device(credential) as device:
            first = await device.report({"temperature": 20.0})
            for guess in (device_id, f"{device_id}-0000000000000000"):
                async with aiomqtt.Client(
                    twins_env.broker.host,
                    twins_env.broker.port,
                    username=settings.claim_username,
                    password=settings.claim_password,
                    identifier=guess,
                ) as intruder:
                    await intruder.publish(topics.PROVISION_REQUEST, b"{}", qos=1)
            second = await device.report({"temperature": 20.5})  # still connected
    assert (first["code"], second["code"]) == (200, 200)
    assert second["version"] == first["version"] + 1


async def test_device_cannot_use_another_devices_topics(twins_env: TwinsEnv) -> None:
    alice, bob = unique("alice"), unique("bob")
    async with running(twins_env.service()):
        alice_credential = await twins_env.claim(alice, "relay-switch")
        bob_credential = await twins_env.claim(bob, "relay-switch")
        async with twins_env.device(alice_credential) as device:
            snoop = await device.client.subscribe(f"{topics.device_prefix(bob)}/#", qos=1)
            # Same client, same broker: if the forged report had passed, the agent would have
            # handled it before this one, which we wait for.
            await device.client.publish(
                topics.device_topic(bob, Op.REPORTED),
                b'{"rid": "forged", "patch": {"on": true}}',
                qos=1,
            )
            own = await device.report({"on": False})
        async with twins_env.device(bob_credential) as device:
            bob_twin = await device.get()
    assert refused(snoop)
    assert own["code"] == 200
    assert bob_twin["reported"] == {"$version": 0}


async def test_a_claim_holder_cannot_knock_the_agent_off_the_broker(twins_env: TwinsEnv) -> None:
    # The agent's client id used to be the configured one (public: `edgefleet-agent` by
    # default). A claim holder connecting with it made mosquitto end the agent's session.
    settings = twins_env.settings
    async with running(twins_env.service()) as service:
        await twins_env.claim(unique("before"), "temperature-sensor")
        assert service.metrics.broker_sessions == 1
        answered = []
        for guess in (settings.agent_client_id, "edgefleet-agent"):
            async with aiomqtt.Client(
                twins_env.broker.host,
                twins_env.broker.port,
                username=settings.claim_username,
                password=settings.claim_password,
                identifier=guess,
            ) as intruder:
                await intruder.publish(topics.PROVISION_REQUEST, b"{}", qos=1)  # connected
                credential = await twins_env.claim(unique("during"), "temperature-sensor")
                answered.append(credential.device_id)
                await intruder.publish(topics.PROVISION_REQUEST, b"{}", qos=1)  # still connected
        assert len(answered) == 2
        assert service.metrics.broker_sessions == 1  # never pushed off, never reconnected
    client_id_file = settings.data_dir / "agent-client-id"
    assert client_id_file.stat().st_mode & 0o777 == 0o600
    assert client_id_file.read_text().startswith(f"{settings.agent_client_id}-")


async def test_oversized_claim_gets_a_clear_refusal(twins_env: TwinsEnv) -> None:
    settings = twins_env.settings
    padding = "x" * 5 * 1024  # over the 4 KiB claim limit
    async with (
        running(twins_env.service()),
        aiomqtt.Client(
            twins_env.broker.host,
            twins_env.broker.port,
            username=settings.claim_username,
            password=settings.claim_password,
        ) as client,
    ):
        await client.subscribe(topics.provision_response("big-1"), qos=1)
        request = {"deviceId": "big", "model": "thermostat", "claimSecret": padding, "rid": "big-1"}
        await client.publish(topics.PROVISION_REQUEST, json.dumps(request).encode(), qos=1)
        async with asyncio.timeout(10):
            message = await anext(aiter(client.messages))
    assert isinstance(message.payload, bytes)
    answer = json.loads(message.payload)
    assert (answer["rid"], answer["code"], answer["reason"]) == ("big-1", 413, "too_large")
    assert "4096" in answer["detail"]


async def _until(check: Callable[[], bool]) -> None:
    async def checked() -> bool:
        return check()

    await eventually_async(
        checked, what=getattr(check, "__name__", "the check"), within=READY_TIMEOUT, every=0.02
    )


async def test_a_claim_of_another_nodes_device_is_left_to_it(
    twins_env: TwinsEnv, caplog: pytest.LogCaptureFixture
) -> None:
    # On a shared broker the owner (named on the device's broker user) answers; we stay
    # silent, so the device gets exactly one answer.
    device_id = unique("foreign")
    await twins_env.broker.dynsec_command(
        {
            "command": "createClient",
            "username": f"device:{device_id}",
            "password": "known-to-nobody",
            "textname": "edgefleet-node:other-node",
        }
    )
    caplog.set_level(logging.INFO, logger="edge_agent.twins.onboarding")
    settings = twins_env.settings
    async with (
        running(twins_env.service()) as service,
        aiomqtt.Client(
            twins_env.broker.host,
            twins_env.broker.port,
            username=settings.claim_username,
            password=settings.claim_password,
        ) as watcher,
    ):
        await watcher.subscribe(topics.PROVISION_RESPONSE_FILTER, qos=1)
        request = {
            "rid": "foreign-claim-1",
            "deviceId": device_id,
            "model": "thermostat",
            "responseKey": base64.urlsafe_b64encode(os.urandom(32)).decode(),
        }
        await watcher.publish(topics.PROVISION_REQUEST, json.dumps(request), qos=1)
        left = f"device {device_id} belongs to node other-node on this broker; left to it"
        await _until(lambda: left in caplog.text)
        # Claims are answered in order: the first answer the watcher sees is the next claim's.
        ours = await twins_env.claim(unique("own"), "thermostat")
        async with asyncio.timeout(READY_TIMEOUT):
            seen = await anext(aiter(watcher.messages))
    assert json.loads(_bytes(seen.payload))["deviceId"] == ours.device_id
    assert service.twins.device(device_id) is None
    owner = await twins_env.broker.dynsec_command(
        {"command": "getClient", "username": f"device:{device_id}"}
    )
    assert owner["data"]["client"]["textname"] == "edgefleet-node:other-node"


async def test_a_refused_claim_frees_the_device_for_another_node(twins_env: TwinsEnv) -> None:
    device_id = unique("refused")
    async with running(twins_env.service()):
        with pytest.raises(ClaimRejectedError) as caught:
            await twins_env.claim(device_id, "toaster")
    assert caught.value.reason == "model_unknown"
    answer = await twins_env.broker.dynsec_command(
        {"command": "getClient", "username": f"device:{device_id}"}
    )
    assert answer.get("error") == "Client not found"


async def test_a_half_made_onboarding_of_this_node_is_taken_over(twins_env: TwinsEnv) -> None:
    device_id = unique("half")
    await twins_env.broker.dynsec_command(
        {
            "command": "createClient",
            "username": f"device:{device_id}",
            "password": "from-a-crashed-attempt",
            "textname": f"edgefleet-node:{twins_env.settings.node_name}",
        }
    )
    async with running(twins_env.service()):
        credential = await twins_env.claim(device_id, "thermostat")
        async with twins_env.device(credential) as device:
            answer = await device.report({"temperature": 19.0})
    assert answer["code"] == 200


def _bytes(payload: object) -> bytes:
    assert isinstance(payload, bytes)
    return payload
