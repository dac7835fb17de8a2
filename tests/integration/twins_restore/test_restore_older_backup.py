"""Twins after ``tunnel-server restore`` of an older backup: no change ignored, none lost.

A real server, a real agent with ``[twins]``, real mosquitto, a simulated thermostat. The
server's folder is backed up; then desired and reported both move on (the agent applies and
acknowledges those changes); the server is stopped, the older backup restored over its folder
and the server started again. The cloud's twin database is now behind the agent's replica:

- a new desired value must reach the device (the restored cloud must not number it as a
  change the agent already applied: the agent would answer ``duplicate`` and drop it);
- the edge's and the cloud's desired values end equal: the cloud re-sends its restored intent
  (desired: the cloud wins, a key it lacks as null), so a value written after the backup does
  not linger on the device while the cloud shows another;
- a new report must reach the cloud (the restored cloud must not take the agent's next change
  for a gap, dead-letter it, and every later one with it).
"""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from edge_agent.twins.simulator import SimulatedDevice
from edge_agent.twins.topics import Op
from tests.harness.daemons import BIN
from tests.harness.waiting import eventually_async
from tests.integration.twins_e2e.conftest import System

pytestmark = pytest.mark.mqtt

DEVICE = "th-restore"
WITHIN = 30.0  # a guard against hangs on busy cores, not a measurement


def server_cli(*args: str | Path) -> None:
    result = subprocess.run(
        [str(BIN / "tunnel-server"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def _values(section: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in section.items() if not key.startswith("$")}


async def _edge_desired(system: System, wanted: dict[str, Any]) -> dict[str, Any]:
    twin: dict[str, Any] = await eventually_async(
        lambda: system.edge_twin(DEVICE),
        lambda twin: _values(twin["desired"]) == wanted,
        what=f"the edge's desired to be {wanted}",
        within=WITHIN,
    )
    return twin


def _patch_is(wanted: dict[str, Any]) -> Callable[[dict[str, Any]], bool]:
    return lambda message: message["patch"] == wanted


@asynccontextmanager
async def restored_older_backup(system: System, tmp_path: Path) -> AsyncIterator[SimulatedDevice]:
    """The thermostat, online, after both sections moved on past a backup that was restored."""
    credential = await system.claim(DEVICE, "thermostat")
    await system.wait_device(DEVICE)
    archive = tmp_path / "older.tar.gz"
    async with system.device(credential, timeout=WITHIN) as sim:
        answer = await sim.report({"temperature": 20.0})
        await system.cloud_twin(DEVICE, reported=answer["version"])
        status, _ = await system.patch(DEVICE, {"setpoint": 20.0})
        assert status == 200
        await sim.wait_for(Op.DESIRED, lambda d: d["patch"] == {"setpoint": 20.0})
        await system.wait_synced()

        server_cli("backup", "--data-dir", system.server.data_dir, "--out", archive)

        # After the backup both sections move on, and the agent applies and acknowledges it.
        for setpoint in (21.0, 22.0):
            status, _ = await system.patch(DEVICE, {"setpoint": setpoint})
            assert status == 200
            await sim.wait_for(Op.DESIRED, _patch_is({"setpoint": setpoint}))
        status, _ = await system.patch(DEVICE, {"mode": "heat"})
        assert status == 200
        await sim.wait_for(Op.DESIRED, lambda d: d["patch"] == {"mode": "heat"})
        for temperature in (21.0, 22.0):
            answer = await sim.report({"temperature": temperature})
            await system.cloud_twin(DEVICE, reported=answer["version"])
        await system.wait_synced()
        before = await system.cloud_twin(DEVICE)
        assert _values(before["desired"]) == {"setpoint": 22.0, "mode": "heat"}

        system.server.stop()
        server_cli("restore", "--data-dir", system.server.data_dir, "--from", archive, "--force")
        system.server.start()
        restored = await system.cloud_twin(DEVICE)
        assert _values(restored["desired"]) == {"setpoint": 20.0}  # the backup's, as documented
        assert restored["reported"]["temperature"] == 20.0
        yield sim


@pytest.mark.timeout(240)
async def test_desired_after_restoring_an_older_backup_reaches_the_device(
    system: System, tmp_path: Path
) -> None:
    async with restored_older_backup(system, tmp_path) as sim:
        # A new desired value after the restore reaches the device (the hazard: the restored
        # cloud numbered it as a change the agent had applied already, which it dropped)...
        status, _ = await system.patch(DEVICE, {"setpoint": 23.5})
        assert status == 200
        await sim.wait_for(Op.DESIRED, lambda d: d["patch"].get("setpoint") == 23.5)
        # ...and desired converges: the value written after the backup ("mode") is gone on
        # the edge too, since the cloud, whose desired wins, does not have it.
        edge = await _edge_desired(system, {"setpoint": 23.5})
        await system.wait_synced()
    cloud = await system.cloud_twin(DEVICE)
    assert _values(cloud["desired"]) == _values(edge["desired"]) == {"setpoint": 23.5}
    assert cloud["desired"]["$metadata"]["setpoint"] == edge["desired"]["$metadata"]["setpoint"]
    assert edge["delta"] == {"setpoint": 23.5}  # what the device has yet to confirm
    status, device = await system.api("GET", f"/api/v1/devices/{system.agent.node}:{DEVICE}")
    assert status == 200
    assert device["pendingDesired"] == 0  # every change acknowledged, none failed
    assert device["lastRejected"] is None


@pytest.mark.timeout(240)
async def test_reports_after_restoring_an_older_backup_reach_the_cloud(
    system: System, tmp_path: Path
) -> None:
    async with restored_older_backup(system, tmp_path) as sim:
        answer = await sim.report({"temperature": 23.0})
        assert answer["code"] == 200
        await system.wait_synced()
        cloud = await eventually_async(
            lambda: system.cloud_twin(DEVICE),
            lambda twin: twin["reported"].get("temperature") == 23.0,
            what="the report made after the restore in the cloud",
            within=WITHIN,
        )
    status, device = await system.api("GET", f"/api/v1/devices/{system.agent.node}:{DEVICE}")
    assert status == 200
    assert device["syncError"] is None, device["syncError"]
    assert system.server.metric('tunnel_server_twins_records_total{result="rejected"}') == 0
    edge = await system.edge_twin(DEVICE)
    assert _values(cloud["reported"]) == _values(edge["reported"])
