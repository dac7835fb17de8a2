"""The egress server's bounds with real processes: connections per node, and the idle limit.

``--egress-max-per-node 1`` and ``--egress-idle-timeout 1s`` make both observable at once: a
second CONNECT to the node while one is relayed gets 429 and the first is undisturbed; a relayed
connection that carries no byte is closed by the server, and the node takes a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

from tests.harness.daemons import Agent, Server
from tests.harness.procs import free_port
from tests.harness.waiting import eventually_async

ECHO_PORT = free_port()
HEAD = b"CONNECT edge-l:10250 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


@dataclass
class Limited:
    server: Server
    socket: Path


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Limited]:
    workdir = tmp_path_factory.mktemp("egress-limits")
    short = Path(tempfile.mkdtemp(prefix="egress-", dir="/tmp"))
    server = Server(
        workdir=workdir,
        extra_args=(
            "--egress-uds",
            str(short / "egress.sock"),
            "--egress-max-per-node",
            "1",
            "--egress-idle-timeout",
            "1s",
        ),
    )
    agent = Agent(
        name="edge-l", workdir=workdir, server=server, targets={"kubelet": f"127.0.0.1:{ECHO_PORT}"}
    )
    try:
        server.start()
        agent.join()
        agent.start()
        agent.wait_connected()
        yield Limited(server=server, socket=short / "egress.sock")
    finally:
        agent.stop()
        server.stop()
        shutil.rmtree(short, ignore_errors=True)


@pytest_asyncio.fixture
async def echo() -> AsyncIterator[None]:
    """A plain TCP echo server as the node's kubelet target; its connections end with it."""
    handlers: set[asyncio.Task[None]] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            with contextlib.suppress(OSError):
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
        finally:
            writer.transport.abort()
            handlers.discard(task)

    server = await asyncio.start_server(serve, "127.0.0.1", ECHO_PORT)
    yield
    server.close()
    for task in list(handlers):
        task.cancel()
    await asyncio.gather(*handlers, return_exceptions=True)
    await server.wait_closed()


async def connect(limited: Limited) -> tuple[str, asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_unix_connection(str(limited.socket))
    writer.write(HEAD)
    head = await reader.readuntil(b"\r\n\r\n")
    return head.split(b"\r\n", 1)[0].decode(), reader, writer


async def connect_when_free(
    limited: Limited,
) -> tuple[str, asyncio.StreamReader, asyncio.StreamWriter]:
    """A CONNECT once the node's one slot is free.

    A relay ends after its client closed when the other side has closed too (or at the idle
    limit), not at the same instant.
    """

    async def attempt() -> tuple[str, asyncio.StreamReader, asyncio.StreamWriter]:
        found = await connect(limited)
        if found[0].startswith("HTTP/1.1 429"):
            await close(found[2])
        return found

    return await eventually_async(
        attempt, lambda found: not found[0].startswith("HTTP/1.1 429"), what="a free slot"
    )


async def close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


@pytest.mark.usefixtures("echo")
async def test_one_connection_per_node_then_429_and_the_first_keeps_working(
    limited: Limited,
) -> None:
    status, reader, writer = await connect_when_free(limited)
    assert status == "HTTP/1.1 200 Connection established"
    second, _, other = await connect(limited)
    await close(other)
    assert second == "HTTP/1.1 429 1 connections to edge node edge-l are open"
    writer.write(b"still here")
    await writer.drain()
    assert await reader.readexactly(10) == b"still here"
    await close(writer)


@pytest.mark.usefixtures("echo")
async def test_an_idle_connection_is_closed_and_the_node_takes_a_new_one(
    limited: Limited,
) -> None:
    status, reader, writer = await connect_when_free(limited)
    assert status == "HTTP/1.1 200 Connection established"
    writer.write(b"ping")
    await writer.drain()
    assert await reader.readexactly(4) == b"ping"
    # Nothing more either way: the server closes it after its idle limit (1 s).
    async with asyncio.timeout(30):
        assert await reader.read() == b""
    await close(writer)
    # Its slot is free again (the limit is one per node).
    status, _, again = await connect_when_free(limited)
    await close(again)
    assert status == "HTTP/1.1 200 Connection established"
