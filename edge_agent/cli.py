"""``edge-agent``: the EdgeFleet daemon for edge machines."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from pathlib import Path

from aiohttp import web

from edge_agent import __version__, logs, systemd
from edge_agent.local_api import create_app
from edge_agent.settings import AgentSettings, LocalApiSettings

log = logging.getLogger("edge_agent.cli")

DESCRIPTION = """\
EdgeFleet edge agent: runs on an edge machine (systemd unit edge-agent) or as a Deployment
in a registered cluster. It keeps one outbound tunnel to the cloud, caches Kubernetes objects
so the node keeps working offline, manages device twins over MQTT and reports node status.

Its own health, metrics and status are served on http://127.0.0.1:10267.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-agent",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    parser.add_argument(
        "--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR (default: %(default)s)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    defaults = AgentSettings()
    run = sub.add_parser(
        "run",
        help="run the agent in the foreground",
        description="Run the agent until SIGTERM or SIGINT; tells systemd when it is ready.",
    )
    run.add_argument(
        "--data-dir",
        type=Path,
        default=defaults.data_dir,
        help="folder for keys, certificate, cache and outbox (default: %(default)s)",
    )
    run.add_argument(
        "--local-api-port",
        type=int,
        default=defaults.local_api.port,
        help="loopback port of the agent's own API (default: %(default)s)",
    )
    return parser


async def run(settings: AgentSettings) -> None:
    runner = web.AppRunner(create_app(), handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, settings.local_api.host, settings.local_api.port).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info(
        "local API listening",
        extra={"kv": {"address": f"{settings.local_api.host}:{settings.local_api.port}"}},
    )
    systemd.notify("READY=1")
    try:
        await stop.wait()
    finally:
        systemd.notify("STOPPING=1")
        log.info("stopping")
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.setup(args.log_level)
    if args.command == "run":
        settings = AgentSettings(
            data_dir=args.data_dir, local_api=LocalApiSettings(port=args.local_api_port)
        )
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(run(settings))
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
