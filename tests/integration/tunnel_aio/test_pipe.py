"""``connect_pipe``: a tunnel stream joined to a real TCP target.

Over a real aiohttp WebSocket pair and a real loopback TCP server.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import struct
from collections.abc import Awaitable, Callable

import pytest

from tests.integration.tunnel_aio.test_connection import tunnel_pair
from tunnel_aio import StreamResetError, TunnelStream, connect_pipe
from tunnel_protocol import ErrorCode

ClientHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _tcp_target(handler: ClientHandler) -> tuple[asyncio.Server, int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def _piping_to(port: int) -> Callable[[TunnelStream], Awaitable[None]]:
    """The agent's way: dial, accept, pipe."""

    async def handler(stream: TunnelStream) -> None:
        pipe = await connect_pipe("127.0.0.1", port)
        stream.accept()
        await pipe.run(stream)

    return handler


async def _read_all(stream: TunnelStream) -> bytes:
    parts = []
    while data := await stream.read():
        parts.append(data)
    return b"".join(parts)


async def _hash_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    digest = hashlib.sha256()
    total = 0
    while data := await reader.read(65536):
        digest.update(data)
        total += len(data)
    writer.write(f"{total} {digest.hexdigest()}".encode())
    await writer.drain()
    writer.close()


async def test_bytes_and_half_close_cross_in_both_directions() -> None:
    """8 MiB up (32 windows: credit runs out again and again), FIN, then the answer back."""
    server, port = await _tcp_target(_hash_then_close)
    payload = os.urandom(8 * 1024 * 1024)
    async with server, tunnel_pair(client_handler=_piping_to(port)) as pair:
        stream = await pair.server.open_stream("tcp")
        await stream.write(payload)
        stream.end()
        answer = await _read_all(stream)
        assert answer == f"{len(payload)} {hashlib.sha256(payload).hexdigest()}".encode()
        await asyncio.wait_for(stream.wait_closed(), 10)
        assert pair.client.session.open_streams_count == 0


async def test_a_target_that_speaks_first_loses_nothing() -> None:
    """Bytes sent before the stream is accepted wait in the pipe, then come first."""
    sent = asyncio.Event()

    async def banner_then_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HELLO banner\n" * 1000)
        await writer.drain()
        sent.set()
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    server, port = await _tcp_target(banner_then_echo)

    async def slow_accept(stream: TunnelStream) -> None:
        pipe = await connect_pipe("127.0.0.1", port)
        await asyncio.wait_for(sent.wait(), 10)  # the banner is in our socket before the accept
        stream.accept()
        await pipe.run(stream)

    async with server, tunnel_pair(client_handler=slow_accept) as pair:
        stream = await pair.server.open_stream("tcp")
        await stream.write(b"ping")
        stream.end()
        assert await _read_all(stream) == b"HELLO banner\n" * 1000 + b"ping"


async def test_a_target_reset_resets_the_stream() -> None:
    async def reset_after_first_read(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await reader.read(10)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # with SO_LINGER 0: an RST, not a FIN

    server, port = await _tcp_target(reset_after_first_read)
    async with server, tunnel_pair(client_handler=_piping_to(port)) as pair:
        stream = await pair.server.open_stream("tcp")
        await stream.write(b"x" * 100)
        with pytest.raises(StreamResetError) as failed:
            await asyncio.wait_for(_read_all(stream), 10)
        assert failed.value.code is ErrorCode.CANCEL


async def test_a_stream_that_is_not_read_stops_reading_the_target() -> None:
    """A target sends without end into a stream nobody reads.

    The pipe stops reading it (bounded memory) and all ends cleanly once the stream is reset.
    """
    written = 0
    stalled = asyncio.Event()

    async def flood(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal written
        chunk = b"z" * 65536
        try:
            while True:
                writer.write(chunk)
                written += len(chunk)
                try:
                    await asyncio.wait_for(writer.drain(), 2)
                except TimeoutError:
                    stalled.set()  # the socket stopped taking bytes: nobody reads it
                    await writer.drain()
        except ConnectionError:
            writer.close()

    server, port = await _tcp_target(flood)
    async with server, tunnel_pair(client_handler=_piping_to(port)) as pair:
        stream = await pair.server.open_stream("tcp")
        await asyncio.wait_for(stalled.wait(), 30)
        window = pair.server.session.settings.initial_window
        assert pair.server.session.buffered_bytes(stream.stream_id) <= window
        assert written < 64 * 1024 * 1024  # socket buffers and one window, not all of it
        stream.reset(ErrorCode.CANCEL, "enough")
        await asyncio.wait_for(stream.wait_closed(), 10)
