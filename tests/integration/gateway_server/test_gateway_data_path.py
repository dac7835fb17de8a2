"""The gateway's data path end to end: client -> gateway listener -> tunnel -> agent -> backend.

Everything is a real process (``conftest.py``): the tunnel server, a member cluster, the real
cluster agent resolving Services to EndpointSlice endpoints, the backends.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import time
from collections.abc import AsyncIterator

import aiohttp
import h11
import pytest

from tests.integration.gateway_server.backend_http import pattern
from tests.integration.gateway_server.conftest import (
    IDLE_TIMEOUT,
    MAX_BODY,
    RESPONSE_TIMEOUT,
    STREAM_IDLE_TIMEOUT,
    Gateway,
)

pytestmark = [pytest.mark.kube, pytest.mark.timeout(400)]

MB = 1024 * 1024
BIG = 20 * MB


def _session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120))


async def _chunks(data: bytes, size: int = 256 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def _raw(gateway: Gateway, data: bytes) -> tuple[h11.Response, bytes]:
    """Send raw bytes; the first answer (head and body) on that connection."""
    reader, writer = await asyncio.open_connection(gateway.host, gateway.port)
    try:
        writer.write(data)
        await writer.drain()
        conn = h11.Connection(h11.CLIENT)
        conn.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
        head: h11.Response | None = None
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await reader.read(65536))
                continue
            if isinstance(event, h11.Response):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                break
        assert head is not None
        return head, bytes(body)
    finally:
        await _close(writer)


async def _close(writer: asyncio.StreamWriter) -> None:
    """Close and wait: a transport the loop never finished closing warns at collection."""
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


def _header(response: h11.Response, name: bytes) -> str | None:
    for key, value in response.headers:
        if key == name:
            return value.decode()
    return None


async def test_forwarded_headers_reach_the_backend(gateway: Gateway) -> None:
    """Hop-by-hop fields are dropped (also those ``Connection`` names); ours are added."""
    async with _session() as http:
        async with http.get(
            f"{gateway.url}/headers?q=1",
            headers={
                "Host": "web.test",
                "X-Request-Id": "abc-123",
                "Connection": "keep-alive, X-Hop",
                "X-Hop": "secret",
                "Keep-Alive": "timeout=5",
                "X-Forwarded-For": "10.9.8.7",
                "X-Forwarded-Proto": "https",
                "X-Forwarded-Host": "evil.test",
            },
        ) as answer:
            assert answer.status == 200
            seen = await answer.json()
        async with http.get(
            f"{gateway.url}/headers", headers={"Host": "web.test", "X-Request-Id": "not safe!"}
        ) as answer:
            other = await answer.json()
    headers = {k.lower(): v for k, v in seen["headers"]}
    assert seen["backend"] == "a"
    assert seen["path"] == "/headers?q=1"
    assert headers["host"] == "web.test"
    assert headers["x-forwarded-for"] == "10.9.8.7, 127.0.0.1"
    assert headers["x-forwarded-proto"] == "http"
    assert headers["x-forwarded-host"] == "web.test"
    assert headers["x-request-id"] == "abc-123"
    assert "x-hop" not in headers
    assert "keep-alive" not in headers
    assert [k for k, _ in seen["headers"] if k.lower() == "x-forwarded-for"] == ["X-Forwarded-For"]
    replaced = {k.lower(): v for k, v in other["headers"]}["x-request-id"]
    assert replaced != "not safe!"
    assert len(replaced) == 32


async def test_twenty_megabytes_up_and_down(gateway: Gateway) -> None:
    """Bodies of 20 MB both ways, with Content-Length and chunked, arrive intact (sha256)."""
    data = pattern(BIG)
    digest = hashlib.sha256(data).hexdigest()
    async with _session() as http:
        async with http.post(
            f"{gateway.url}/upload", data=io.BytesIO(data), headers={"Host": "web.test"}
        ) as answer:
            assert await answer.json() == {"bytes": BIG, "sha256": digest, "backend": "a"}
        async with http.post(
            f"{gateway.url}/upload", data=_chunks(data), headers={"Host": "web.test"}
        ) as answer:
            assert await answer.json() == {"bytes": BIG, "sha256": digest, "backend": "a"}
        for chunked in (False, True):
            query = f"bytes={BIG}" + ("&chunked=1" if chunked else "")
            async with http.get(
                f"{gateway.url}/download?{query}", headers={"Host": "web.test"}
            ) as answer:
                assert answer.status == 200
                if chunked:
                    assert answer.headers.get("Transfer-Encoding") == "chunked"
                else:
                    assert answer.headers["Content-Length"] == str(BIG)
                got = hashlib.sha256()
                async for chunk in answer.content.iter_any():
                    got.update(chunk)
                assert got.hexdigest() == digest
        echo = pattern(3 * MB)
        async with http.post(
            f"{gateway.url}/echo", data=_chunks(echo, 100_000), headers={"Host": "web.test"}
        ) as answer:
            assert await answer.read() == echo


async def test_keep_alive_serves_several_requests_on_one_connection(gateway: Gateway) -> None:
    reader, writer = await asyncio.open_connection(gateway.host, gateway.port)
    try:
        conn = h11.Connection(h11.CLIENT)
        for number in range(3):
            writer.write(
                conn.send(
                    h11.Request(
                        method="GET", target=f"/headers?n={number}", headers=[("Host", "web.test")]
                    )
                )
                + conn.send(h11.EndOfMessage())
            )
            await writer.drain()
            body = bytearray()
            status = 0
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await reader.read(65536)
                    assert data, f"the gateway closed the connection after {number} answers"
                    conn.receive_data(data)
                elif isinstance(event, h11.Response):
                    status = event.status_code
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    break
            assert status == 200
            assert json.loads(body)["path"] == f"/headers?n={number}"
            conn.start_next_cycle()
    finally:
        await _close(writer)


async def test_websocket_echo_through_the_gateway(gateway: Gateway) -> None:
    blob = pattern(MB)
    async with (
        _session() as http,
        http.ws_connect(f"{gateway.url}/ws", headers={"Host": "web.test"}) as ws,
    ):
        await ws.send_str("hello")
        assert await ws.receive_str(timeout=30) == "a:hello"
        await ws.send_bytes(blob)
        assert await ws.receive_bytes(timeout=30) == blob


async def test_oversized_heads_are_answered_431(gateway: Gateway) -> None:
    many_bytes = "".join(f"X-Filler-{i}: {'v' * 1000}\r\n" for i in range(40))  # 40 KB in all
    one_line = f"X-Long: {'v' * 9000}\r\n"
    many_fields = "".join(f"X-F{i}: v\r\n" for i in range(150))
    for extra in (many_bytes, one_line, many_fields):
        head, body = await _raw(
            gateway, f"GET /headers HTTP/1.1\r\nHost: web.test\r\n{extra}\r\n".encode()
        )
        assert head.status_code == 431
        assert (_header(head, b"content-type") or "").startswith("application/problem+json")
        problem = json.loads(body)
        assert problem["reason"] == "headers_too_large"
        assert problem["status"] == 431


async def test_malformed_and_too_large_requests(gateway: Gateway) -> None:
    head, body = await _raw(
        gateway, b"GET /headers HTTP/1.1\r\nHost: web.test\r\nBad Header\r\n\r\n"
    )
    assert head.status_code == 400
    assert json.loads(body)["reason"] == "bad_request"
    head, body = await _raw(
        gateway,
        b"POST /upload HTTP/1.1\r\nHost: web.test\r\n"
        + f"Content-Length: {MAX_BODY + 1}\r\n\r\n".encode(),
    )
    assert head.status_code == 413
    assert json.loads(body)["reason"] == "body_too_large"
    head, body = await _raw(gateway, b"GET /x HTTP/1.1\r\nHost: nowhere.test\r\n\r\n")
    assert head.status_code == 404
    assert json.loads(body)["reason"] == "no_route"


async def test_slow_client_head_is_cut(gateway: Gateway) -> None:
    """A client that trickles its head gets no answer: the connection closes at the idle timer."""
    reader, writer = await asyncio.open_connection(gateway.host, gateway.port)

    async def trickle() -> None:
        with contextlib.suppress(ConnectionError):
            writer.write(b"GET /headers HTTP/1.1\r\nHost: web.test\r\n")
            for _ in range(100):  # one byte every 0.2 s: 20 s of head at most
                writer.write(b"X")
                await writer.drain()
                await asyncio.sleep(0.2)

    started = time.monotonic()
    try:
        async with asyncio.TaskGroup() as group:
            feeder = group.create_task(trickle(), name="test.trickle")
            answer = await reader.read(65536)  # the test's timeout bounds it
            feeder.cancel()
        assert answer == b""  # closed without an answer
        assert feeder.cancelled(), "the gateway kept a trickling head for 20 s"
        assert time.monotonic() - started >= IDLE_TIMEOUT * 0.9
    finally:
        await _close(writer)


async def test_rejected_backend_answers_503_with_the_reason(gateway: Gateway) -> None:
    async with _session() as http:
        async with http.get(f"{gateway.url}/headers", headers={"Host": "down.test"}) as answer:
            assert answer.status == 503
            assert answer.headers["Content-Type"].startswith("application/problem+json")
            assert answer.headers["X-Request-Id"]
            problem = await answer.json(content_type=None)
        async with http.get(f"{gateway.url}/headers", headers={"Host": "offline.test"}) as answer:
            offline = await answer.json(content_type=None)
            assert answer.status == 502
    assert problem["reason"] == "backend_unreachable"
    assert problem["status"] == 503
    assert problem["title"] == "Service Unavailable"
    assert problem["type"].endswith("/backend_unreachable")
    assert "no ready endpoints" in problem["detail"]
    assert offline["reason"] == "cluster_not_found"
    assert "gw-c" in offline["detail"]


async def test_refused_backend_is_retried_on_the_next(gateway: Gateway) -> None:
    """retry.test's first backend has no ready endpoints: GET and POST go to the second."""
    async with _session() as http:
        async with http.get(f"{gateway.url}/headers", headers={"Host": "retry.test"}) as answer:
            assert answer.status == 200
            assert answer.headers["X-Backend"] == "b"
        async with http.post(
            f"{gateway.url}/upload", data=b"payload", headers={"Host": "retry.test"}
        ) as answer:
            assert (await answer.json())["backend"] == "b"


async def test_metrics_count_by_route_backend_and_class(gateway: Gateway) -> None:
    async with (
        _session() as http,
        http.get(f"{gateway.url}/headers", headers={"Host": "web.test"}) as answer,
    ):
        assert answer.status == 200
    _, body = gateway.server.get("/metrics")
    text = body.decode()
    assert (
        'tunnel_server_gateway_requests_total{backend="gw-a/demo/web:80",code="2xx",'
        'route="static:web.test"}' in text
    )
    assert "tunnel_server_gateway_request_seconds_bucket" in text
    assert "tunnel_server_gateway_in_flight " in text
    assert (
        'tunnel_server_gateway_attempts_total{backend="gw-a/demo/down:80",outcome="refused"}'
        in text
    )


async def test_body_over_the_limit_while_streaming_is_413(gateway: Gateway) -> None:
    """A chunked body (no Content-Length) is counted as it streams and refused past the limit."""
    async with (
        _session() as http,
        http.post(
            f"{gateway.url}/upload",
            data=_chunks(pattern(MAX_BODY + MB)),
            headers={"Host": "web.test"},
        ) as answer,
    ):
        assert answer.status == 413
        assert (await answer.json(content_type=None))["reason"] == "body_too_large"


async def test_backend_that_does_not_answer_is_504(gateway: Gateway) -> None:
    started = time.monotonic()
    async with (
        _session() as http,
        http.get(f"{gateway.url}/slow?seconds=60", headers={"Host": "web.test"}) as answer,
    ):
        assert answer.status == 504
        problem = await answer.json(content_type=None)
    assert problem["reason"] == "backend_timeout"
    assert RESPONSE_TIMEOUT * 0.9 <= time.monotonic() - started < 30


async def test_expect_continue_is_answered_before_the_body(gateway: Gateway) -> None:
    reader, writer = await asyncio.open_connection(gateway.host, gateway.port)
    try:
        writer.write(
            b"POST /upload HTTP/1.1\r\nHost: web.test\r\nContent-Length: 5\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"hello")
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ")
    finally:
        await _close(writer)


async def test_failure_before_an_answer_retries_idempotent_requests_only(gateway: Gateway) -> None:
    """Backend a takes the request and hangs up: a GET goes on to b, a POST gets 502."""
    async with _session() as http:
        async with http.get(f"{gateway.url}/hangup?on=a", headers={"Host": "pair.test"}) as answer:
            assert answer.status == 200
            assert answer.headers["X-Backend"] == "b"
        async with http.post(
            f"{gateway.url}/hangup?on=a", data=b"once", headers={"Host": "pair.test"}
        ) as answer:
            assert answer.status == 502
            problem = await answer.json(content_type=None)
    assert problem["reason"] == "bad_upstream"
    assert problem["detail"].startswith("service/demo/web:80: ")


async def test_stalled_answer_is_cut(gateway: Gateway) -> None:
    """An answer that stops moving is cut at the stream idle timeout: the client sees it short."""
    started = time.monotonic()
    async with (
        _session() as http,
        http.get(f"{gateway.url}/stall", headers={"Host": "web.test"}) as answer,
    ):
        assert answer.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await answer.read()
    assert STREAM_IDLE_TIMEOUT * 0.9 <= time.monotonic() - started < 30


async def test_an_answer_the_backend_cuts_short_is_cut_for_the_client(gateway: Gateway) -> None:
    """A Content-Length answer whose backend closes early reaches the client short, and cut.

    Then the same client connection's pool serves the next request on a new connection.
    """
    async with _session() as http:
        async with http.get(f"{gateway.url}/short", headers={"Host": "web.test"}) as answer:
            assert answer.status == 200
            assert answer.content_length == 1024 * 1024
            with pytest.raises(aiohttp.ClientPayloadError):
                await answer.read()
        async with http.get(f"{gateway.url}/headers", headers={"Host": "web.test"}) as answer:
            assert answer.status == 200
