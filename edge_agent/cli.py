"""``edge-agent``: the EdgeFleet daemon for edge machines."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import signal
import socket
import sys
from pathlib import Path

import prometheus_client
from aiohttp import web

from edge_agent import __version__, config, logs, systemd
from edge_agent.join import EXIT_CODES, JoinError, JoinOptions, join
from edge_agent.local_api import create_app
from edge_agent.settings import AgentSettings, LocalApiSettings
from edge_agent.tunnel_client import TunnelClient

log = logging.getLogger("edge_agent.cli")

DESCRIPTION = """\
EdgeFleet edge agent: runs on an edge machine (systemd unit edge-agent) or as a Deployment
in a registered cluster. It keeps one outbound tunnel to the cloud, caches Kubernetes objects
so the node keeps working offline, manages device twins over MQTT and reports node status.

Its own health, metrics and status are served on http://127.0.0.1:10267.
"""

JOIN_DESCRIPTION = """\
Join a tunnel server: pin its CA by hash (never the system trust store), make a private
key that never leaves this machine, send a CSR with the bootstrap token, and store the
signed client certificate in the data dir. If the token requires approval, wait (showing
progress) until an operator runs `tunnel-server nodes approve NAME`.
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
        "--config",
        type=Path,
        help="TOML config file; see docs/agent-config.md (default: built-in defaults)",
    )
    run.add_argument(
        "--data-dir",
        type=Path,
        help=f"folder for keys, certificate, cache and outbox (default: {defaults.data_dir})",
    )
    run.add_argument(
        "--local-api-port",
        type=int,
        help=f"loopback port of the agent's own API (default: {defaults.local_api.port})",
    )
    _add_join_command(sub, defaults)
    return parser


def _add_join_command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], defaults: AgentSettings
) -> None:
    command = sub.add_parser(
        "join",
        help="join a tunnel server with a bootstrap token",
        description=JOIN_DESCRIPTION,
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    command.add_argument("--server", required=True, help="server URL, e.g. https://cloud:8443")
    command.add_argument(
        "--token", required=True, help="bootstrap token from `tunnel-server token create`"
    )
    command.add_argument(
        "--ca-hash",
        required=True,
        metavar="sha256:HEX",
        help="the server CA's hash from `tunnel-server ca-hash`",
    )
    command.add_argument(
        "--name",
        default=socket.gethostname().lower(),
        help="node name the token was created for (default: this host's name, %(default)s)",
    )
    command.add_argument(
        "--data-dir",
        type=Path,
        default=defaults.data_dir,
        help="where the key and certificate are stored (default: %(default)s)",
    )
    command.add_argument(
        "--wait-approval",
        type=float,
        default=defaults.join.wait_approval,
        metavar="SECONDS",
        help="how long to wait if the token requires approval (default: %(default)gs)",
    )


def cmd_join(args: argparse.Namespace) -> int:
    options = JoinOptions(
        server=args.server,
        token=args.token,
        ca_hash=args.ca_hash,
        name=args.name,
        data_dir=args.data_dir,
        wait_approval=args.wait_approval,
    )

    def progress(message: str) -> None:
        print(f"edge-agent: {message}", file=sys.stderr, flush=True)  # noqa: T201 - progress

    try:
        identity = asyncio.run(join(options, settings=AgentSettings().join, progress=progress))
    except JoinError as exc:
        print(f"edge-agent: join failed: {exc}", file=sys.stderr)  # noqa: T201 - the answer
        return exc.exit_code
    except PermissionError as exc:
        print(f"edge-agent: join failed: {exc} (run as root?)", file=sys.stderr)  # noqa: T201
        return 1
    print(  # noqa: T201 - the command's answer
        f"joined {identity.server} as {identity.kind} {identity.name};"
        f" certificate valid until {identity.not_after.isoformat(timespec='seconds')},"
        f" stored in {identity.data_dir}"
    )
    return 0


async def run(settings: AgentSettings) -> None:
    registry = prometheus_client.CollectorRegistry()
    client = TunnelClient(
        data_dir=settings.data_dir,
        settings=settings.tunnel,
        join_settings=settings.join,
        registry=registry,
    )
    runner = web.AppRunner(
        create_app(registry=registry, sources={"tunnel": client.status}), handle_signals=False
    )
    await runner.setup()
    await web.TCPSite(runner, settings.local_api.host, settings.local_api.port).start()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, client.stop)
    log.info(
        "local API listening",
        extra={"kv": {"address": f"{settings.local_api.host}:{settings.local_api.port}"}},
    )
    systemd.notify("READY=1")
    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(client.run(), name="agent.tunnel")
    finally:
        systemd.notify("STOPPING=1")
        log.info("stopped")
        await runner.cleanup()


def cmd_run(args: argparse.Namespace) -> int:
    overrides: dict[str, object] = {}
    if args.data_dir is not None:
        overrides["data_dir"] = args.data_dir
    try:
        settings = config.load(args.config, overrides=overrides)
    except config.ConfigError as error:
        print(f"edge-agent: {error}", file=sys.stderr)  # noqa: T201 - the CLI's answer
        return 2
    if args.local_api_port is not None:
        settings = dataclasses.replace(
            settings, local_api=LocalApiSettings(port=args.local_api_port)
        )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run(settings))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.setup(args.log_level)
    if args.command == "run":
        return cmd_run(args)
    if args.command == "join":
        return cmd_join(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
