"""The twins end-to-end system (real server, agent, mosquitto) with HA discovery on.

Reuses tests/integration/twins_e2e: the same ``tunnel-server run`` and ``edge-agent run``, the
agent's ``[twins]`` table adds ``home_assistant = true``. A Home Assistant stand-in reads the
broker as HA would: a broker user with the role docs/home-assistant.md gives HA.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest_asyncio

from tests.harness import mqtt
from tests.integration.twins_e2e.conftest import (
    AgentProcess,
    System,
    TwinsServer,
    running_system,
)


@dataclass(kw_only=True)
class DiscoveryAgent(AgentProcess):
    """``edge-agent run`` with ``[twins] home_assistant = true``."""

    def write_config(self) -> Path:
        path = super().write_config()
        # write_agent_config writes one table per key and [twins] is the last one: add ours.
        text = path.read_text().rstrip("\n")
        assert text.splitlines()[-1].startswith("durability"), text
        path.write_text(f"{text}\nhome_assistant = true\n")
        return path


@pytest_asyncio.fixture
async def system(mqtt_dynsec_broker: mqtt.Broker, tmp_path: Path) -> AsyncIterator[System]:
    async with running_system(
        server=TwinsServer(workdir=tmp_path),
        agent=DiscoveryAgent(workdir=tmp_path, broker=mqtt_dynsec_broker),
        broker=mqtt_dynsec_broker,
        workdir=tmp_path,
    ) as system:
        yield system
