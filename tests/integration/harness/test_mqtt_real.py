"""The MQTT broker the tests run against is a real mosquitto, with real access control."""

from __future__ import annotations

import asyncio
import secrets

import aiomqtt
import pytest
from paho.mqtt.reasoncodes import ReasonCode

from tests.harness import mqtt

pytestmark = pytest.mark.mqtt


async def test_publish_and_receive(mqtt_broker: mqtt.Broker) -> None:
    topic = f"test/{secrets.token_hex(6)}/hello"
    async with mqtt_broker.client() as subscriber, mqtt_broker.client() as publisher:
        await subscriber.subscribe(topic, qos=1)
        await publisher.publish(topic, b"payload-1", qos=1)
        async with asyncio.timeout(5):
            message = await anext(aiter(subscriber.messages))
    assert str(message.topic) == topic
    assert message.payload == b"payload-1"


async def test_dynsec_refuses_anonymous(mqtt_dynsec_broker: mqtt.Broker) -> None:
    anonymous = aiomqtt.Client(mqtt_dynsec_broker.host, mqtt_dynsec_broker.port)
    with pytest.raises(aiomqtt.MqttError, match=r"[Nn]ot authori[sz]ed|Bad user name"):
        async with anonymous:
            pass


async def test_dynsec_client_is_limited_to_its_topics(mqtt_dynsec_broker: mqtt.Broker) -> None:
    device, password = f"dev-{secrets.token_hex(4)}", secrets.token_urlsafe(12)
    role = f"role-{device}"
    broker = mqtt_dynsec_broker
    assert "error" not in await broker.dynsec_command({"command": "createRole", "rolename": role})
    for acl in ("publishClientSend", "subscribePattern", "publishClientReceive"):
        response = await broker.dynsec_command(
            {
                "command": "addRoleACL",
                "rolename": role,
                "acltype": acl,
                "topic": f"devices/{device}/#",
                "allow": True,
            }
        )
        assert "error" not in response, response
    created = await broker.dynsec_command(
        {
            "command": "createClient",
            "username": device,
            "password": password,
            "roles": [{"rolename": role}],
        }
    )
    assert "error" not in created, created

    own = f"devices/{device}/telemetry"
    other = "devices/someone-else/telemetry"
    async with aiomqtt.Client(
        broker.host,
        broker.port,
        username=device,
        password=password,
        protocol=aiomqtt.ProtocolVersion.V5,
    ) as client:
        granted_own = await client.subscribe(own, qos=1)
        granted_other = await client.subscribe(other, qos=1)
        await client.publish(own, b"21.5", qos=1)
        async with asyncio.timeout(5):
            message = await anext(aiter(client.messages))
    assert str(message.topic) == own
    assert message.payload == b"21.5"
    assert [reason_value(g) for g in granted_own] == [1]
    assert all(reason_value(g) >= 0x80 for g in granted_other), "foreign topic refused"


def reason_value(granted: int | ReasonCode) -> int:
    """MQTT 5 SUBACKs carry reason codes: 0-2 is the granted QoS, >= 0x80 a refusal."""
    return granted if isinstance(granted, int) else granted.value
