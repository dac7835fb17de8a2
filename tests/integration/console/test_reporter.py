"""``NodeStatusReporter`` in the test's own event loop, against the real server process.

With a real joined identity: the environment-free way to check what ``edge-agent run`` will do.
"""

from __future__ import annotations

import asyncio
import re
import threading

import prometheus_client

from edge_agent.node_status import NodeStatusReporter, NodeStatusSettings
from edge_agent.settings import JoinSettings, TunnelClientSettings
from edge_agent.tunnel_client import TunnelClient
from tests.harness.daemons import Agent
from tests.harness.waiting import eventually_async
from tests.integration.console.conftest import ConsoleSystem


async def wait_status(system: ConsoleSystem, name: str, status: str, within: float = 20) -> dict:  # type: ignore[type-arg]
    return await eventually_async(
        lambda: asyncio.to_thread(system.api.node, name),
        lambda node: node["status"] == status,
        what=f"node {name} {status}",
        within=within,
        every=0.1,
    )


async def test_reports_then_lease_expiry_then_disconnect(console_system: ConsoleSystem) -> None:
    hang = threading.Event()
    release = threading.Event()

    def twins() -> dict[str, object]:
        if hang.is_set():
            release.wait(30)  # a source that hangs (a stuck disk): reports stop, stream stays
        return {"devices": 3, "nested": {"ok": True}}

    agent = Agent(name="edge-inproc", workdir=console_system.workdir, server=console_system.server)
    await asyncio.to_thread(agent.join)
    client = TunnelClient(
        data_dir=agent.data_dir,
        settings=TunnelClientSettings(backoff_base=0.1, backoff_cap=0.5, drain_grace=3600.0),
        join_settings=JoinSettings(),
        registry=prometheus_client.CollectorRegistry(),
    )
    reporter = NodeStatusReporter(
        client=client,
        settings=NodeStatusSettings(interval=0.5, full_every=2.0),
        data_dir=agent.data_dir,
        extra_sources={"twins": twins},
    )
    async with asyncio.TaskGroup() as group:
        tunnel = group.create_task(client.run(), name="test.tunnel")
        reporting = group.create_task(reporter.run(), name="test.reporter")
        node = await wait_status(console_system, "edge-inproc", "online")
        assert node["metrics"]["twins.devices"] == 3
        assert node["metrics"]["twins.nested.ok"] is True
        assert node["metrics"]["node.name"] == "edge-inproc"

        # Past a second full report (one every 2 s, a report every 0.5 s): the same stream.
        async def reports_sent() -> int:
            return reporter.reports_sent

        await eventually_async(reports_sent, lambda sent: sent >= 6, what="six reports sent")
        assert reporter.streams_opened == 1
        assert reporter.status()["last_error"] is None

        # Reports stop but the stream and the tunnel stay: the lease (5 s floor) runs out.
        hang.set()
        node = await wait_status(console_system, "edge-inproc", "offline")
        # Offline by the lease, not before: the server's own account of the silence.
        silence = re.fullmatch(r"no report for (\d+) s \(lease (\d+) s\)", node["offlineReason"])
        assert silence is not None, node["offlineReason"]
        assert int(silence[1]) >= int(silence[2]) >= 5
        assert node["connected"] is True
        hang.clear()
        release.set()
        await wait_status(console_system, "edge-inproc", "online")

        # The reporter task is cancelled: its stream is reset, offline at once.
        reporting.cancel()
        node = await wait_status(console_system, "edge-inproc", "offline", within=20)
        # The reason tells a reset from the lease running out.
        assert node["offlineReason"] == "status stream reset by the agent"
        reporting = group.create_task(reporter.run(), name="test.reporter-again")
        await wait_status(console_system, "edge-inproc", "online")
        client.stop()  # drains: the reporter ends its stream, the drain does not wait its grace
        # The grace is an hour (see the client above): a drain that ends at all ended because
        # every stream was closed, not because the grace ran out.
        async with asyncio.timeout(30):
            await tunnel
        node = await wait_status(console_system, "edge-inproc", "offline", within=5)
        assert node["offlineReason"] == "status stream ended"
        reporting.cancel()
