"""An edge in miniature: edge replicas and an outbox that number records as the agent does.

It produces exactly the records the agent's outbox holds (docs/mqtt.md, section 7), so the
cloud's rules can be tested without a broker.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from device_models import (
    DeviceModelsError,
    JsonObject,
    Replica,
    Role,
    Section,
    TwinChange,
    apply_change,
    write_change,
)
from edge_agent.twins import CloudChangeError, CloudChangeResult, Code
from tunnel_server.twins import CloudTwinReplica, CloudTwinsSettings, Durability
from tunnel_server.twins.models import load_models
from tunnel_server.twins.store import TwinStore

NODE = "node1"


def make_cloud(folder: Path, **changes: Any) -> CloudTwinReplica:
    settings = dataclasses.replace(CloudTwinsSettings(durability=Durability.NORMAL), **changes)
    store = TwinStore(
        folder / "twins.sqlite3",
        durability=settings.durability,
        cache_devices=settings.cache_devices,
        max_dead_letters=settings.max_dead_letters,
    )
    return CloudTwinReplica(store=store, models=load_models(None), settings=settings)


@dataclass
class Kicks:
    count: int = 0

    def kick(self) -> None:
        self.count += 1


@dataclass(kw_only=True)
class EdgeSim:
    node: str = NODE
    boot: str = "b00t"
    now: float = 1_700_000_000.0
    replicas: dict[str, Replica] = field(default_factory=dict)
    models: dict[str, str] = field(default_factory=dict)
    outbox: list[dict[str, Any]] = field(default_factory=list)
    moved: list[tuple[str, str]] = field(default_factory=list)
    next_id: int = 1
    received: list[tuple[str, TwinChange]] = field(default_factory=list)
    desired_patches: list[tuple[str, JsonObject]] = field(default_factory=list)
    kicks: Kicks = field(default_factory=Kicks)

    @property
    def origin(self) -> str:
        return f"{self.node}.{self.boot}"

    @property
    def outbox_kicker(self) -> Kicks:
        return self.kicks

    def _append(self, record: dict[str, Any]) -> dict[str, Any]:
        record = {**record, "outboxId": self.next_id}
        self.next_id += 1
        self.outbox.append(record)
        return record

    def tick(self) -> float:
        self.now += 1.0
        return self.now

    def onboard(self, device: str, model: str) -> dict[str, Any]:
        self.replicas[device] = Replica(origin=self.origin, role=Role.EDGE)
        self.models[device] = model
        return self._append(
            {
                "kind": "device",
                "origin": self.origin,
                "device": device,
                "model": model,
                "modelVersion": "1.0.0",
                "at": self.tick(),
            }
        )

    def write(self, device: str, section: Section, patch: JsonObject) -> dict[str, Any]:
        replica, change = write_change(self.replicas[device], section, patch, now=self.tick())
        self.replicas[device] = replica
        return self._append(
            {
                "kind": "twin-change",
                "device": device,
                "model": self.models[device],
                "change": change.to_json(),
            }
        )

    def report(self, device: str, patch: JsonObject) -> dict[str, Any]:
        return self.write(device, Section.REPORTED, patch)

    def availability(self, device: str, status: str) -> dict[str, Any]:
        return self._append(
            {
                "kind": "availability",
                "origin": self.origin,
                "device": device,
                "status": status,
                "at": self.tick(),
            }
        )

    def remove(self, device: str) -> dict[str, Any]:
        self.replicas.pop(device, None)
        return self._append({"kind": "device-removed", "device": device, "at": self.tick()})

    def take(self) -> list[dict[str, Any]]:
        records, self.outbox = self.outbox, []
        return records

    async def apply_cloud_command(self, message: Mapping[str, object]) -> CloudChangeResult:
        """A move: the device leaves this edge with a ``device-moved`` record (no broker)."""
        device = str(message["device"])
        command = message["command"]
        assert isinstance(command, Mapping)
        if self.replicas.pop(device, None) is None:
            raise CloudChangeError(Code.UNKNOWN_DEVICE, f"device {device} is not onboarded")
        self.moved.append((device, str(command["to"])))
        self._append({"kind": "device-moved", "device": device, "to": command["to"], "at": 1.0})
        return CloudChangeResult(device_id=device, applied=True)

    # The TwinsEndpoint side: what TwinMqttService.apply_cloud_change does, minus MQTT.
    async def apply_cloud_change(
        self, message: Mapping[str, object] | str | bytes
    ) -> CloudChangeResult:
        assert isinstance(message, Mapping)
        device = str(message["device"])
        replica = self.replicas.get(device)
        if replica is None:
            raise CloudChangeError(Code.UNKNOWN_DEVICE, f"device {device} is not onboarded")
        try:
            change = TwinChange.from_json(message["change"])
            result = apply_change(replica, change)
        except DeviceModelsError as error:
            raise CloudChangeError(Code.OUT_OF_ORDER, error.summary) from None
        self.replicas[device] = result.replica
        section = result.replica.twin.section(change.section)
        if result.applied:
            self.received.append((device, change))
            if result.patch:
                self.desired_patches.append((device, result.patch))
        return CloudChangeResult(device_id=device, applied=result.applied, version=section.version)


def same_values(edge: Replica, cloud: Replica) -> bool:
    """Equal values and per-key metadata in both sections (the sync's guarantee)."""
    for section in Section:
        mine, theirs = edge.twin.section(section), cloud.twin.section(section)
        if dict(mine.values) != dict(theirs.values):
            return False
        keys = set(mine.values)
        if {k: mine.metadata.get(k) for k in keys} != {k: theirs.metadata.get(k) for k in keys}:
            return False
    return True
