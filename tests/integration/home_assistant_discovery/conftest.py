"""The twins end-to-end system (real server, agent, mosquitto) with HA discovery on.

Reuses tests/integration/twins_e2e: the same ``tunnel-server run`` and ``edge-agent run``, the
agent's ``[twins]`` table adds ``home_assistant = true``. A Home Assistant stand-in reads the
broker as HA would: a broker user with the role docs/home-assistant.md gives HA.
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest_asyncio

from tests.harness import mqtt
from tests.harness.faultproxy import FaultProxy
from tests.harness.procs import ServiceError
from tests.integration.twins_e2e.conftest import AgentProcess, System, TwinsServer, join_through


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
    server = TwinsServer(workdir=tmp_path)
    server.start()
    proxy = FaultProxy("127.0.0.1", server.port)
    await proxy.start()
    agent = DiscoveryAgent(workdir=tmp_path, broker=mqtt_dynsec_broker)
    connector = aiohttp.TCPConnector(ssl=server.ssl_context())
    try:
        async with aiohttp.ClientSession(connector=connector) as http:
            await join_through(server, f"https://127.0.0.1:{proxy.port}", agent.data_dir)
            system = System(
                server=server, proxy=proxy, broker=mqtt_dynsec_broker, agent=agent, http=http
            )
            await system.start_agent()
            await system.wait_edge(lambda s: bool(s["sync"]["connected"]))
            yield system
    except ServiceError:
        if agent.process is not None:
            sys.stderr.write(agent.process.tail())
        raise
    finally:
        agent.stop()
        await proxy.stop()
        server.stop()
        if os.environ.get("EDGEFLEET_KEEP_LOGS"):
            sys.stderr.write(f"logs in {tmp_path}\n")
