"""``edge-agent run`` with the node status reporter, wired exactly as the lead wires the CLI.

Until ``edge_agent/cli.py`` starts ``NodeStatusReporter`` itself, the console tests run this
module as the agent process: the same tunnel client, local API and reporter, in one process
that a test can SIGKILL. Usage::

    python -m tests.integration.console.agent_proc --data-dir D --local-api-port P --interval S
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from pathlib import Path

import prometheus_client
from aiohttp import web

from edge_agent import logs
from edge_agent.local_api import create_app
from edge_agent.node_status import NodeStatusReporter, NodeStatusSettings
from edge_agent.settings import JoinSettings, TunnelClientSettings
from edge_agent.tunnel_client import TunnelClient


async def run(data_dir: Path, port: int, interval: float) -> None:
    registry = prometheus_client.CollectorRegistry()
    client = TunnelClient(
        data_dir=data_dir,
        settings=TunnelClientSettings(backoff_base=0.2, backoff_cap=1.0),
        join_settings=JoinSettings(),
        registry=registry,
    )
    # --- the lines the lead adds to edge_agent/cli.py run() ---
    reporter = NodeStatusReporter(
        client=client, settings=NodeStatusSettings(interval=interval), data_dir=data_dir
    )
    sources = {"tunnel": client.status, "node_status": reporter.status}
    # ----------------------------------------------------------
    runner = web.AppRunner(create_app(registry=registry, sources=sources), handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, client.stop)
    try:
        async with asyncio.TaskGroup() as group:
            tunnel = group.create_task(client.run(), name="agent.tunnel")
            status = group.create_task(reporter.run(), name="agent.node-status")
            await tunnel
            status.cancel()
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--local-api-port", type=int, required=True)
    parser.add_argument("--interval", type=float, default=1.0)
    args = parser.parse_args()
    logs.setup("INFO")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run(args.data_dir, args.local_api_port, args.interval))


if __name__ == "__main__":
    main()
