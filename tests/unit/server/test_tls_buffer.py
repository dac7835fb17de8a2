"""The elastic TLS read buffer over a real TLS connection on loopback (our CA, asyncio's TLS).

The server side is built by asyncio itself, as in ``tunnel-server run``; the module attribute
``install`` swaps is set for the test only (``monkeypatch``), so the rest of the test process
keeps asyncio's own class.
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import hashlib
import os
import ssl
from pathlib import Path

import pytest

from tunnel_server.identity.pki import CertificateAuthority
from tunnel_server.identity.tls import server_ssl_context
from tunnel_server.settings import PkiSettings
from tunnel_server.tunnel import tls_buffer
from tunnel_server.tunnel.tls_buffer import QUIET_READS_BEFORE_SHRINK, ElasticTLSProtocol

SMALL = 16 * 1024
LARGE = 64 * 1024


class Sink(asyncio.Protocol):
    """The application protocol: counts the plaintext it got."""

    def __init__(self) -> None:
        self.received = 0
        self.transport: asyncio.Transport | None = None
        self.arrived = asyncio.Event()
        self.closed = asyncio.Event()
        self.lost_with: Exception | None = None
        self.digest = hashlib.sha256()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost_with = exc
        self.closed.set()

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        self.digest.update(data)
        self.arrived.set()

    async def until(self, total: int) -> None:
        async with asyncio.timeout(10):
            while self.received < total:
                self.arrived.clear()
                await self.arrived.wait()


def tls_of(sink: Sink) -> ElasticTLSProtocol:
    assert sink.transport is not None
    protocol = sink.transport._ssl_protocol  # type: ignore[attr-defined]  # asyncio's own
    assert isinstance(protocol, ElasticTLSProtocol)
    return protocol


def buffer_size(protocol: ElasticTLSProtocol) -> int:
    """Bytes one read of this connection may take (from the shared buffer)."""
    assert len(protocol._ssl_buffer) == 0, "a connection owns no read buffer"
    return protocol.max_size


@pytest.fixture
def contexts(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    authority = CertificateAuthority.load_or_create(tmp_path, settings=PkiSettings())
    authority.ensure_serving_certificate(public_name="127.0.0.1")
    client = ssl.create_default_context(cafile=str(authority.cert_path))
    return server_ssl_context(authority), client


@pytest.fixture
def elastic(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ElasticTLSProtocol, "small", SMALL)
    monkeypatch.setattr(ElasticTLSProtocol, "large", LARGE)
    monkeypatch.setattr(ElasticTLSProtocol, "max_size", SMALL)
    monkeypatch.setattr(asyncio.sslproto, "SSLProtocol", ElasticTLSProtocol)


@pytest.mark.usefixtures("elastic")
async def test_idle_small_bulk_large_then_small_again(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    server_context, client_context = contexts
    sinks: list[Sink] = []

    def factory() -> Sink:
        sinks.append(Sink())
        return sinks[-1]

    server = await asyncio.get_running_loop().create_server(
        factory, "127.0.0.1", 0, ssl=server_context
    )
    port = server.sockets[0].getsockname()[1]
    live, grown = ElasticTLSProtocol.live, ElasticTLSProtocol.grown
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_context)
    try:
        writer.write(b"ping")
        await writer.drain()
        (sink,) = sinks
        await sink.until(4)
        protocol = tls_of(sink)
        assert buffer_size(protocol) == SMALL, "a new connection starts small"
        peercert = writer.get_extra_info("peercert")  # the client end: the server's certificate
        assert isinstance(peercert, dict)
        assert peercert["subject"], "decoded on demand"
        assert "peercert" not in writer.transport._ssl_protocol._extra  # type: ignore[attr-defined]

        sent = 4
        for _ in range(8):  # bulk: reads fill the small buffer, so it grows
            writer.write(b"x" * (1024 * 1024))
            sent += 1024 * 1024
        await writer.drain()
        await sink.until(sent)
        assert protocol.max_size == LARGE
        assert buffer_size(protocol) == LARGE
        assert ElasticTLSProtocol.live == live + 2  # both ends of the loopback connection
        assert ElasticTLSProtocol.grown == grown + 1  # only the receiving end grew

        for _ in range(QUIET_READS_BEFORE_SHRINK + 1):  # one small message per read
            writer.write(b"keepalive")
            sent += 9
            await writer.drain()
            await sink.until(sent)
        assert buffer_size(protocol) == SMALL, "quiet again: the large buffer is given back"
        assert protocol.max_size == SMALL
        assert ElasticTLSProtocol.grown == grown
        assert sink.received == sent, "no byte lost across the buffer changes"
    finally:
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
    async with asyncio.timeout(5):
        await sinks[0].closed.wait()  # the server end hears of the close last
    assert sinks[0].lost_with is None
    assert ElasticTLSProtocol.live == live


def test_install_swaps_the_class_and_checks_sizes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(asyncio.sslproto, "SSLProtocol", asyncio.sslproto.SSLProtocol)
    for name in ("small", "large", "max_size"):
        monkeypatch.setattr(ElasticTLSProtocol, name, getattr(ElasticTLSProtocol, name))
    with pytest.raises(ValueError, match="0 < small <= large"):
        tls_buffer.install(small=64 * 1024, large=16 * 1024)
    assert tls_buffer.install(small=8 * 1024, large=32 * 1024)
    assert asyncio.sslproto.SSLProtocol is ElasticTLSProtocol
    assert (ElasticTLSProtocol.small, ElasticTLSProtocol.large) == (8 * 1024, 32 * 1024)


@pytest.mark.usefixtures("elastic")
async def test_connections_share_one_read_buffer_and_lose_no_byte(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    """Bulk on several connections at once, all reading into the one buffer: bytes intact."""
    server_context, client_context = contexts
    sinks: list[Sink] = []

    def factory() -> Sink:
        sinks.append(Sink())
        return sinks[-1]

    server = await asyncio.get_running_loop().create_server(
        factory, "127.0.0.1", 0, ssl=server_context
    )
    port = server.sockets[0].getsockname()[1]
    writers = [
        (await asyncio.open_connection("127.0.0.1", port, ssl=client_context))[1] for _ in range(3)
    ]
    try:
        payloads = [os.urandom(3 * 1024 * 1024 + i) for i in range(len(writers))]
        for writer, payload in zip(writers, payloads, strict=True):
            writer.write(payload)  # all queued before any is drained: the reads interleave
        await asyncio.gather(*(writer.drain() for writer in writers))
        assert len(sinks) == len(writers), "accepted in the order they connected"
        for sink, payload in zip(sinks, payloads, strict=True):
            await sink.until(len(payload))
            assert sink.received == len(payload)
            assert sink.digest.hexdigest() == hashlib.sha256(payload).hexdigest()
            assert len(tls_of(sink)._ssl_buffer) == 0
        assert len(tls_buffer.shared_buffer(1)) >= LARGE, "one buffer of the large size"
    finally:
        for writer in writers:
            writer.close()
            await writer.wait_closed()
        server.close()
        await server.wait_closed()
