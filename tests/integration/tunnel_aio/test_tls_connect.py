"""``open_tls_connection`` delivers every byte a TLS peer sent before it closed, on both loops.

The peer sends its answer, then close_notify, then FIN (what Go's servers do) while our side
has paused reading (what a pipe does while the tunnel has no credit). uvloop's own TLS layer
then shuts down and never hands over the bytes it holds (MagicStack/uvloop#661): a read
after ``resume_reading`` waits forever. ``kubectl cp`` through a cluster agent on uvloop lost
the end of its tar that way. The module puts asyncio's TLS layer under uvloop instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import ssl
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import uvloop

from tests.harness.certs import TestCA
from tunnel_aio.tls_connect import open_tls_connection

pytestmark = pytest.mark.timeout(120)

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


def contexts(folder: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    ca = TestCA(folder)
    pair = ca.issue("peer", server=True, hosts=("127.0.0.1",))
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(pair.cert_path, pair.key_path)
    client = ssl.create_default_context(cafile=str(ca.cert_path))
    return server, client


class Peer:
    """A TLS server in a thread that sends ``payload``, close_notify and FIN to one client."""

    def __init__(self, context: ssl.SSLContext, payload: bytes) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.done = threading.Event()
        self._context, self._payload = context, payload
        self._thread = threading.Thread(target=self._serve, name="test.tls-peer", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        raw, _ = self.listener.accept()
        with self._context.wrap_socket(raw, server_side=True) as tls:
            tls.sendall(self._payload)
            tls.setblocking(False)  # noqa: FBT003 - send close_notify, not wait for the client's
            with contextlib.suppress(ssl.SSLWantReadError):
                tls.unwrap()
        self.done.set()

    def close(self) -> None:
        self.listener.close()
        self._thread.join(timeout=30)


@pytest.fixture
def tls(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    return contexts(tmp_path)


async def read_after_close(peer: Peer, client: ssl.SSLContext) -> bytes:
    reader, writer = await open_tls_connection(
        "127.0.0.1", peer.port, ssl_context=client, server_hostname="127.0.0.1"
    )
    transport = writer.transport
    assert isinstance(transport, asyncio.Transport)
    transport.pause_reading()
    await asyncio.to_thread(peer.done.wait, 60)  # the peer sent all and closed
    for _ in range(20):  # loop turns: the transport takes in what the kernel holds, paused
        await asyncio.sleep(0)
    transport.resume_reading()
    try:
        async with asyncio.timeout(30):
            return await reader.read()
    finally:
        writer.close()


@pytest.mark.parametrize("size", [50_000, 3 * 1024 * 1024])
@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_every_byte_sent_before_the_close_arrives(
    tls: tuple[ssl.SSLContext, ssl.SSLContext], loop: str, size: int
) -> None:
    server, client = tls
    payload = os.urandom(size)
    peer = Peer(server, payload)
    try:
        with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
            received = runner.run(read_after_close(peer, client))
    finally:
        peer.close()
    assert len(received) == size
    assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()


def test_a_failed_handshake_raises(tmp_path: Path) -> None:
    server, _ = contexts(tmp_path / "a")
    _, stranger = contexts(tmp_path / "b")  # trusts another CA

    async def attempt() -> None:
        listener = await asyncio.start_server(lambda _, w: w.close(), "127.0.0.1", 0, ssl=server)
        port = listener.sockets[0].getsockname()[1]
        async with listener:
            with pytest.raises(ssl.SSLCertVerificationError):
                await open_tls_connection(
                    "127.0.0.1", port, ssl_context=stranger, server_hostname="127.0.0.1"
                )

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(attempt())
