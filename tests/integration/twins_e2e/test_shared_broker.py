"""Two real agents on one real broker, one real cloud: a device belongs to exactly one node.

Every agent on a broker receives every claim and every device message. Before, each agent
onboarded each claim: the cloud listed the device under both nodes and the agents overwrote
each other's broker user for it, so its login was refused. Now the broker picks one owner,
the others stay silent, a second claim is refused with the owner's name, and an operator
moves a device with ``POST /api/v1/devices/{id}/move``.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from device_models import builtin_model
from edge_agent.twins.simulator import (
    ClaimRejectedError,
    DeviceCredential,
    SimulatedDevice,
    _drive,
    _Options,
    _Totals,
    claim_device,
)
from edge_agent.twins.topics import Op
from tests.harness import mqtt
from tests.harness.procs import ServiceError
from tests.harness.waiting import eventually_async
from tests.integration.twins_e2e.conftest import (
    READY_TIMEOUT,
    AgentProcess,
    TwinsServer,
    join_through,
)

pytestmark = pytest.mark.mqtt

NODES = ("edge-a", "edge-b")


@dataclass(kw_only=True)
class Site:
    server: TwinsServer
    broker: mqtt.Broker
    agents: dict[str, AgentProcess]
    http: aiohttp.ClientSession
    claim_username: str
    claim_password: str

    async def api(self, method: str, path: str, body: object = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.server.admin_token}"}
        async with self.http.request(
            method, self.server.url + path, json=body, headers=headers
        ) as answer:
            return answer.status, await answer.json(content_type=None)

    async def until(self, probe: Callable[[], Any], check: Callable[[Any], bool]) -> Any:
        return await eventually_async(
            probe, check, what="the shared-broker site to settle", within=READY_TIMEOUT
        )

    async def edge_has(self, node: str, device: str) -> bool:
        url = f"http://127.0.0.1:{self.agents[node].local_api_port}/twins/{device}"
        async with self.http.get(url) as answer:
            return answer.status == 200

    async def listed(self, device: str) -> list[dict[str, Any]]:
        """Every row the cloud has for this device id, on any node."""
        status, body = await self.api("GET", "/api/v1/devices?limit=1000")
        assert status == 200, body
        return [item for item in body["items"] if item["device"] == device]

    async def claim(self, device: str, node: str | None = None) -> DeviceCredential:
        return await claim_device(
            host=self.broker.host,
            port=self.broker.port,
            claim_username=self.claim_username,
            claim_password=self.claim_password,
            device_id=device,
            model="thermostat",
            node=node,
        )

    def device(self, credential: DeviceCredential) -> SimulatedDevice:
        return SimulatedDevice(host=self.broker.host, port=self.broker.port, credential=credential)

    def log_count(self, node: str, text: str) -> int:
        log = self.agents[node].workdir / f"agent-{node}.log"
        return log.read_text(errors="replace").count(text)


async def _status(http: aiohttp.ClientSession, agent: AgentProcess) -> dict[str, Any] | None:
    try:
        async with http.get(f"http://127.0.0.1:{agent.local_api_port}/status") as answer:
            status: dict[str, Any] = await answer.json()
    except (aiohttp.ClientError, ValueError):
        return None
    return status


@pytest_asyncio.fixture
async def site(mqtt_dynsec_broker: mqtt.Broker, tmp_path: Path) -> AsyncIterator[Site]:
    server = TwinsServer(workdir=tmp_path)
    server.start()
    claim_username = f"claim-{secrets.token_hex(4)}"
    claim_password = secrets.token_urlsafe(12)
    agents = {
        node: AgentProcess(
            workdir=tmp_path,
            broker=mqtt_dynsec_broker,
            node=node,
            shared_claim_username=claim_username,  # the one credential devices ship with
            claim_password=claim_password,
        )
        for node in NODES
    }
    connector = aiohttp.TCPConnector(ssl=server.ssl_context())
    try:
        async with aiohttp.ClientSession(connector=connector) as http:
            for node, agent in agents.items():
                await join_through(server, server.url, agent.data_dir, node)
                agent.start()
            for agent in agents.values():

                async def status(agent: AgentProcess = agent) -> dict[str, Any] | None:
                    assert agent.process is not None
                    agent.process.check_running()
                    return await _status(http, agent)

                await eventually_async(
                    status,
                    lambda status: (
                        status is not None
                        and all(status["ready"].values())
                        and bool(status["twins"]["sync"]["connected"])
                    ),
                    what=f"agent {agent.node} ready and syncing",
                    within=READY_TIMEOUT,
                )
            yield Site(
                server=server,
                broker=mqtt_dynsec_broker,
                agents=agents,
                http=http,
                claim_username=claim_username,
                claim_password=claim_password,
            )
    except ServiceError:
        for agent in agents.values():
            if agent.process is not None:
                sys.stderr.write(agent.process.tail())
        raise
    finally:
        for agent in agents.values():
            agent.stop()
        server.stop()


async def test_a_device_belongs_to_one_node_and_moves_on_request(site: Site) -> None:
    device = f"th-{secrets.token_hex(4)}"
    credential = await site.claim(device)

    # Exactly one agent onboarded it (its row is committed before the claim is answered).
    owners = [node for node in NODES if await site.edge_has(node, device)]
    assert len(owners) == 1, owners
    [owner] = owners
    [other] = [node for node in NODES if node != owner]

    # The device logs in with its credential (no agent overwrote it) and reports.
    async with site.device(credential) as thermostat:
        answer = await thermostat.report({"temperature": 20.5})
        assert (answer["code"], answer["version"]) == (200, 1)

        # A second claim of the id is refused, naming the owner.
        with pytest.raises(ClaimRejectedError) as caught:
            await site.claim(device)
        assert caught.value.reason == "duplicate_id"
        assert f"on node {owner}" in str(caught.value.answer["detail"])

        # The other agent left both claims to the owner (one log line each, no answer).
        left = f"device {device} belongs to node {owner} on this broker"
        await site.until(lambda: _const(site.log_count(other, left)), lambda n: n >= 2)

        # The cloud lists it under the owner only, with the report.
        path = f"/api/v1/devices/{owner}:{device}/twin?wait=20&reportedVersion=1"
        status, twin = await site.api("GET", path)
        assert status == 200, twin
        assert twin["reported"]["temperature"] == 20.5
        assert [item["node"] for item in await site.listed(device)] == [owner]

        status, body = await site.api(
            "PATCH", f"/api/v1/devices/{owner}:{device}/twin", {"desired": {"setpoint": 21.0}}
        )
        assert status == 200, body
        await thermostat.wait_for(Op.DESIRED, lambda d: d["patch"] == {"setpoint": 21.0})

        # A move to a node that does not use this broker is refused by the owner, with why.
        status, body = await site.api(
            "POST", f"/api/v1/devices/{owner}:{device}/move", {"node": "edge-elsewhere"}
        )
        assert (status, body["moveTo"]) == (202, "edge-elsewhere")
        refused = await site.until(
            lambda: site.api("GET", f"/api/v1/devices/{owner}:{device}"),
            lambda answer: answer[1].get("syncError") is not None,
        )
        assert "move_refused" in refused[1]["syncError"]
        assert refused[1]["moveTo"] is None
        assert refused[1]["state"] == "active"

        # The move to the other node: the device keeps its credential and its desired values.
        status, body = await site.api(
            "POST", f"/api/v1/devices/{owner}:{device}/move", {"node": other}
        )
        assert status == 202, body
        moved = await site.until(
            lambda: site.listed(device),
            lambda rows: (
                {(r["node"], r["state"]) for r in rows} == {(owner, "removed"), (other, "active")}
            ),
        )
        assert len(moved) == 2
        status, twin = await site.api("GET", f"/api/v1/devices/{other}:{device}/twin")
        assert twin["desired"]["setpoint"] == 21.0
        assert not await site.edge_has(owner, device)
        assert await site.edge_has(other, device)

    # The broker ends the device's session when its user changes hands; it logs in again
    # with the same credential, and the new owner answers it.
    async with site.device(credential) as thermostat:
        # The new owner adopts with a fresh twin and the cloud then carries the desired value
        # over, so a first delta may come before it: wait for the one that carries it.
        await thermostat.wait_for(Op.DELTA, lambda d: d["delta"] == {"setpoint": 21.0})
        answer = await thermostat.report({"temperature": 22.0})
        assert (answer["code"], answer["version"]) == (200, 1)  # a fresh twin on its node
        path = f"/api/v1/devices/{other}:{device}/twin?wait=20&reportedVersion=1"
        status, twin = await site.api("GET", path)
        assert twin["reported"]["temperature"] == 22.0

    with pytest.raises(ClaimRejectedError) as caught:
        await site.claim(device)
    assert f"on node {other}" in str(caught.value.answer["detail"])


async def _const(value: int) -> int:
    return value


async def test_a_claim_can_be_addressed_to_one_node(site: Site) -> None:
    for node in (*NODES, *NODES):
        device = f"th-{secrets.token_hex(4)}"
        await site.claim(device, node=node)
        assert [n for n in NODES if await site.edge_has(n, device)] == [node]


async def test_a_simulated_device_follows_its_move(site: Site) -> None:
    # `edge-agent simulate` devices connect again when the broker ends their session, as it
    # does when their user changes hands, so a demo device keeps reporting through a move.
    device = f"sim-{secrets.token_hex(4)}"
    credential = await site.claim(device, node="edge-a")
    options = _Options(
        host=site.broker.host,
        port=site.broker.port,
        model="thermostat",
        count=1,
        prefix="sim",
        interval=0.05,
        reports=0,
        claim_username=site.claim_username,
        claim_password=site.claim_password,
        credentials=None,
        seed=1,
    )
    totals = _Totals()
    model = builtin_model("thermostat")
    async with asyncio.TaskGroup() as group:
        driving = group.create_task(
            _drive(options, credential, model, random.Random(1), totals),  # noqa: S311 - values
            name="test.drive",
        )
        for node in NODES:
            await site.until(lambda: site.listed(device), _active_on(node))
            path = f"/api/v1/devices/{node}:{device}/twin?wait=20&reportedVersion=3"
            status, twin = await site.api("GET", path)
            assert twin["reported"]["$version"] >= 3, (node, status, twin)
            if node == "edge-a":
                status, body = await site.api(
                    "POST", f"/api/v1/devices/edge-a:{device}/move", {"node": "edge-b"}
                )
                assert status == 202, body
        driving.cancel()
    assert (totals.errors, totals.rejected) == (0, 0)


def _active_on(node: str) -> Callable[[list[dict[str, Any]]], bool]:
    def check(rows: list[dict[str, Any]]) -> bool:
        return (node, "active") in {(row["node"], row["state"]) for row in rows}

    return check
