"""``tunnel-server``: the cloud side of EdgeFleet."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from pathlib import Path

from aiohttp import web

from tunnel_server import __version__, logs, systemd
from tunnel_server.app import create_app
from tunnel_server.settings import ServerSettings

log = logging.getLogger("tunnel_server.cli")

DESCRIPTION = """\
EdgeFleet tunnel server: the cloud control point that edge agents dial into.

It serves the tunnel endpoint for agents, the REST API, the kube proxy into registered
clusters and nodes, the web console, and /healthz, /readyz and /metrics.
"""


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        msg = f"expected HOST:PORT such as 0.0.0.0:8443, got {value!r}"
        raise argparse.ArgumentTypeError(msg)
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104 - empty host means all


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tunnel-server",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"tunnel-server {__version__}")
    parser.add_argument(
        "--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR (default: %(default)s)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    run = sub.add_parser(
        "run",
        help="serve the tunnel endpoint, API and console",
        description="Run the server in the foreground until SIGTERM or SIGINT.",
    )
    defaults = ServerSettings()
    run.add_argument(
        "--listen",
        type=parse_listen,
        default=(defaults.host, defaults.port),
        metavar="HOST:PORT",
        help=f"address to listen on (default: {defaults.host}:{defaults.port})",
    )
    run.add_argument(
        "--data-dir",
        type=Path,
        default=defaults.data_dir,
        help="folder for the CA, tokens and the store (default: %(default)s)",
    )
    run.add_argument(
        "--public-name",
        default=defaults.public_name,
        help="DNS name or IP agents use to reach this server (default: %(default)s)",
    )
    return parser


async def serve(settings: ServerSettings) -> None:
    app = create_app(settings)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=settings.shutdown_grace)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    for address in runner.addresses:
        log.info("listening", extra={"kv": {"address": f"{address[0]}:{address[1]}"}})
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
        host, port = args.listen
        settings = ServerSettings(
            host=host, port=port, data_dir=args.data_dir, public_name=args.public_name
        )
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve(settings))
        return 0
    return 2  # argparse rejects unknown commands before this


if __name__ == "__main__":
    sys.exit(main())
