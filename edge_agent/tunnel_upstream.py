"""An upstream for the kube proxy that is the cloud's API server, reached through the tunnel.

A loopback listener turns each TCP connection of the kube proxy's HTTP client into one tunnel
stream to the cloud's ``kube`` service, byte for byte. The cloud adds the credentials and
impersonates this node's verified identity, so nothing secret is kept here. While the tunnel is
down, connections are refused at once: the kube proxy's health checker sees an unreachable
upstream and serves from its cache. A *write* refused so is answered with a 503 that carries
``NOT_FORWARDED_HEADER`` (its request was read here and provably went nowhere), so the kube
proxy can tell its client "not sent" rather than "outcome unknown"; reads and watches are
reset as before (they fall back to the cache either way, and a watch must not take a 503 for
the API server's answer).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiohttp

from edge_agent.kubecache.upstream import NOT_FORWARDED_HEADER
from tunnel_aio import StreamError, pipe_socket

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from edge_agent.tunnel_client import TunnelClient

log = logging.getLogger("edge_agent.tunnel_upstream")

KUBE_TARGET = "kube"
_REFUSAL_READ_TIMEOUT = 2.0
"""Seconds to read a refused write's request off the socket before answering it; the kube
proxy writes it at once over loopback."""
_MAX_REFUSED_BODY = 4 * 1024 * 1024
"""Largest request body read (and dropped) to answer a refused write cleanly; above the kube
proxy's own 3 MiB bound. Closing with unread bytes would reset the answer away."""
_READS = (b"GET", b"HEAD", b"OPTIONS")


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
        if name.strip().lower() == b"transfer-encoding":
            raise ValueError("chunked request body")
    return 0


def _write_body_length(head: bytes) -> int:
    """The body length of a write's request; ValueError for a read or a body not drained."""
    if head.split(b" ", 1)[0] in _READS:
        raise ValueError("a read: reset it")
    length = _content_length(head)
    if not 0 <= length <= _MAX_REFUSED_BODY:
        raise ValueError("request body out of bounds")
    return length


async def _refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, why: str) -> None:
    """Refuse one connection's request without forwarding it (see the module docstring)."""
    try:
        async with asyncio.timeout(_REFUSAL_READ_TIMEOUT):
            head = await reader.readuntil(b"\r\n\r\n")
            await reader.readexactly(_write_body_length(head))
    except (
        TimeoutError,
        ValueError,
        asyncio.IncompleteReadError,
        asyncio.LimitOverrunError,
        OSError,
    ):
        writer.transport.abort()  # a read, or a request we cannot read whole: reset it
        return
    status = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": f"not forwarded to the cloud API server: {why}",
        "reason": "ServiceUnavailable",
        "code": 503,
    }
    body = json.dumps(status, separators=(",", ":")).encode()
    writer.write(
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
        + f"{NOT_FORWARDED_HEADER}: 1\r\nConnection: close\r\n".encode()
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    with contextlib.suppress(OSError):
        await writer.drain()
    writer.close()


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
            await _refuse(reader, writer, "the tunnel is down")  # fail fast: the cache takes over
            return
        try:
            stream = await connection.open_stream(KUBE_TARGET, timeout=open_timeout)
        except StreamError as error:
            log.info("kube upstream unavailable: %s", error)
            await _refuse(reader, writer, f"no tunnel stream ({error})")
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
