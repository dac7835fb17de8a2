"""A real tunnel server, a real joined agent with twins, real mosquitto, a fault proxy.

The server is ``tunnel-server run`` and the agent ``edge-agent run`` with ``[twins]`` enabled
on mosquitto with dynamic security; a TCP fault proxy on its link to the cloud is the one fake.
The edge's twins are read through the agent's local API (``GET /twins/{device}``).

One test, the offline conflict test, also needs each side to write the section only the other
side may write through the product (the cloud editing ``reported``, the edge editing
``desired``). For that test only, the processes are the launchers beside this file
(``server_proc``, ``agent_proc``): the same ``create_app`` and ``edge-agent run`` code plus one
test-only route each. Those routes never exist in the product.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from device_models import DeviceModel
from edge_agent.twins.simulator import DeviceCredential, SimulatedDevice, claim_device
from tests.harness import mqtt
from tests.harness.daemons import BIN, Server, launch_agent, write_agent_config
from tests.harness.faultproxy import FaultProxy
from tests.harness.procs import ManagedProcess, ServiceError, free_port
from tests.harness.waiting import eventually_async

REPO = Path(__file__).resolve().parents[3]

NODE = "edge1"
READY_TIMEOUT = 30.0  # a guard against hangs, not a measurement


@dataclass(kw_only=True)
class TwinsServer(Server):
    """``tunnel-server run``; with ``test_writes``, the launcher that adds a cloud write route."""

    test_writes: bool = False

    def start(self) -> None:
        if not self.test_writes:
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
    """``edge-agent run`` with ``[twins]``, started and killed at will."""

    workdir: Path
    broker: mqtt.Broker
    test_writes: bool = False
    """Run the launcher that adds an edge write route (the conflict test only)."""
    node: str = NODE
    shared_claim_username: str | None = None
    """The claim username of every agent on the broker (default: one of this agent's own)."""
    local_api_port: int = field(default_factory=free_port)
    suffix: str = field(default_factory=lambda: secrets.token_hex(4))
    claim_password: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    process: ManagedProcess | None = None
    starts: int = 0

    @property
    def data_dir(self) -> Path:
        return self.workdir / f"agent-{self.node}"

    @property
    def claim_username(self) -> str:
        return self.shared_claim_username or f"claim-{self.suffix}"

    def write_config(self) -> Path:
        secrets_dir = self.workdir / f"secrets-{self.node}"
        secrets_dir.mkdir(mode=0o700, exist_ok=True)
        admin_file = secrets_dir / "mqtt-admin-password"
        claim_file = secrets_dir / "mqtt-claim-password"
        admin_file.write_text(f"{self.broker.admin_password}\n")
        claim_file.write_text(f"{self.claim_password}\n")
        return write_agent_config(
            self.workdir / f"agent-{self.node}.toml",
            {
                "tunnel": {"backoff_base": 0.1, "backoff_cap": 1.0},
                "twins": {
                    "enabled": True,
                    "broker_host": self.broker.host,
                    "broker_port": self.broker.port,
                    "admin_password_file": admin_file,
                    "claim_username": self.claim_username,
                    "claim_password_file": claim_file,
                    "agent_username": f"agent-{self.suffix}",
                    "agent_client_id": f"agent-{self.suffix}",
                    "durability": "full",
                },
            },
        )

    def start(self) -> None:
        self.starts += 1
        self.process = launch_agent(
            label=f"edge-agent[{self.node}]#{self.starts}",
            config=self.write_config(),
            data_dir=self.data_dir,
            local_api_port=self.local_api_port,
            log_path=self.workdir / f"agent-{self.node}.log",
            launcher=("tests.integration.twins_e2e.agent_proc",) if self.test_writes else (),
        )

    def kill(self) -> None:
        """SIGKILL: no cleanup of any kind."""
        assert self.process is not None
        self.process.kill()

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()


@dataclass(kw_only=True)
class System:
    server: TwinsServer
    proxy: FaultProxy
    broker: mqtt.Broker
    agent: AgentProcess
    http: aiohttp.ClientSession

    # ------------------------------------------------------------------ the cloud API

    async def api(
        self, method: str, path: str, body: object = None, *, token: str | None = None
    ) -> tuple[int, dict[str, Any]]:
        status, _, answer = await self.api_full(method, path, body, token=token)
        return status, answer

    async def api_full(
        self,
        method: str,
        path: str,
        body: object = None,
        *,
        token: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Mapping[str, str], dict[str, Any]]:
        """Status, headers and JSON body (a problem document on errors; {} for 204)."""
        bearer = self.server.admin_token if token is None else token
        sent = {"Authorization": f"Bearer {bearer}", **(headers or {})}
        async with self.http.request(
            method, self.server.url + path, json=body, headers=sent
        ) as answer:
            if answer.status == 204:
                return answer.status, answer.headers.copy(), {}
            if answer.status >= 400:
                assert answer.content_type == "application/problem+json", answer.content_type
            return answer.status, answer.headers.copy(), await answer.json(content_type=None)

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
        """A cloud-side write of any section (test launcher only: ``test_writes``)."""
        headers = {"Authorization": f"Bearer {self.server.admin_token}"}
        url = f"{self.server.url}/test/twins/{NODE}:{device}/{section}"
        async with self.http.post(url, json=patch, headers=headers) as answer:
            assert answer.status == 200, await answer.text()

    async def wait_device(self, device: str) -> dict[str, Any]:
        _, body = await eventually_async(
            lambda: self.api("GET", f"/api/v1/devices/{NODE}:{device}"),
            lambda answer: answer[0] == 200,
            what=f"device {device} known to the cloud",
            within=READY_TIMEOUT,
        )
        return body

    async def upload_model(self, text: str) -> None:
        """``POST /api/v1/device-models`` (YAML), then wait until the agent stored it."""
        model = DeviceModel.from_yaml(text)
        headers = {
            "Authorization": f"Bearer {self.server.admin_token}",
            "Content-Type": "application/yaml",
        }
        url = self.server.url + "/api/v1/device-models"
        async with self.http.post(url, data=text, headers=headers) as answer:
            assert answer.status in (200, 201), await answer.text()
        path = self.agent.data_dir / "twins" / "models" / f"{model.name}.yaml"

        async def on_disk() -> str | None:
            assert self.agent.process is not None
            self.agent.process.check_running()  # a crash ends the wait at once
            return DeviceModel.from_yaml(path.read_bytes()).version if path.exists() else None

        await eventually_async(
            on_disk,
            lambda version: version == model.version,
            what=f"model {model.name} {model.version} on the agent",
            within=READY_TIMEOUT,
        )

    # ------------------------------------------------------------------ the edge

    async def local_api(self, method: str, path: str, body: object = None) -> Any:
        url = f"http://127.0.0.1:{self.agent.local_api_port}{path}"
        async with self.http.request(method, url, json=body) as answer:
            assert answer.status == 200, await answer.text()
            return await answer.json()

    async def edge_twin(self, device: str) -> dict[str, Any]:
        """The edge's replica, from the agent's local API."""
        twin: dict[str, Any] = await self.local_api("GET", f"/twins/{device}")
        return twin

    async def edge_write(self, device: str, section: str, patch: dict[str, Any]) -> None:
        """An edge-side write of any section (test launcher only: ``test_writes``)."""
        await self.local_api("POST", f"/test/write/{device}/{section}", patch)

    async def edge_status(self) -> dict[str, Any]:
        """The ``twins`` section of the agent's /status, and its readiness."""
        status: dict[str, Any] = await self.local_api("GET", "/status")
        twins: dict[str, Any] = status["twins"]
        return {**twins, "ready": twins["ready"] and all(status["ready"].values())}

    async def wait_edge(self, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        async def edge_status() -> dict[str, Any]:
            assert self.agent.process is not None
            self.agent.process.check_running()  # a crashed agent ends the wait at once
            return await self.edge_status()

        return await eventually_async(
            edge_status,
            predicate,
            what="the agent's twins status to match",
            within=READY_TIMEOUT,
            ignore=(aiohttp.ClientError, AssertionError),
        )

    async def start_agent(self) -> None:
        self.agent.start()
        await self.wait_edge(lambda s: bool(s["ready"]))

    async def wait_synced(self) -> None:
        await self.wait_edge(lambda s: bool(s["sync"]["connected"]) and s["outbox"] == 0)

    async def claim(
        self, device: str, model: str, *, claim_secret: str | None = None
    ) -> DeviceCredential:
        return await claim_device(
            host=self.broker.host,
            port=self.broker.port,
            claim_username=self.agent.claim_username,
            claim_password=self.agent.claim_password,
            device_id=device,
            model=model,
            claim_secret=claim_secret,
        )

    def device(self, credential: DeviceCredential, **kwargs: Any) -> SimulatedDevice:
        return SimulatedDevice(
            host=self.broker.host, port=self.broker.port, credential=credential, **kwargs
        )


async def join_through(server: Server, url: str, data_dir: Path, node: str = NODE) -> None:
    """``edge-agent join`` against `url` (the fault proxy), without blocking the event loop."""
    token = server.cli("token", "create", "--kind", "node", "--name", node).strip()
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
        node,
        "--data-dir",
        str(data_dir),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await process.communicate()
    if process.returncode != 0:
        raise ServiceError(f"edge-agent join failed: {stderr.decode()}")


@contextlib.asynccontextmanager
async def running_system(
    *, server: TwinsServer, agent: AgentProcess, broker: mqtt.Broker, workdir: Path
) -> AsyncIterator[System]:
    """Start `server`, the fault proxy and `agent` (joined through the proxy); stop them all.

    The twins fixtures' one builder (this file's and home_assistant_discovery's).
    """
    server.start()
    proxy = FaultProxy("127.0.0.1", server.port)
    await proxy.start()
    connector = aiohttp.TCPConnector(ssl=server.ssl_context())
    try:
        async with aiohttp.ClientSession(connector=connector) as http:
            await join_through(server, f"https://127.0.0.1:{proxy.port}", agent.data_dir)
            system = System(server=server, proxy=proxy, broker=broker, agent=agent, http=http)
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
            sys.stderr.write(f"logs in {workdir}\n")


@pytest_asyncio.fixture
async def system(
    mqtt_dynsec_broker: mqtt.Broker, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[System]:
    """The system; a test module with ``TEST_WRITES = True`` gets the launchers' write routes."""
    test_writes = bool(getattr(request.module, "TEST_WRITES", False))
    async with running_system(
        server=TwinsServer(workdir=tmp_path, test_writes=test_writes),
        agent=AgentProcess(workdir=tmp_path, broker=mqtt_dynsec_broker, test_writes=test_writes),
        broker=mqtt_dynsec_broker,
        workdir=tmp_path,
    ) as system:
        yield system
