"""An upstream for the kube proxy that is the cloud's API server, reached through the tunnel.

A loopback listener turns each TCP connection of the kube proxy's HTTP client into one tunnel
stream to the cloud's ``kube`` service, byte for byte. The cloud adds the credentials and
impersonates this node's verified identity, so nothing secret is kept here. While the tunnel is
down, connections are refused at once: the kube proxy's health checker sees an unreachable
upstream and serves from its cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiohttp

from tunnel_aio import StreamError, pipe_socket

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from edge_agent.tunnel_client import TunnelClient

log = logging.getLogger("edge_agent.tunnel_upstream")

KUBE_TARGET = "kube"


@dataclass(frozen=True, kw_only=True)
class TunnelUpstream:
    base_url: str
    session: aiohttp.ClientSession


@contextlib.asynccontextmanager
async def open_tunnel_upstream(
    client: TunnelClient, *, open_timeout: float = 5.0, first_session_wait: float = 10.0
) -> AsyncIterator[TunnelUpstream]:
    """Yield an upstream (``base_url`` on loopback, plain HTTP) for ``serve_kube_proxy``.

    Waits for the outcome of the tunnel's first connection attempt, at most
    ``first_session_wait`` seconds: a node that starts with a working link begins online
    instead of being judged offline by the kube proxy's first probe, and a node that boots
    while the cloud is unreachable serves its kubelet from the cache as soon as that attempt
    failed, not after the whole wait (its kubelet would be refused meanwhile). Only an attempt
    that hangs (packets dropped) uses the whole wait. ``client.run()`` must already be running.
    """
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(first_session_wait):
            await client.settled.wait()

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = client.connection
        if connection is None or connection.terminated:
            writer.transport.abort()  # the tunnel is down: fail fast, the cache takes over
            return
        try:
            stream = await connection.open_stream(KUBE_TARGET, timeout=open_timeout)
        except StreamError as error:
            log.info("kube upstream unavailable: %s", error)
            writer.transport.abort()
            return
        await pipe_socket(stream, reader, writer)

    server = await asyncio.start_server(relay, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    session = aiohttp.ClientSession(
        # No pool limit (aiohttp's default is 100): each watch holds a connection for its
        # whole life, and a full pool would starve the next watch, write and health probe.
        connector=aiohttp.TCPConnector(limit=0),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=open_timeout),
    )
    try:
        yield TunnelUpstream(base_url=f"http://127.0.0.1:{port}", session=session)
    finally:
        await session.close()
        server.close()
        await server.wait_closed()
