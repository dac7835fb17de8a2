"""`SessionWire` on a real mosquitto: the answer window, the order, and a session's end."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from edge_agent.twins import mqtt_service
from edge_agent.twins.session_wire import SessionWire
from tests.harness import mqtt
from tests.integration.twins.conftest import TwinsEnv, running, unique

TIMEOUT = 30.0  # a guard against hangs on a busy CI box, not a measurement


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[mqtt.Broker]:
    broker = mqtt.start(tmp_path / "mosquitto")
    try:
        yield broker
    finally:
        broker.stop()


def agent(
    broker: mqtt.Broker, *, window: int, v5: bool = True
) -> tuple[aiomqtt.Client, SessionWire]:
    protocol = aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311
    client = broker.client(identifier="wire-agent", protocol=protocol)
    client._client.manual_ack_set(on=True)  # as the agent's session does
    wire = SessionWire(client, max_queued=100, window=window)
    assert wire.install()
    return client, wire


@pytest.mark.parametrize("v5", [True, False])
async def test_answers_over_the_window_wait_and_arrive_in_order(
    broker: mqtt.Broker,
    v5: bool,  # noqa: FBT001
) -> None:
    client, wire = agent(broker, window=3, v5=v5)
    async with asyncio.timeout(TIMEOUT), broker.client(identifier="listener") as listener, client:
        wire.attach()
        await listener.subscribe("answers/#", qos=1)
        async with asyncio.TaskGroup() as group:
            for i in range(40):
                group.create_task(
                    wire.publish(f"answers/{i}", b"%d" % i, retain=False), name=f"answer-{i}"
                )
            await asyncio.sleep(0)  # every publish ran up to its wait
            assert (wire.in_flight, wire.waiting) == (3, 37)
        assert (wire.in_flight, wire.waiting) == (0, 0)
        # without a task: called back once each, at the PUBACK, with nothing wrong
        outcomes: list[BaseException | None] = []
        all_done = asyncio.Event()

        def done(error: BaseException | None) -> None:
            outcomes.append(error)
            if len(outcomes) == 5:
                all_done.set()

        for i in range(5):
            wire.publish_nowait(f"answers/{40 + i}", b"%d" % (40 + i), retain=False, done=done)
        assert outcomes == []
        assert (wire.in_flight, wire.waiting) == (3, 2)
        await all_done.wait()
        assert outcomes == [None] * 5
        seen = []
        async for message in listener.messages:
            seen.append((str(message.topic), message.payload))
            if len(seen) == 45:
                break
        assert seen == [(f"answers/{i}", b"%d" % i) for i in range(45)]
        # aiomqtt's own publishes still get their PUBACK through paho
        await client.publish("answers/aiomqtt", b"x", qos=1)


async def test_device_messages_arrive_in_order_and_are_acknowledged(broker: mqtt.Broker) -> None:
    client, wire = agent(broker, window=10)
    async with asyncio.timeout(TIMEOUT), broker.client(identifier="device") as device, client:
        wire.attach()
        await client.subscribe("devices/#", qos=1)
        for i in range(20):
            await device.publish(f"devices/d/{i}", b"%d" % i, qos=1)
        got = [await wire.next() for _ in range(20)]
        assert [(m.topic, m.payload, m.qos) for m in got] == [
            (f"devices/d/{i}", b"%d" % i, 1) for i in range(20)
        ]
        assert len({m.mid for m in got}) == 20
        wire.ack(got)
        await device.publish("devices/d/last", b"z", qos=1)
        last = await wire.next()
        assert last.payload == b"z"


async def test_a_lost_session_fails_waiting_answers_and_the_reader(broker: mqtt.Broker) -> None:
    client, wire = agent(broker, window=1)
    async with asyncio.timeout(TIMEOUT):
        await client.__aenter__()
        try:
            wire.attach()
            async with asyncio.TaskGroup() as group:
                reader = group.create_task(read_fails(wire), name="reader")
                await asyncio.sleep(0)  # the reader waits
                broker.process.popen.kill()  # the broker dies: no DISCONNECT
                sends = [
                    group.create_task(publish_fails(wire, f"a/{i}"), name=f"answer-{i}")
                    for i in range(5)
                ]
            assert reader.result()
            assert all(send.result() for send in sends)
            assert (wire.in_flight, wire.waiting) == (1, 0)  # none sent again, none kept
            outcomes: list[BaseException | None] = []
            wire.publish_nowait("a/late", b"x", retain=False, done=outcomes.append)
            assert len(outcomes) == 1  # at once: the session is over
            assert isinstance(outcomes[0], aiomqtt.MqttError)
            with pytest.raises(aiomqtt.MqttError):
                await wire.publish("a/after", b"x", retain=False)
        finally:
            await client.__aexit__(None, None, None)


async def read_fails(wire: SessionWire) -> bool:
    with pytest.raises(aiomqtt.MqttError, match="Disconnected"):
        await wire.next()
    return True


async def publish_fails(wire: SessionWire, topic: str) -> bool:
    with pytest.raises(aiomqtt.MqttError):
        await wire.publish(topic, b"x", retain=False)
    return True


async def test_without_pahos_internals_the_agent_serves_through_aiomqtt(
    twins_env: TwinsEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A paho release that renamed its internals: install refuses, aiomqtt's path serves.
    monkeypatch.setattr(SessionWire, "install", lambda _self: False)
    sessions: list[object] = []
    monkeypatch.setattr(mqtt_service, "_Messages", _Counted(mqtt_service._Messages, sessions))
    device_id = unique("relay")
    async with running(twins_env.service()):
        credential = await twins_env.claim(device_id, "relay-switch")
        async with twins_env.device(credential) as device:
            answers = [await device.report({"switchCount": i}, rid=f"r-{i}") for i in range(1, 6)]
            again = await device.report({"switchCount": 5}, rid="r-5")
            twin = await device.get()
    assert [a["version"] for a in answers] == [1, 2, 3, 4, 5]
    assert again == answers[-1]
    assert twin["reported"]["$version"] == 5
    assert len(sessions) == 1  # served by aiomqtt's path


class _Counted:
    def __init__(self, kind: Any, made: list[object]) -> None:
        self._kind, self._made = kind, made

    def __call__(self, *args: Any) -> object:
        made = self._kind(*args)
        self._made.append(made)
        return made
