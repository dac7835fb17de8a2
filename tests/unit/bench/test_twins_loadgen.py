"""twins-loadgen (the twins bench's Go load generator) against a real mosquitto.

Raw mode counts every message once; twin mode speaks the device protocol of docs/mqtt.md to
a stand-in agent: reports on ``twin/reported`` with a rid, in flight until the answer on
``twin/result``, and a 503 answer makes it publish the same rid again.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import mqtt

BENCH = Path(__file__).resolve().parents[3] / "scripts" / "bench"
sys.path.insert(0, str(BENCH))

import twins_bench  # noqa: E402 - from scripts/bench, added above


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[mqtt.Broker]:
    # Go is on every machine the tests run on (scripts/setup needs it for kube-build).
    assert shutil.which("go"), "the Go toolchain is missing: run scripts/setup"
    twins_bench.build_loadgen()
    started = mqtt.start(tmp_path_factory.mktemp("mosquitto"))
    yield started
    started.stop()


def url(broker: mqtt.Broker) -> str:
    return f"tcp://{broker.host}:{broker.port}"


async def test_raw_mode_counts_each_message_once(broker: mqtt.Broker) -> None:
    answer = await twins_bench.loadgen(
        {
            "mode": "raw",
            "broker": url(broker),
            "publishers": 3,
            "per_device": 400,
            "window": 8,
            "timeout_s": 60,
            "resend_after_s": 5.0,
            "run": "t1",
            "username": "",
            "password": "",
        }
    )
    # Each message counted once: delivered, or given up as dropped by the broker.
    assert answer["messages"] + answer["lost"] == 1200
    assert answer["messages"] > 0


async def test_twin_mode_waits_for_answers_and_resends_on_503(broker: mqtt.Broker) -> None:
    seen: Counter[str] = Counter()
    ready = asyncio.Event()

    async def agent() -> None:
        async with broker.client(identifier="stand-in-agent") as client:
            await client.subscribe("edgefleet/devices/+/twin/reported", qos=1)
            ready.set()
            async for message in client.messages:
                device = str(message.topic).split("/")[2]
                assert isinstance(message.payload, bytes)
                body: dict[str, Any] = json.loads(message.payload)
                assert set(body) == {"rid", "patch"}
                assert body["patch"] == {"switchCount": int(body["rid"][1:])}
                key = f"{device}/{body['rid']}"
                seen[key] += 1
                # Every third report is refused once, as a full outbox would.
                code = 503 if int(body["rid"][1:]) % 3 == 0 and seen[key] == 1 else 200
                await client.publish(
                    f"edgefleet/devices/{device}/twin/result",
                    json.dumps({"rid": body["rid"], "op": "reported", "code": code}),
                    qos=1,
                )

    async with asyncio.TaskGroup() as group:
        stand_in = group.create_task(agent(), name="stand-in-agent")
        await ready.wait()
        answer = await twins_bench.loadgen(
            {
                "mode": "twin",
                "broker": url(broker),
                "per_device": 30,
                "window": 4,
                "timeout_s": 60,
                "resend_after_s": 3.0,
                "property": "switchCount",
                "devices": [
                    {"device_id": f"d{i}", "username": "", "password": "", "client_id": f"d{i}"}
                    for i in range(2)
                ],
            }
        )
        stand_in.cancel()
    assert answer["messages"] == 60
    assert answer["refused"] == 20  # rids 3, 6, ..., 30 of each device
    assert {key: n for key, n in seen.items() if n != 1} == {
        f"d{d}/r{n}": 2 for d in range(2) for n in range(3, 31, 3)
    }
    assert len(seen) == 60
    assert answer["answer_p99_ms"] >= answer["answer_p50_ms"] > 0
