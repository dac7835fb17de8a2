"""The agent's MQTT version against a real mosquitto: 5 by default, 3.1.1 on request or fallback.

mosquitto 2 offers MQTT 5 and has no switch to refuse it, so a broker without it is a proxy
in front of mosquitto that answers an MQTT 5 CONNECT the way a 3.1.1 broker does (CONNACK
return code 1, "unacceptable protocol version", then close) and passes everything else through.
Which version a session really used is read on the wire: the same proxy, passing everything
through, records the protocol level of each CONNECT that mosquitto accepted (5 or 4, 3.1.1).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import aiomqtt
import pytest

from edge_agent.twins import TwinMqttService
from edge_agent.twins.mqtt_service import MqttVersionCollector
from edge_agent.twins.topics import Op, device_topic
from tests.harness import mqtt
from tests.harness.waiting import eventually_async
from tests.integration.twins.conftest import READY_TIMEOUT, TwinsEnv, running, unique

pytestmark = pytest.mark.mqtt
T = TypeVar("T")

V3_REFUSAL = b"\x20\x02\x00\x01"
"""A 3.1.1 CONNACK: no session present, return code 1 (unacceptable protocol version)."""


def _value(probe: Callable[[], T]) -> Callable[[], Awaitable[T]]:
    async def probed() -> T:
        return probe()

    return probed


def agent_client_id(service: TwinMqttService) -> str:
    return service.settings.client_id_file.read_text().strip()


def protocol_gauge(service: TwinMqttService) -> float:
    (family,) = MqttVersionCollector(service).collect()
    return family.samples[0].value


class MqttProxy:
    """Forwards MQTT connections to `target` and records each CONNECT's client id and level.

    With `refuse_v5`, answers an MQTT 5 CONNECT like a 3.1.1 broker instead (and closes).
    """

    def __init__(self, target: mqtt.Broker, *, refuse_v5: bool) -> None:
        self.target = target
        self.refuse_v5 = refuse_v5
        self.refused = 0
        self.port = 0
        self.connects: list[tuple[str, int]] = []
        """(client id, protocol level) of every CONNECT passed on, in order."""

    def levels(self, client_id: str) -> list[int]:
        """The protocol level of each connection `client_id` made through the proxy."""
        return [level for who, level in self.connects if who == client_id]

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            try:
                connect = await self._read_packet(reader)
                # CONNECT: type 0x10, then the name "MQTT" (2-byte length) and the level byte
                body_start = len(connect) - self._remaining(connect)
                level = connect[body_start + 6]
                if self.refuse_v5 and level == 5:  # MQTT 5's protocol level
                    self.refused += 1
                    writer.write(V3_REFUSAL)
                    await writer.drain()
                    return
                self.connects.append((self._client_id(connect, body_start, level), level))
                up_reader, up_writer = await asyncio.open_connection(
                    self.target.host, self.target.port
                )
                up_writer.write(connect)
                try:
                    async with asyncio.TaskGroup() as group:
                        group.create_task(self._pipe(reader, up_writer), name="proxy.up")
                        group.create_task(self._pipe(up_reader, writer), name="proxy.down")
                finally:
                    up_writer.transport.abort()
            finally:
                writer.transport.abort()

    @staticmethod
    def _client_id(connect: bytes, body_start: int, level: int) -> str:
        at = body_start + 10  # name (6), level, flags, keepalive (2)
        if level == 5:  # then the properties, after their varint length
            length, shift = 0, 0
            while True:
                byte = connect[at]
                at += 1
                length |= (byte & 0x7F) << shift
                shift += 7
                if not byte & 0x80:
                    break
            at += length
        size = int.from_bytes(connect[at : at + 2], "big")
        return connect[at + 2 : at + 2 + size].decode()

    @staticmethod
    def _remaining(packet: bytes) -> int:
        value, shift = 0, 0
        for byte in packet[1:5]:
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        return value

    @staticmethod
    async def _read_packet(reader: asyncio.StreamReader) -> bytes:
        head = await reader.readexactly(1)
        length, shift = 0, 0
        for _ in range(4):
            byte = await reader.readexactly(1)
            head += byte
            length |= (byte[0] & 0x7F) << shift
            shift += 7
            if not byte[0] & 0x80:
                break
        return head + await reader.readexactly(length)

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.transport.abort()


@contextlib.asynccontextmanager
async def mqtt_proxy(broker: mqtt.Broker, *, refuse_v5: bool = False) -> AsyncIterator[MqttProxy]:
    proxy = MqttProxy(broker, refuse_v5=refuse_v5)
    server = await asyncio.start_server(proxy.serve, "127.0.0.1", 0)
    proxy.port = server.sockets[0].getsockname()[1]
    try:
        yield proxy
    finally:
        server.close()
        await server.wait_closed()


def through(proxy: MqttProxy, env: TwinsEnv) -> TwinsEnv:
    """`env` with the agent and its devices dialling the proxy."""
    return dataclasses.replace(
        env,
        broker=dataclasses.replace(env.broker, port=proxy.port),
        settings=dataclasses.replace(env.settings, broker_port=proxy.port),
    )


async def test_the_agent_speaks_mqtt5_with_mosquitto_and_devices_keep_311(
    twins_env: TwinsEnv,
) -> None:
    async with mqtt_proxy(twins_env.broker) as proxy:
        env = through(proxy, twins_env)
        async with running(env.service()) as service:
            assert service.mqtt_version == "5"
            assert protocol_gauge(service) == 5  # MQTT 5's protocol level
            assert proxy.levels(agent_client_id(service)) == [5]
            # The simulator (a 3.1.1 client) claims, reports and reads its twin.
            credential = await env.claim(unique("meter"), "power-meter")
            async with env.device(credential) as device:
                answer = await device.report({"voltage": 230.5})
                assert answer["code"] == 200, answer
                twin = await device.get()
            assert proxy.levels(credential.client_id) == [4]
            assert twin["reported"]["voltage"] == 230.5
    assert service.mqtt_version is None
    assert protocol_gauge(service) == 0


async def test_an_mqtt5_device_talks_to_a_311_agent(twins_env: TwinsEnv) -> None:
    async with mqtt_proxy(twins_env.broker) as proxy:
        env = through(proxy, twins_env)
        async with running(env.service(mqtt_version="3.1.1")) as service:
            credential = await env.claim(unique("meter"), "power-meter")
            device_id = credential.device_id
            async with aiomqtt.Client(
                env.broker.host,
                env.broker.port,
                username=credential.username,
                password=credential.password,
                identifier=credential.client_id,
                protocol=aiomqtt.ProtocolVersion.V5,
            ) as client:
                await client.subscribe(device_topic(device_id, Op.RESULT), qos=1)
                await client.publish(
                    device_topic(device_id, Op.REPORTED),
                    b'{"rid": "v5-1", "patch": {"voltage": 231.0}}',
                    qos=1,
                )
                async with asyncio.timeout(READY_TIMEOUT):
                    message = await anext(aiter(client.messages))
        assert proxy.levels(agent_client_id(service)) == [4]
        assert proxy.levels(credential.client_id) == [5]
    answer = json.loads(message.payload)
    assert (answer["rid"], answer["code"]) == ("v5-1", 200), answer


async def test_mqtt_version_311_is_kept(twins_env: TwinsEnv) -> None:
    async with mqtt_proxy(twins_env.broker) as proxy:
        env = through(proxy, twins_env)
        async with running(env.service(mqtt_version="3.1.1")) as service:
            assert service.mqtt_version == "3.1.1"
            assert protocol_gauge(service) == 4  # 3.1.1's protocol level
            credential = await env.claim(unique("relay"), "relay-switch")
            async with env.device(credential) as device:
                assert (await device.report({"switchCount": 1}))["code"] == 200
        assert proxy.levels(agent_client_id(service)) == [4]


async def test_auto_falls_back_to_311_when_the_broker_refuses_5(
    twins_env: TwinsEnv, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edge_agent.twins.mqtt_service")
    async with mqtt_proxy(twins_env.broker, refuse_v5=True) as proxy:
        env = through(proxy, twins_env)
        async with running(env.service()) as service:
            assert service.mqtt_version == "3.1.1"
            assert protocol_gauge(service) == 4
            credential = await env.claim(unique("relay"), "relay-switch")
            async with env.device(credential) as device:
                assert (await device.report({"switchCount": 7}))["code"] == 200
        assert proxy.refused == 1
        assert proxy.levels(agent_client_id(service)) == [4]
    assert "the broker refused MQTT 5" in caplog.text
    assert "Unsupported protocol version" in caplog.text


async def test_mqtt_version_5_against_a_broker_without_it_says_why(
    twins_env: TwinsEnv, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="edge_agent.twins.mqtt_service")
    async with mqtt_proxy(twins_env.broker, refuse_v5=True) as proxy, asyncio.TaskGroup() as group:
        service = twins_env.service(
            broker_port=proxy.port, mqtt_version="5", reconnect_initial=0.05
        )
        task = group.create_task(service.run(), name="test.twins-service")
        try:
            await eventually_async(
                _value(lambda: proxy.refused),
                lambda refused: refused >= 2,  # it keeps retrying 5, never 3.1.1
                what="two refused MQTT 5 connects",
                within=READY_TIMEOUT,
            )
        finally:
            task.cancel()
    assert not service.ready.is_set()
    assert service.mqtt_version is None
    assert "the broker refused the connection: Unsupported protocol version (reason code 132)" in (
        caplog.text
    )
    assert 'set [twins] mqtt_version = "auto" or "3.1.1"' in caplog.text
    assert proxy.levels(agent_client_id(service)) == []


async def test_the_brokers_reasons_are_logged_by_name(
    twins_env: TwinsEnv, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="edge_agent.twins.mqtt_service")
    service = twins_env.service(reconnect_initial=0.05, reconnect_max=0.2)
    user = twins_env.settings.agent_username
    async with running(service):
        # An operator disables the agent's broker user: mosquitto cuts the session off, then
        # refuses the agent's reconnects, each with an MQTT 5 reason.
        answer = await twins_env.broker.dynsec_command(
            {"command": "disableClient", "username": user}
        )
        assert "error" not in answer, answer
        await eventually_async(
            _value(lambda: "the broker refused the connection" in caplog.text),
            what="a refused reconnect logged",
            within=READY_TIMEOUT,
        )
        assert not service.ready.is_set()
        answer = await twins_env.broker.dynsec_command(
            {"command": "enableClient", "username": user}
        )
        assert "error" not in answer, answer
        async with asyncio.timeout(READY_TIMEOUT):
            await service.ready.wait()  # and it comes back
    assert (
        "broker session (MQTT 5) lost: the broker ended the session: Administrative action "
        "(reason code 152): an operator acted on the broker"
    ) in caplog.text
    assert (
        "the broker refused the connection: Not authorized (reason code 135): is the agent's "
        "dynamic-security client disabled"
    ) in caplog.text


@pytest.mark.parametrize(
    ("mqtt_version", "session_expiry", "version_after"),
    [
        # 1, the two queued reports, then the one sent after the restart
        ("5", None, 4),
        ("3.1.1", None, 4),
        # The control: an MQTT 5 session that ends with the connection loses the queued two.
        ("5", 0, 2),
    ],
)
async def test_reports_sent_while_the_agent_is_stopped_arrive_after_its_restart(
    twins_env: TwinsEnv, mqtt_version: str, session_expiry: int | None, version_after: int
) -> None:
    changes: dict[str, object] = {"mqtt_version": mqtt_version}
    if session_expiry is not None:
        changes["session_expiry"] = session_expiry
    credential = None
    async with running(twins_env.service(**changes)) as service:
        assert service.mqtt_version == mqtt_version
        credential = await twins_env.claim(unique("relay"), "relay-switch")
        async with twins_env.device(credential) as device:
            assert (await device.report({"switchCount": 1}))["code"] == 200
    # The agent is stopped; the device sends two QoS 1 reports and nobody answers them yet.
    async with twins_env.device(credential) as device:
        for count in (2, 3):
            await device.client.publish(
                device.topic(Op.REPORTED),
                json.dumps({"rid": f"away-{count}", "patch": {"switchCount": count}}),
                qos=1,
            )
        async with running(twins_env.service(**changes)):
            # The broker hands the queued reports over before anything sent after the restart.
            marker = await device.report({"switchCount": 9}, rid="after")
            twin = await device.get()
    assert marker["code"] == 200
    assert marker["version"] == version_after, marker
    assert twin["reported"]["switchCount"] == 9
