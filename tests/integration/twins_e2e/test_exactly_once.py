"""10,000 reported updates through link cuts and two kill -9s: each reaches the cloud once.

Twenty devices report 500 values each, a window of requests in flight per device. Meanwhile
the agent's link to the cloud is cut and restored at random (a TCP proxy resets every
connection and refuses new ones while cut), and the agent is killed with SIGKILL twice and
started again. Then:

- every report got exactly one accepted answer, and the accepted versions are 1..500 for
  each device: the edge applied each report once;
- the cloud's reported ``$version`` is 500 for each device: it applied each of the 500
  changes once (a duplicate never moves it; a lost change would leave a gap that is
  dead-lettered, and there are none);
- the edge and the cloud hold the same values and per-key metadata.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time

import pytest

from tests.harness.device_reporter import Reporter
from tests.integration.twins_e2e.conftest import NODE, System

pytestmark = pytest.mark.mqtt

DEVICES = 20
REPORTS = 500  # per device: 10,000 in all
KILLS_AT = (0.3, 0.65)  # share of all answers when the agent is killed


async def chaos(system: System, reporters: list[Reporter], stop: asyncio.Event) -> dict[str, int]:
    """Cut and restore the link at random; kill -9 the agent at the planned points."""
    rng = random.Random(11)  # noqa: S311 - fault schedule, not cryptography
    total = DEVICES * REPORTS
    kills = list(KILLS_AT)
    counts = {"cuts": 0, "kills": 0}
    while not stop.is_set():
        done = sum(r.done for r in reporters) / total
        if kills and done >= kills[0]:
            kills.pop(0)
            system.agent.kill()
            counts["kills"] += 1
            await asyncio.sleep(rng.uniform(0.1, 0.5))
            await system.start_agent()
            continue
        await asyncio.sleep(rng.uniform(0.3, 1.2))
        system.proxy.cut()
        counts["cuts"] += 1
        await asyncio.sleep(rng.uniform(0.1, 1.0))
        system.proxy.restore()
    return counts


@pytest.mark.timeout(400)  # 10,000 updates with chaos: ~60-120 s alone, far more on busy cores
async def test_every_update_reaches_the_cloud_exactly_once(system: System) -> None:
    started = time.monotonic()
    credentials = [await system.claim(f"relay-{i}", "relay-switch") for i in range(DEVICES)]
    for credential in credentials:
        await system.wait_device(credential.device_id)
    devices = [system.device(credential, timeout=30.0) for credential in credentials]
    for device in devices:
        await device.__aenter__()
    reporters = [
        Reporter(device=device, count=REPORTS, patch=lambda n: {"switchCount": n})
        for device in devices
    ]
    stop = asyncio.Event()
    try:
        async with asyncio.TaskGroup() as group:
            faults = group.create_task(chaos(system, reporters, stop), name="test.chaos")
            runs = [
                group.create_task(r.run(), name=f"test.report[{i}]")
                for i, r in enumerate(reporters)
            ]
            await asyncio.gather(*runs)
            stop.set()
            counts = await faults
    finally:
        for device in devices:
            await device.__aexit__(None, None, None)
    system.proxy.restore()
    reported = time.monotonic() - started
    assert counts["kills"] == 2
    assert counts["cuts"] >= 3

    for reporter in reporters:
        answers = reporter.answers
        assert len(answers) == REPORTS
        assert {a["code"] for a in answers.values()} == {200}
        # Each accepted once: the versions handed out are exactly 1..REPORTS.
        assert sorted(a["version"] for a in answers.values()) == list(range(1, REPORTS + 1))

    await system.wait_synced()
    for reporter in reporters:
        device_id = reporter.device.device_id
        cloud = await system.cloud_twin(device_id, reported=REPORTS)
        edge = await system.edge_twin(device_id)
        assert cloud["reported"]["$version"] == REPORTS  # no change lost, none applied twice
        assert edge["reported"]["$version"] == REPORTS
        assert _values(cloud["reported"]) == _values(edge["reported"])
        assert _key_metadata(cloud["reported"]) == _key_metadata(edge["reported"])
    status, page = await system.api("GET", f"/api/v1/devices?node={NODE}&limit=100")
    assert status == 200
    assert len(page["items"]) == DEVICES
    assert {item["reportedVersion"] for item in page["items"]} == {REPORTS}
    assert system.server.metric('tunnel_server_twins_records_total{result="rejected"}') == 0
    sys.stderr.write(f"10,000 reports with faults in {reported:.1f} s: {counts}\n")


def _values(section: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in section.items() if not k.startswith("$")}


def _key_metadata(section: dict[str, object]) -> dict[str, object]:
    metadata = section["$metadata"]
    assert isinstance(metadata, dict)
    return {k: v for k, v in metadata.items() if not k.startswith("$")}
