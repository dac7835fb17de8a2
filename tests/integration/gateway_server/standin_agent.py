r"""STAND-IN for the cluster agent's ``service/<namespace>/<name>:<port>`` target.

Only until the agent serves that target itself (issue 16, written separately: it resolves
the Service to a ready EndpointSlice endpoint). This runs the agent's real tunnel client
(``edge_agent.tunnel_client.TunnelClient``, the same session, certificate and stream
handling as ``edge-agent run``) for a joined cluster identity, and serves Service targets
from a fixed map given on the command line instead of EndpointSlices:

    python -m tests.integration.gateway_server.standin_agent --data-dir DIR \
        --service service/default/web:80=127.0.0.1:PORT \
        --service service/default/down:80=unready

``unready`` answers as the agent does for a Service without ready endpoints (REJECT
``TARGET_UNREACHABLE`` with the reason); an address is dialled (refused: the same reject);
any other target is ``TARGET_NOT_ALLOWED``. Once the session is up, ``DIR/standin-up`` exists.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import prometheus_client

from daemon_support import logs
from edge_agent.settings import JoinSettings, TunnelClientSettings
from edge_agent.tunnel_client import TunnelClient
from tunnel_aio import TunnelStream, pipe_socket
from tunnel_protocol import ErrorCode

log = logging.getLogger("tests.gateway.standin_agent")
UNREADY = "unready"


def _services(values: list[str]) -> dict[str, tuple[str, int] | None]:
    out: dict[str, tuple[str, int] | None] = {}
    for value in values:
        name, _, where = value.partition("=")
        if where == UNREADY:
            out[name] = None
        else:
            host, _, port = where.rpartition(":")
            out[name] = (host, int(port))
    return out


def _serve(name: str, address: tuple[str, int] | None) -> Callable[[TunnelStream], Awaitable[None]]:
    async def serve(stream: TunnelStream) -> None:
        if address is None:
            stream.reject(ErrorCode.TARGET_UNREACHABLE, f"{name}: no ready endpoints")
            return
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(*address), 5.0)
        except (OSError, TimeoutError) as error:
            stream.reject(ErrorCode.TARGET_UNREACHABLE, f"{name}: {error}")
            return
        stream.accept()
        await pipe_socket(stream, reader, writer)

    return serve


async def run(data_dir: Path, services: dict[str, tuple[str, int] | None]) -> None:
    client = TunnelClient(
        data_dir=data_dir,
        settings=TunnelClientSettings(backoff_base=0.2, backoff_cap=2.0),
        join_settings=JoinSettings(),
        registry=prometheus_client.CollectorRegistry(),
    )
    for name, address in services.items():
        client.builtin_targets[name] = _serve(name, address)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, client.stop)

    async def mark_up() -> None:
        await client.up.wait()
        (data_dir / "standin-up").touch()

    async with asyncio.TaskGroup() as group:
        marker = group.create_task(mark_up(), name="standin.up")
        await client.run()
        marker.cancel()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--service", action="append", default=[])
    args = parser.parse_args()
    logs.setup("INFO")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run(args.data_dir, _services(args.service)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
