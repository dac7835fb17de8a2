"""The gateway over HTTPS (``--gateway-cert-file/--gateway-key-file``): a GET and a WebSocket.

Raw TLS connections (h11 for HTTP, one hand-made WebSocket frame each way) rather than an
HTTP client library, so each connection's TLS shutdown is awaited before the test's loop
closes (a client pool closes TLS in the background and leaves a transport to warn at GC).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import ssl
from collections.abc import Iterator

import h11
import pytest

from tests.harness.certs import TestCA
from tests.integration.gateway_server.conftest import Gateway, running_gateway

pytestmark = [pytest.mark.kube, pytest.mark.timeout(400)]


@pytest.fixture(scope="module")
def tls_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, TestCA]]:
    base = tmp_path_factory.mktemp("gateway-tls")
    ca = TestCA(base / "ca")
    pair = ca.issue("gateway", server=True, hosts=("web.test", "127.0.0.1"))
    with running_gateway(base, tls=pair) as running:
        yield running, ca


async def _connect(
    gateway: Gateway, ca: TestCA
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    context = ssl.create_default_context(cafile=str(ca.cert_path))
    return await asyncio.open_connection(
        gateway.host, gateway.port, ssl=context, server_hostname="web.test"
    )


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        await writer.wait_closed()


async def test_https_request(tls_gateway: tuple[Gateway, TestCA]) -> None:
    gateway, ca = tls_gateway
    reader, writer = await _connect(gateway, ca)
    try:
        conn = h11.Connection(h11.CLIENT)
        request = h11.Request(method="GET", target="/headers", headers=[("Host", "web.test")])
        writer.write(conn.send(request) + conn.send(h11.EndOfMessage()))
        status, body = 0, bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await reader.read(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                break
    finally:
        await _close(writer)
    assert status == 200
    seen = json.loads(body)
    assert seen["backend"] == "a"
    assert {k.lower(): v for k, v in seen["headers"]}["x-forwarded-proto"] == "https"


async def test_websocket_over_https(tls_gateway: tuple[Gateway, TestCA]) -> None:
    gateway, ca = tls_gateway
    reader, writer = await _connect(gateway, ca)
    try:
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                "GET /ws HTTP/1.1\r\nHost: web.test\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 ")
        payload = b"over tls"
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        writer.write(bytes([0x81, 0x80 | len(payload)]) + mask + masked)  # FIN, text, masked
        frame = await reader.readexactly(2)
        assert frame[0] == 0x81
        assert await reader.readexactly(frame[1] & 0x7F) == b"a:over tls"
    finally:
        await _close(writer)
