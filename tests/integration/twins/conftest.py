"""A real TwinMqttService on a real mosquitto with dynamic security, and a cloud that records.

`CloudRecorder` is the cloud end of the outbox: it applies every delivered twin change to a
cloud-side `Replica` with `device_models.apply_change`, exactly as the cloud will, so a test can
check that each change arrived once and in order. It can fail on purpose (before or after
storing a batch, the latter being a lost acknowledgement) to inject faults.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from device_models import Replica, Role, TwinChange, apply_change
from edge_agent.twins import Durability, TwinMqttService, TwinMqttSettings
from edge_agent.twins.simulator import DeviceCredential, SimulatedDevice, claim_device
from tests.harness import mqtt

READY_TIMEOUT = 30.0  # a guard against hangs, not a measurement


class InjectedFaultError(ConnectionError):
    """The fake tunnel failed on purpose."""


@dataclass(kw_only=True)
class CloudRecorder:
    fail_before: float = 0.0  # chance a batch fails without reaching the cloud
    fail_after: float = 0.0  # chance the cloud stores a batch but the ack is lost
    blocked: bool = False  # every delivery fails while set
    rng: random.Random = field(default_factory=lambda: random.Random(7))  # noqa: S311 - test faults
    records: list[dict[str, Any]] = field(default_factory=list)  # every record, once applied
    deliveries: int = 0
    replicas: dict[str, Replica] = field(default_factory=dict)
    applied_changes: list[tuple[str, int]] = field(default_factory=list)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def deliver(self, batch: list[dict[str, Any]]) -> None:
        self.deliveries += 1
        if self.blocked or self.rng.random() < self.fail_before:
            raise InjectedFaultError("tunnel down (injected)")
        for record in batch:
            self.apply(record)
        async with self.changed:
            self.changed.notify_all()
        if self.rng.random() < self.fail_after:
            raise InjectedFaultError("acknowledgement lost (injected)")

    def apply(self, record: dict[str, Any]) -> None:
        if record["kind"] != "twin-change":
            if record not in self.records:
                self.records.append(record)
            return
        device = record["device"]
        change = TwinChange.from_json(record["change"])
        replica = self.replicas.get(device) or Replica(origin="cloud", role=Role.CLOUD)
        result = apply_change(replica, change)  # raises on a gap: delivery out of order
        self.replicas[device] = result.replica
        if result.applied:
            self.applied_changes.append(change.id)
            self.records.append(record)

    def kinds(self, kind: str, device: str | None = None) -> list[dict[str, Any]]:
        return [r for r in self.records if r["kind"] == kind and device in (None, r.get("device"))]

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        async with asyncio.timeout(READY_TIMEOUT), self.changed:
            await self.changed.wait_for(predicate)


@dataclass(kw_only=True)
class TwinsEnv:
    broker: mqtt.Broker
    settings: TwinMqttSettings
    cloud: CloudRecorder

    def service(self, **changes: Any) -> TwinMqttService:
        return TwinMqttService(settings=replace(self.settings, **changes), sender=self.cloud)

    async def claim(self, device_id: str, model: str, **kwargs: Any) -> DeviceCredential:
        return await claim_device(
            host=self.broker.host,
            port=self.broker.port,
            claim_username=self.settings.claim_username,
            claim_password=self.settings.claim_password,
            device_id=device_id,
            model=model,
            **kwargs,
        )

    def device(self, credential: DeviceCredential, **kwargs: Any) -> SimulatedDevice:
        return SimulatedDevice(
            host=self.broker.host, port=self.broker.port, credential=credential, **kwargs
        )


@pytest.fixture
def twins_env(mqtt_dynsec_broker: mqtt.Broker, tmp_path: Path) -> TwinsEnv:
    """Settings unique to this test (agent and claim users, data dir) on the shared broker."""
    suffix = secrets.token_hex(4)
    assert mqtt_dynsec_broker.admin_password is not None
    settings = TwinMqttSettings(
        data_dir=tmp_path / "twins",
        node_name="node1",
        broker_host=mqtt_dynsec_broker.host,
        broker_port=mqtt_dynsec_broker.port,
        admin_password=mqtt_dynsec_broker.admin_password,
        claim_username=f"claim-{suffix}",
        claim_password=secrets.token_urlsafe(12),
        agent_username=f"agent-{suffix}",
        agent_client_id=f"agent-{suffix}",
        durability=Durability.NORMAL,
    )
    return TwinsEnv(broker=mqtt_dynsec_broker, settings=settings, cloud=CloudRecorder())


@contextlib.asynccontextmanager
async def running(service: TwinMqttService) -> AsyncIterator[TwinMqttService]:
    """Run the service in a TaskGroup until the block ends (then cancel it)."""
    async with asyncio.TaskGroup() as group:
        task = group.create_task(service.run(), name="test.twins-service")
        try:
            async with asyncio.timeout(READY_TIMEOUT):
                await service.ready.wait()
            yield service
        finally:
            task.cancel()


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"
