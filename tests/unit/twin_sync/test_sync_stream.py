"""Both ends of the ``twins`` stream over a real tunnel session on loopback WebSockets.

The edge end is `edge_agent.twin_link.CloudTwinLink` with an `EdgeSim` in place of the MQTT side;
the cloud end is `tunnel_server.twins.sync.EdgeTwinLinks` on a real twin store.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
from aiohttp import web

from device_models import Section
from device_models import sync_wire as wire
from edge_agent.twin_link import CloudTwinLink, CloudTwinLinkSettings
from tests.harness.waiting import eventually_async
from tests.unit.twin_sync.edge_sim import NODE, EdgeSim, make_cloud, same_values
from tunnel_aio import StreamResetError, TunnelConnection, TunnelStream
from tunnel_protocol import Role
from tunnel_server.tunnel.sessions import AgentSession
from tunnel_server.twins.service import CloudTwinReplica
from tunnel_server.twins.sync import EdgeTwinLinks

TIMEOUT = 20.0


@dataclass
class FakeSession:
    name: str


@dataclass
class Endpoint:
    """EdgeSim seen as the TwinsEndpoint the sync expects."""

    sim: EdgeSim

    @property
    def origin(self) -> str:
        return self.sim.origin

    @property
    def outbox(self) -> Any:
        return self.sim.kicks

    async def apply_cloud_change(self, change: Any) -> Any:
        return await self.sim.apply_cloud_change(change)

    async def apply_cloud_command(self, message: Any) -> Any:
        return await self.sim.apply_cloud_command(message)


@dataclass
class Rig:
    cloud: CloudTwinReplica
    hub: EdgeTwinLinks
    sync: CloudTwinLink
    sim: EdgeSim
    connection: TunnelConnection
    session_task: asyncio.Task[None]

    async def wait(self, predicate: Callable[[], bool]) -> None:
        # Polls the state of two sides: there is no one event to wait on.
        async def holds() -> bool:
            return predicate()

        await eventually_async(
            holds, what=getattr(predicate, "__name__", "predicate"), within=TIMEOUT, every=0.01
        )

    async def deliver_all(self) -> None:
        await self.deliver(self.sim.take())

    async def deliver(self, records: list[dict[str, Any]]) -> None:
        """What the outbox does: retry the same records until the cloud acknowledged them."""
        async with asyncio.timeout(TIMEOUT):
            while True:
                try:
                    await self.sync.deliver(records)
                except ConnectionError:
                    await asyncio.sleep(0.02)
                else:
                    return


@contextlib.asynccontextmanager
async def rig(tmp_path: Path, *, window: int = 64) -> AsyncIterator[Rig]:
    cloud = make_cloud(tmp_path)
    hub = EdgeTwinLinks(cloud)

    async def on_stream(stream: TunnelStream) -> None:
        await hub.serve(stream, cast("AgentSession", FakeSession(NODE)))

    async def endpoint(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=2 * 1024 * 1024)
        await ws.prepare(request)
        connection = TunnelConnection(ws, role=Role.SERVER, name="cloud", on_stream=on_stream)
        await connection.run()
        return ws

    app = web.Application()
    app.router.add_get("/tunnel", endpoint)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    sim = EdgeSim()
    sync = CloudTwinLink(settings=CloudTwinLinkSettings(window=window, reopen_initial=0.05))
    sync.attach(Endpoint(sim))
    try:
        async with aiohttp.ClientSession() as http:
            ws = await http.ws_connect(f"http://127.0.0.1:{port}/tunnel", max_msg_size=2**21)
            connection = TunnelConnection(ws, role=Role.CLIENT, name=NODE)
            async with asyncio.TaskGroup() as group:
                runner_task = group.create_task(connection.run(), name="test.tunnel")
                await connection.wait_ready()
                session = group.create_task(sync.run_session(connection), name="test.sync")
                yield Rig(cloud, hub, sync, sim, connection, session)
                session.cancel()
                connection.close()
                await runner_task
            await ws.close()
    finally:
        await runner.cleanup()
        cloud.store.close()


async def test_batches_are_acknowledged_after_the_cloud_applied_them(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        r.sim.onboard("t", "thermostat")
        for value in range(50):
            r.sim.report("t", {"temperature": float(value)})
        await r.deliver_all()
        row = r.cloud.device((NODE, "t"))
        assert row is not None
        assert row.replica.twin.reported.version == 50
        assert r.sim.kicks.count >= 1  # the outbox is told to retry at once when the link is up
        assert r.sync.counters.records == 51


async def test_cloud_changes_reach_the_edge_in_order_and_are_acknowledged(tmp_path: Path) -> None:
    async with rig(tmp_path, window=4) as r:
        r.sim.onboard("t", "thermostat")
        await r.deliver_all()
        for setpoint in range(5, 31):
            r.cloud.write((NODE, "t"), Section.DESIRED, {"setpoint": setpoint})
        await r.wait(lambda: r.cloud.store.downlink_count(NODE) == 0)
        assert [patch["setpoint"] for _, patch in r.sim.desired_patches] == list(range(5, 31))
        row = r.cloud.device((NODE, "t"))
        assert row is not None
        assert same_values(r.sim.replicas["t"], row.replica)


async def test_a_reset_stream_is_reopened_and_nothing_is_lost_or_doubled(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        r.sim.onboard("t", "thermostat")
        await r.deliver_all()
        for round_ in range(5):
            for step in range(10):
                r.cloud.write((NODE, "t"), Section.DESIRED, {"setpoint": 5 + round_ * 5 + step % 5})
                r.sim.report("t", {"temperature": float(round_ * 10 + step)})
            records = r.sim.take()
            await r.deliver(records[:5])
            link = r.sync._state.link
            assert link is not None
            link.stream.reset()  # cut the stream mid-way
            await r.deliver(records)  # the retry re-sends the first five as well
        await r.wait(lambda: r.cloud.store.downlink_count(NODE) == 0)
        row = r.cloud.device((NODE, "t"))
        assert row is not None
        assert row.replica.twin.reported.version == 50
        assert row.replica.twin.desired.version == 50
        assert len(r.sim.received) == 50  # each cloud change applied once at the edge
        assert same_values(r.sim.replicas["t"], row.replica)


async def test_deliver_without_a_stream_fails_at_once(tmp_path: Path) -> None:
    sync = CloudTwinLink()
    with pytest.raises(ConnectionError, match="tunnel is down"):
        await sync.deliver([{"kind": "device", "outboxId": 1}])
    del tmp_path


async def test_the_cloud_resets_a_stream_that_breaks_the_protocol(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        await r.wait(lambda: r.sync.connected)
        stream = await r.connection.open_stream("twins")
        await stream.write(wire.encode({"type": "hello", "version": 9}, max_bytes=1024))
        with pytest.raises(StreamResetError, match="version 9"):
            await read_to_end(stream)
        stream = await r.connection.open_stream("twins")
        await stream.write(struct.pack(">I", 1 << 30))  # a length over the cap
        with pytest.raises(StreamResetError, match="not within"):
            await read_to_end(stream)
        hello = {"type": "hello", "version": 1, "origin": "node2.abc", "window": 8}
        stream = await r.connection.open_stream("twins")
        await stream.write(wire.encode(hello, max_bytes=1024))
        with pytest.raises(StreamResetError, match="node1"):
            await read_to_end(stream)


async def read_to_end(stream: TunnelStream) -> None:
    while await stream.read():
        pass
