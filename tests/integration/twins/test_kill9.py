"""Every accepted report reaches the cloud exactly once, through faults and two kill -9s.

Under MQTT 5 (a session expiry interval) as under 3.1.1 (``clean_session=false``): the report a
device sends just before a kill is queued by the broker and delivered after the restart.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from device_models import Replica, Role, TwinChange, apply_change
from edge_agent.twins.simulator import SimulatedDevice
from edge_agent.twins.topics import Op
from tests.harness.waiting import eventually_async
from tests.integration.twins.conftest import READY_TIMEOUT, TwinsEnv, unique

pytestmark = pytest.mark.mqtt

REPO = Path(__file__).resolve().parents[3]
REPORTS = 60
KILL_AT = (20, 40)


class AgentProcess:
    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.integration.twins.agent_proc",
            json.dumps(self.config),
            cwd=REPO,
            stdout=asyncio.subprocess.PIPE,
        )
        assert self.proc.stdout is not None
        async with asyncio.timeout(READY_TIMEOUT):
            line = await self.proc.stdout.readline()
        assert line == b"READY\n", line

    async def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)  # no cleanup of any kind
        await self.proc.wait()


class Cloud:
    """Reads the agent's cloud file and applies it as the cloud would."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.replicas: dict[str, Replica] = {}
        self.applied: list[tuple[str, int]] = []
        self.redelivered = 0
        self.lines = 0

    def catch_up(self) -> None:
        if not self.path.exists():
            return
        lines = self.path.read_text().splitlines()
        for line in lines[self.lines :]:
            for record in json.loads(line):
                if record["kind"] == "twin-change":
                    self.apply(record["device"], TwinChange.from_json(record["change"]))
        self.lines = len(lines)

    def apply(self, device: str, change: TwinChange) -> None:
        replica = self.replicas.get(device) or Replica(origin="cloud", role=Role.CLOUD)
        result = apply_change(replica, change)  # SequenceGapError: a change was lost
        self.replicas[device] = result.replica
        if result.applied:
            self.applied.append(change.id)
        else:
            self.redelivered += 1


async def report_until_answered(device: SimulatedDevice, count: int) -> dict[str, Any]:
    """What a careful device does: resend with the same rid until it gets an answer."""
    while True:
        try:
            async with asyncio.timeout(5):
                return await device.report({"switchCount": count}, rid=f"r{count}")
        except TimeoutError:
            continue


@pytest.mark.parametrize("mqtt_version", ["5", "3.1.1"])
async def test_exactly_once_through_kill9_and_a_flaky_cloud(
    twins_env: TwinsEnv, tmp_path: Path, mqtt_version: str
) -> None:
    settings = {
        key: value
        for key, value in asdict(twins_env.settings).items()
        if key not in {"data_dir", "durability", "outbox", "models_dir"}
    }
    settings["mqtt_version"] = mqtt_version
    cloud_file = tmp_path / "cloud.jsonl"
    config = {
        "settings": settings,
        "data_dir": str(tmp_path / "agent"),
        "cloud": str(cloud_file),
        "fail_before": 0.2,
        "fail_after": 0.2,
    }
    agent = AgentProcess(config)
    cloud = Cloud(cloud_file)
    device_id = unique("relay")
    answers = []
    await agent.start()
    try:
        credential = await twins_env.claim(device_id, "relay-switch")
        async with twins_env.device(credential) as device:
            for count in range(REPORTS):
                if count in KILL_AT:
                    await device.client.publish(
                        device.topic(Op.REPORTED),
                        json.dumps({"rid": f"r{count}", "patch": {"switchCount": count}}),
                        qos=1,
                    )
                    await agent.kill()
                    await agent.start()
                answers.append(await report_until_answered(device, count))
            twin = await device.get()

        async def applied() -> int:
            cloud.catch_up()
            return len(cloud.applied)

        await eventually_async(
            applied,
            lambda count: count >= REPORTS,
            what=f"{REPORTS} reports applied in the cloud",
            within=READY_TIMEOUT,
            every=0.1,
        )
    finally:
        await agent.kill()
    assert [a["code"] for a in answers] == [200] * REPORTS
    assert [a["version"] for a in answers] == list(range(1, REPORTS + 1))
    origin = cloud.applied[0][0]
    assert cloud.applied == [(origin, seq) for seq in range(1, REPORTS + 1)]
    assert cloud.replicas[device_id].twin.reported.values == {"switchCount": REPORTS - 1}
    assert twin["reported"] == {"switchCount": REPORTS - 1, "$version": REPORTS}
