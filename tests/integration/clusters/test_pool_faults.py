"""Kept-alive member connections (``reuse``) against a stand-in member that injects faults.

No kube-apiserver can be made to close a kept-alive connection exactly as a request is sent,
or to answer ``Connection: close`` on demand. The stand-in speaks HTTP/1.1 over TLS (h11); the
agent end is a real ``ApiServerTarget``, the cloud end a real tunnel pair on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import h11
import prometheus_client
import pytest

from edge_agent.cluster import ApiServerMetrics, ApiServerTarget, credentials
from edge_agent.cluster.settings import ClusterSettings
from tests.harness.certs import TestCA
from tests.integration.clusters.members import write_kubeconfig
from tests.integration.tunnel_aio.test_connection import Pair, tunnel_pair
from tunnel_aio import TunnelStream

WATCH_CHUNK = b'{"type":"ADDED"}\n'


@dataclass
class FakeMember:
    """A plain HTTP/1.1 server (h11) standing in for the member API server."""

    drop_after: int | None = None
    """Answer this many requests on a connection, then read the next and hang up unanswered
    (a member closing an idle connection just as the agent reuses it)."""
    connection_close: bool = False
    """Answer with ``Connection: close``."""
    connections: int = 0
    bodies: list[bytes] = field(default_factory=list)
    watch_gone: asyncio.Event = field(default_factory=asyncio.Event)
    port: int = 0
    open: int = 0
    all_closed: asyncio.Event = field(default_factory=asyncio.Event)
    got_head: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        self.all_closed.clear()
        try:
            with contextlib.suppress(ConnectionError):  # the agent aborted it
                await self._serve(reader, writer)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            self.open -= 1
            if not self.open:
                self.all_closed.set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        answered = 0
        while True:
            request, body = await _read_request(conn, reader, self.got_head)
            if request is None:
                return
            if self.drop_after is not None and answered >= self.drop_after:
                return  # read, never answered: the connection just closes
            self.bodies.append(body)
            if request.target.startswith(b"/watch"):
                await self._watch(conn, reader, writer)
                return
            headers = [("Content-Length", "2")]
            if self.connection_close:
                headers.append(("Connection", "close"))
            writer.write(conn.send(h11.Response(status_code=200, headers=headers)) or b"")
            writer.write(conn.send(h11.Data(data=b"ok")) or b"")
            writer.write(conn.send(h11.EndOfMessage()) or b"")
            await writer.drain()
            answered += 1
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()

    async def _watch(
        self, conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """One chunk of an endless answer, then wait until the agent hangs up."""
        head = h11.Response(status_code=200, headers=[("Transfer-Encoding", "chunked")])
        writer.write((conn.send(head) or b"") + (conn.send(h11.Data(data=WATCH_CHUNK)) or b""))
        await writer.drain()
        with contextlib.suppress(ConnectionError):
            while await reader.read(1024):
                pass
        self.watch_gone.set()


async def _read_request(
    conn: h11.Connection, reader: asyncio.StreamReader, heads: asyncio.Event
) -> tuple[h11.Request | None, bytes]:
    request: h11.Request | None = None
    body = b""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await reader.read(65536))
        elif isinstance(event, h11.Request):
            request = event
            heads.set()
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            return request, body
        else:  # ConnectionClosed
            return None, b""


@dataclass
class Agent:
    target: ApiServerTarget
    registry: prometheus_client.CollectorRegistry

    @property
    def opened(self) -> float:
        name = "edge_agent_cluster_member_connections_opened_total"
        return self.registry.get_sample_value(name) or 0.0


@contextlib.asynccontextmanager
async def _setup(member: FakeMember, folder: Path) -> AsyncIterator[tuple[Pair, Agent]]:
    ca = TestCA(folder / "ca")
    pair_files = ca.issue("member", server=True, hosts=("127.0.0.1",))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pair_files.cert_path, pair_files.key_path)
    server = await asyncio.start_server(member.handle, "127.0.0.1", 0, ssl=context)
    member.port = server.sockets[0].getsockname()[1]
    kubeconfig = write_kubeconfig(
        folder / "kubeconfig", server=f"https://127.0.0.1:{member.port}", token="t", ca=ca.cert_path
    )
    settings = ClusterSettings(kubeconfig=kubeconfig)
    registry = prometheus_client.CollectorRegistry()
    target = ApiServerTarget(
        settings=settings,
        credentials=credentials.load(settings),
        metrics=ApiServerMetrics(registry),
    )
    agent = Agent(target=target, registry=registry)

    async def handler(stream: TunnelStream) -> None:
        await target.serve(stream)

    try:
        async with tunnel_pair(client_handler=handler) as pair:
            yield pair, agent
    finally:
        target.close()
        async with asyncio.timeout(30):  # the member's ends of them close too
            await member.all_closed.wait()
        server.close()
        await server.wait_closed()


def _request(target: str = "/api/v1/pods") -> bytes:
    """What the cloud writes into a stream (``http_over_stream.forward``)."""
    conn = h11.Connection(h11.CLIENT)
    headers = [
        ("Host", "kube-apiserver"),
        ("Connection", "close"),
        ("Impersonate-User", "edgefleet:admin"),
        ("Impersonate-Group", "edgefleet:admin"),
    ]
    out = conn.send(h11.Request(method="GET", target=target, headers=headers)) or b""
    return out + (conn.send(h11.EndOfMessage()) or b"")


async def _exchange(pair: Pair, request: bytes) -> tuple[int, bytes] | None:
    """Status and body of the answer in a fresh stream, None when it ended unanswered."""
    stream = await pair.server.open_stream("kube-apiserver")
    await stream.write(request)
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
    conn.send(h11.EndOfMessage())
    status, body = 0, b""
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.read())
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return status, body
            else:
                return None
    except h11.RemoteProtocolError:
        return None
    finally:
        stream.reset()


async def test_sequential_gets_share_one_connection(tmp_path: Path) -> None:
    member = FakeMember()
    async with _setup(member, tmp_path) as (pair, agent):
        for _ in range(10):
            assert await _exchange(pair, _request()) == (200, b"ok")
        assert agent.opened == 1
    assert member.connections == 1


async def test_an_answer_with_connection_close_is_not_kept(tmp_path: Path) -> None:
    member = FakeMember(connection_close=True)
    async with _setup(member, tmp_path) as (pair, agent):
        for _ in range(3):
            assert await _exchange(pair, _request()) == (200, b"ok")
        assert len(agent.target.pool) == 0
    assert member.connections == 3


async def test_a_get_on_a_connection_the_member_dropped_is_retried_on_a_fresh_one(
    tmp_path: Path,
) -> None:
    member = FakeMember(drop_after=1)
    async with _setup(member, tmp_path) as (pair, agent):
        assert await _exchange(pair, _request()) == (200, b"ok")
        # The kept connection looks fine when taken; the member hangs up on the request.
        assert await _exchange(pair, _request()) == (200, b"ok")
        assert await _exchange(pair, _request()) == (200, b"ok")
        assert agent.opened == 3
    assert member.connections == 3


@pytest.mark.timeout(60)
async def test_a_reset_stream_aborts_its_watch_and_keeps_nothing(tmp_path: Path) -> None:
    member = FakeMember()
    async with _setup(member, tmp_path) as (pair, agent):
        stream = await pair.server.open_stream("kube-apiserver")
        await stream.write(_request(target="/watch/pods"))
        received = b""
        while WATCH_CHUNK not in received:
            received += await stream.read()
        stream.reset()
        async with asyncio.timeout(30):
            await member.watch_gone.wait()
        assert len(agent.target.pool) == 0
        assert await _exchange(pair, _request()) == (200, b"ok")
    assert member.connections == 2
