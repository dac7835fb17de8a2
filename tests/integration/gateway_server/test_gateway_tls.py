"""The gateway over HTTPS (``--gateway-cert-file/--gateway-key-file``): a GET and a WebSocket."""

from __future__ import annotations

import ssl
from collections.abc import Iterator

import aiohttp
import pytest

from tests.harness.certs import TestCA
from tests.integration.gateway_server.conftest import Gateway, running_gateway

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def tls_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, TestCA]]:
    base = tmp_path_factory.mktemp("gateway-tls")
    ca = TestCA(base / "ca")
    pair = ca.issue("gateway", server=True, hosts=("web.test", "127.0.0.1"))
    with running_gateway(base, tls=pair) as running:
        yield running, ca


async def test_https_request_and_websocket(tls_gateway: tuple[Gateway, TestCA]) -> None:
    gateway, ca = tls_gateway
    context = ssl.create_default_context(cafile=str(ca.cert_path))
    url = f"https://{gateway.host}:{gateway.port}"
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=context),
        timeout=aiohttp.ClientTimeout(total=60),
    ) as http:
        async with http.get(f"{url}/headers", headers={"Host": "web.test"}) as answer:
            assert answer.status == 200
            seen = await answer.json()
        async with http.ws_connect(f"{url}/ws", headers={"Host": "web.test"}) as ws:
            await ws.send_str("over tls")
            assert await ws.receive_str(timeout=30) == "a:over tls"
    headers = {k.lower(): v for k, v in seen["headers"]}
    assert headers["x-forwarded-proto"] == "https"
    assert seen["backend"] == "a"
