"""The agent's keep-alive pool: bounded, LIFO, stale connections never handed out."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from edge_agent.cluster.gateway.endpoints import Endpoint
from edge_agent.cluster.gateway.pool import Connection, Pool

A = Endpoint("127.0.0.1", 1)
B = Endpoint("127.0.0.1", 2)


class Server:
    def __init__(self) -> None:
        self.peers: list[asyncio.StreamWriter] = []
        self.port = 0
        self.made = 0
        self.arrived = asyncio.Event()

    async def accepted(self, _reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.peers.append(writer)
        self.arrived.set()


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    state = Server()
    listener = await asyncio.start_server(state.accepted, "127.0.0.1", 0)
    state.port = listener.sockets[0].getsockname()[1]
    yield state
    for peer in state.peers:
        peer.transport.abort()
    listener.close()
    await listener.wait_closed()


async def connect(server: Server, endpoint: Endpoint) -> Connection:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    server.made += 1
    async with asyncio.timeout(5):  # the server holds its side, closed at the fixture's end
        while len(server.peers) < server.made:
            server.arrived.clear()
            await server.arrived.wait()
    return Connection(endpoint=endpoint, reader=reader, writer=writer)


async def test_the_last_connection_put_is_taken_first(server: Server) -> None:
    pool = Pool(max_per_endpoint=4, max_total=8, idle_timeout=10)
    first, second = await connect(server, A), await connect(server, A)
    pool.put(first, 0.0)
    pool.put(second, 1.0)
    assert pool.take(A, 2.0) is second
    assert pool.take(A, 2.0) is first
    assert pool.take(A, 2.0) is None
    assert pool.take(B, 2.0) is None
    assert first.reused
    assert pool.reuses == 2
    first.close()
    second.close()


async def test_the_bounds_close_the_extra_connections(server: Server) -> None:
    pool = Pool(max_per_endpoint=2, max_total=3, idle_timeout=10)
    a = [await connect(server, A) for _ in range(3)]
    b = [await connect(server, B) for _ in range(2)]
    for at, connection in enumerate(a + b):
        pool.put(connection, float(at))
    assert pool.idle == 3
    # a[0] went when a third to A came; a[1], the oldest left, when the total was full.
    assert a[0].writer.transport.is_closing()
    assert a[1].writer.transport.is_closing()
    assert pool.take(A, 5.0) is a[2]
    assert pool.take(B, 5.0) is b[1]
    pool.close()
    assert b[0].writer.transport.is_closing()
    a[2].close()
    b[1].close()
    assert pool.idle == 0


async def test_expired_and_closed_by_the_backend_are_never_handed_out(server: Server) -> None:
    pool = Pool(max_per_endpoint=4, max_total=8, idle_timeout=4)
    old = await connect(server, A)
    pool.put(old, 0.0)
    assert pool.take(A, 4.5) is None
    assert old.writer.transport.is_closing()

    closed = await connect(server, A)
    pool.put(closed, 10.0)
    await asyncio.sleep(0)
    for peer in server.peers:
        peer.close()
    async with asyncio.timeout(5):
        assert await closed.reader.read() == b""  # the EOF, as the agent's loop would see it
    assert pool.take(A, 10.5) is None
    assert closed.writer.transport.is_closing()


async def test_sweep_retain_and_drop(server: Server) -> None:
    pool = Pool(max_per_endpoint=4, max_total=8, idle_timeout=4)
    stale, fresh, other = [await connect(server, e) for e in (A, A, B)]
    pool.put(stale, 0.0)
    pool.put(fresh, 3.0)
    pool.put(other, 3.0)
    pool.sweep(5.0)
    assert stale.writer.transport.is_closing()
    assert pool.idle == 2
    pool.retain([A])
    assert other.writer.transport.is_closing()
    pool.drop(A)
    assert fresh.writer.transport.is_closing()
    assert pool.idle == 0


async def test_no_pool_at_all_closes_every_connection(server: Server) -> None:
    pool = Pool(max_per_endpoint=0, max_total=8, idle_timeout=4)
    connection = await connect(server, A)
    pool.put(connection, 0.0)
    assert connection.writer.transport.is_closing()
    assert pool.take(A, 0.0) is None
