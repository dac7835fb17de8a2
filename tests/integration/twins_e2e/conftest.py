"""A real tunnel server, a real joined agent with twins, real mosquitto, a fault proxy.

The agent runs with device twins on mosquitto with dynamic security; a TCP fault proxy on
its link to the cloud is the one fake.

Until the lead wires twins into ``tunnel-server run`` and ``edge-agent run``, the processes
are the test launchers ``server_proc`` and ``agent_proc`` beside this file (the same parts,
wired as docs/twins.md says). Switch: set ``USE_REAL_COMMANDS = True``.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest_asyncio

from edge_agent.twins.simulator import DeviceCredential, SimulatedDevice, claim_device
from tests.harness import mqtt
from tests.harness.fleet import BIN, Server
from tests.harness.procs import ManagedProcess, ServiceError, free_port
from tests.integration.kubecache.faultproxy import FaultProxy

REPO = Path(__file__).resolve().parents[3]
USE_REAL_COMMANDS = False
"""True once tunnel_server/app.py calls twins.setup (the server launcher is then not needed)."""

NODE = "edge1"
READY_TIMEOUT = 30.0  # a guard against hangs, not a measurement


@dataclass(kw_only=True)
class TwinsServer(Server):
    def start(self) -> None:
        if USE_REAL_COMMANDS:
            super().start()
            return
        self.process = ManagedProcess(
            "tunnel-server",
            [
                sys.executable,
                "-m",
                "tests.integration.twins_e2e.server_proc",
                "--listen",
                f"127.0.0.1:{self.port}",
                "--data-dir",
                str(self.data_dir),
                "--public-name",
                "127.0.0.1",
            ],
            log_path=self.workdir / "tunnel-server.log",
            env={"PYTHONPATH": str(REPO)},
        )
        self.wait_ready()


@dataclass(kw_only=True)
class AgentProcess:
    """The agent with twins (test launcher), started and killed at will."""

    workdir: Path
    broker: mqtt.Broker
    control_port: int = field(default_factory=free_port)
    suffix: str = field(default_factory=lambda: secrets.token_hex(4))
    claim_password: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    process: ManagedProcess | None = None
    starts: int = 0

    @property
    def data_dir(self) -> Path:
        return self.workdir / f"agent-{NODE}"

    @property
    def claim_username(self) -> str:
        return f"claim-{self.suffix}"

    def config(self) -> dict[str, Any]:
        return {
            "data_dir": str(self.data_dir),
            "control_port": self.control_port,
            "tunnel": {"backoff_base": 0.1, "backoff_cap": 1.0},
            "twins": {
                "node_name": NODE,
                "broker_host": self.broker.host,
                "broker_port": self.broker.port,
                "admin_password": self.broker.admin_password,
                "claim_username": self.claim_username,
                "claim_password": self.claim_password,
                "agent_username": f"agent-{self.suffix}",
                "agent_client_id": f"agent-{self.suffix}",
                "durability": "full",
            },
        }

    def start(self) -> None:
        self.starts += 1
        self.process = ManagedProcess(
            f"edge-agent[{NODE}]#{self.starts}",
            [
                sys.executable,
                "-m",
                "tests.integration.twins_e2e.agent_proc",
                json.dumps(self.config()),
            ],
            log_path=self.workdir / f"agent-{NODE}.log",
            env={"PYTHONPATH": str(REPO)},
        )

    def kill(self) -> None:
        """SIGKILL: no cleanup of any kind."""
        assert self.process is not None
        self.process.kill()

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()


@dataclass(kw_only=True)
class Fleet:
    server: TwinsServer
    proxy: FaultProxy
    broker: mqtt.Broker
    agent: AgentProcess
    http: aiohttp.ClientSession

    # ------------------------------------------------------------------ the cloud API

    async def api(
        self, method: str, path: str, body: object = None, *, token: str | None = None
    ) -> tuple[int, dict[str, Any]]:
        headers = {"Authorization": f"Bearer {token or self.server.admin_token}"}
        async with self.http.request(
            method, self.server.url + path, json=body, headers=headers
        ) as answer:
            return answer.status, await answer.json()

    async def cloud_twin(self, device: str, **wait: int) -> dict[str, Any]:
        """The cloud's twin; with reported=N / desired=N, long-polls until that version."""
        query = "".join(f"&{section}Version={version}" for section, version in wait.items())
        path = f"/api/v1/devices/{NODE}:{device}/twin?wait={'20' if wait else '0'}{query}"
        status, body = await self.api("GET", path)
        assert status == 200, body
        return body

    async def patch(self, device: str, desired: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        return await self.api(
            "PATCH", f"/api/v1/devices/{NODE}:{device}/twin", {"desired": desired}
        )

    async def cloud_write(self, device: str, section: str, patch: dict[str, Any]) -> None:
        headers = {"Authorization": f"Bearer {self.server.admin_token}"}
        url = f"{self.server.url}/test/twins/{NODE}:{device}/{section}"
        async with self.http.post(url, json=patch, headers=headers) as answer:
            assert answer.status == 200, await answer.text()

    async def wait_device(self, device: str) -> dict[str, Any]:
        async with asyncio.timeout(READY_TIMEOUT):
            while True:
                status, body = await self.api("GET", f"/api/v1/devices/{NODE}:{device}")
                if status == 200:
                    return body
                await asyncio.sleep(0.05)

    # ------------------------------------------------------------------ the edge

    async def control(self, method: str, path: str, body: object = None) -> Any:
        url = f"http://127.0.0.1:{self.agent.control_port}{path}"
        async with self.http.request(method, url, json=body) as answer:
            assert answer.status == 200, await answer.text()
            return await answer.json()

    async def edge_status(self) -> dict[str, Any]:
        status: dict[str, Any] = await self.control("GET", "/status")
        return status

    async def wait_edge(self, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        async with asyncio.timeout(READY_TIMEOUT):
            while True:
                assert self.agent.process is not None
                self.agent.process.check_running()
                try:
                    status = await self.edge_status()
                except aiohttp.ClientError:
                    status = None
                if status is not None and predicate(status):
                    return status
                await asyncio.sleep(0.05)

    async def start_agent(self) -> None:
        self.agent.start()
        await self.wait_edge(lambda s: bool(s["ready"]))

    async def wait_synced(self) -> None:
        await self.wait_edge(lambda s: bool(s["sync"]["connected"]) and s["outbox"] == 0)

    async def claim(self, device: str, model: str) -> DeviceCredential:
        return await claim_device(
            host=self.broker.host,
            port=self.broker.port,
            claim_username=self.agent.claim_username,
            claim_password=self.agent.claim_password,
            device_id=device,
            model=model,
        )

    def device(self, credential: DeviceCredential, **kwargs: Any) -> SimulatedDevice:
        return SimulatedDevice(
            host=self.broker.host, port=self.broker.port, credential=credential, **kwargs
        )


async def join_through(server: Server, url: str, data_dir: Path) -> None:
    """``edge-agent join`` against `url` (the fault proxy), without blocking the event loop."""
    token = server.cli("token", "create", "--kind", "node", "--name", NODE).strip()
    process = await asyncio.create_subprocess_exec(
        str(BIN / "edge-agent"),
        "join",
        "--server",
        url,
        "--token",
        token,
        "--ca-hash",
        server.ca_hash,
        "--name",
        NODE,
        "--data-dir",
        str(data_dir),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await process.communicate()
    if process.returncode != 0:
        raise ServiceError(f"edge-agent join failed: {stderr.decode()}")


@pytest_asyncio.fixture
async def fleet(mqtt_dynsec_broker: mqtt.Broker, tmp_path: Path) -> AsyncIterator[Fleet]:
    server = TwinsServer(workdir=tmp_path)
    server.start()
    proxy = FaultProxy("127.0.0.1", server.port)
    await proxy.start()
    agent = AgentProcess(workdir=tmp_path, broker=mqtt_dynsec_broker)
    connector = aiohttp.TCPConnector(ssl=server.ssl_context())
    try:
        async with aiohttp.ClientSession(connector=connector) as http:
            await join_through(server, f"https://127.0.0.1:{proxy.port}", agent.data_dir)
            fleet = Fleet(
                server=server, proxy=proxy, broker=mqtt_dynsec_broker, agent=agent, http=http
            )
            await fleet.start_agent()
            await fleet.wait_edge(lambda s: bool(s["sync"]["connected"]))
            yield fleet
    finally:
        agent.stop()
        await proxy.stop()
        server.stop()
        if os.environ.get("EDGEFLEET_KEEP_LOGS"):
            sys.stderr.write(f"logs in {tmp_path}\n")
