"""The asyncio driver over real aiohttp WebSockets on loopback (server and client ends)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import aiohttp
import pytest
from aiohttp import web

from tests.harness.waiting import eventually_async
from tunnel_aio import StreamRejectedError, TunnelClosedError, TunnelConnection, TunnelStream
from tunnel_protocol import ErrorCode, Role, TunnelSettings

Handler = Callable[[TunnelStream], Awaitable[None]]


@dataclass
class Pair:
    server: TunnelConnection
    client: TunnelConnection


async def echo(stream: TunnelStream) -> None:
    """Echo until the peer ends, then end ours: exercises half-close."""
    if stream.target != "echo":
        stream.reject(ErrorCode.TARGET_NOT_ALLOWED, f"{stream.target} is not served here")
        return
    stream.accept()
    while data := await stream.read():
        await stream.write(data)
    stream.end()


async def sink_hash(stream: TunnelStream) -> None:
    """Read everything, answer with its sha256: a check that no byte is lost or reordered."""
    stream.accept()
    digest = hashlib.sha256()
    while data := await stream.read():
        digest.update(data)
    await stream.write(digest.hexdigest().encode())
    stream.end()


async def route(stream: TunnelStream) -> None:
    handlers: dict[str, Handler] = {"echo": echo, "hash": sink_hash}
    await handlers.get(stream.target, echo)(stream)


@contextlib.asynccontextmanager
async def tunnel_pair(
    server_handler: Handler | None = route,
    client_handler: Handler | None = route,
    *,
    server_settings: TunnelSettings | None = None,
    client_settings: TunnelSettings | None = None,
) -> AsyncIterator[Pair]:
    server_side: asyncio.Future[TunnelConnection] = asyncio.get_running_loop().create_future()
    server_done = asyncio.Event()

    async def endpoint(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=2 * 1024 * 1024)
        await ws.prepare(request)
        connection = TunnelConnection(
            ws, role=Role.SERVER, name="srv", on_stream=server_handler, settings=server_settings
        )
        server_side.set_result(connection)
        try:
            await connection.run()
        finally:
            server_done.set()
        return ws

    app = web.Application()
    app.router.add_get("/tunnel", endpoint)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(f"http://127.0.0.1:{port}/tunnel", max_msg_size=2 * 1024 * 1024) as ws,
        asyncio.TaskGroup() as group,
    ):
        client = TunnelConnection(
            ws, role=Role.CLIENT, name="cli", on_stream=client_handler, settings=client_settings
        )
        group.create_task(client.run(), name="client-run")
        server = await server_side
        await asyncio.gather(client.wait_ready(), server.wait_ready())
        try:
            yield Pair(server=server, client=client)
        finally:
            client.close()
            await server_done.wait()
    await runner.cleanup()
    assert client.open_streams == 0
    assert server.open_streams == 0


async def test_streams_both_ways() -> None:
    async with tunnel_pair() as pair:
        for opener in (pair.server, pair.client):
            stream = await opener.open_stream("echo")
            await stream.write(b"hello ")
            await stream.write(b"tunnel")
            stream.end()
            received = b""
            while data := await stream.read():
                received += data
            assert received == b"hello tunnel"
            await stream.wait_closed()


async def test_rejection_carries_the_reason() -> None:
    async with tunnel_pair() as pair:
        with pytest.raises(StreamRejectedError, match="nowhere is not served here") as caught:
            await pair.server.open_stream("nowhere")
        assert caught.value.code is ErrorCode.TARGET_NOT_ALLOWED


async def test_a_side_without_handler_rejects() -> None:
    async with tunnel_pair(client_handler=None) as pair:
        with pytest.raises(StreamRejectedError):
            await pair.server.open_stream("echo")


async def test_large_transfer_keeps_every_byte() -> None:
    payload = os.urandom(8 * 1024 * 1024 + 17)
    async with tunnel_pair() as pair:
        stream = await pair.server.open_stream("hash")
        for offset in range(0, len(payload), 1_000_003):
            await stream.write(payload[offset : offset + 1_000_003])
        stream.end()
        answer = b""
        while data := await stream.read():
            answer += data
    assert answer.decode() == hashlib.sha256(payload).hexdigest()


async def test_slow_reader_does_not_stall_other_streams() -> None:
    async with tunnel_pair() as pair:
        stalled = await pair.server.open_stream("echo")
        # Fill the stalled stream's windows both ways: the echo handler blocks writing back
        # because we never read, so its credit towards us runs out.
        writer = asyncio.ensure_future(stalled.write(b"x" * (4 * 1024 * 1024)))  # noqa: TID251 - cancelled below

        async def credit() -> int:
            return pair.server.session.send_capacity(stalled.stream_id)

        await eventually_async(
            credit, lambda left: left == 0, what="the stalled stream's credit used up", every=0.01
        )
        assert not writer.done(), "the stalled stream must be blocked by flow control"
        other = await pair.server.open_stream("echo")

        async def send() -> None:
            await other.write(b"y" * 1_000_000)
            other.end()

        async def receive() -> int:
            echoed = 0
            while data := await other.read():
                echoed += len(data)
            return echoed

        _, echoed = await asyncio.gather(send(), receive())
        assert echoed == 1_000_000
        window = TunnelSettings().initial_window
        assert pair.server.session.buffered_bytes(stalled.stream_id) <= window
        writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await writer
        stalled.reset()


async def test_reset_reaches_the_peer() -> None:
    seen: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()

    async def waiter(stream: TunnelStream) -> None:
        stream.accept()
        try:
            await stream.read()
        except ConnectionError as error:
            seen.set_result(error)

    async with tunnel_pair(client_handler=waiter) as pair:
        stream = await pair.server.open_stream("anything")
        stream.reset(ErrorCode.CANCEL, "changed my mind")
        error = await seen
        assert "changed my mind" in str(error)


async def test_a_reset_before_accept_cancels_the_handler() -> None:
    """The opener gives up while our handler still dials: the dial stops (rapid-reset work)."""
    started = asyncio.Event()
    outcome: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def slow_dial(stream: TunnelStream) -> None:
        started.set()
        try:
            await asyncio.sleep(30)  # a target that takes its time to answer
        except asyncio.CancelledError:
            outcome.set_result("cancelled")
            raise
        outcome.set_result("ran to the end")
        stream.accept()

    async def accepted_then_reset(stream: TunnelStream) -> None:
        stream.accept()
        with contextlib.suppress(ConnectionError):
            await stream.read()
        outcome.set_result("ended normally")

    async with tunnel_pair(server_handler=slow_dial) as pair:
        with pytest.raises(StreamRejectedError, match="no answer"):
            await pair.client.open_stream("slow", timeout=0.2)  # then resets the stream
        assert started.is_set()
        async with asyncio.timeout(5):
            assert await outcome == "cancelled"
        assert not pair.client.terminated  # only the stream ended, not the session
        assert not pair.server.terminated

    # Once accepted, the handler owns the stream's end: a reset is an error it reads.
    outcome = asyncio.get_running_loop().create_future()
    async with tunnel_pair(server_handler=accepted_then_reset) as pair:
        stream = await pair.client.open_stream("any")
        stream.reset(ErrorCode.CANCEL, "bye")
        async with asyncio.timeout(5):
            assert await outcome == "ended normally"


async def test_peer_going_away_fails_open_streams() -> None:
    async with tunnel_pair() as pair:
        stream = await pair.server.open_stream("echo")
        pair.client.close(ErrorCode.INTERNAL_ERROR, "agent shutting down hard")
        with pytest.raises(ConnectionError):
            await drain_then_write(stream)
        with pytest.raises(TunnelClosedError):
            await pair.server.open_stream("echo")


async def drain_then_write(stream: TunnelStream) -> None:
    while await stream.read():
        pass
    await stream.write(b"more")


async def test_ends_with_different_frame_and_window_sizes_work_together() -> None:
    """Old defaults (64 KiB frames, 256 KiB windows) at one end, new ones at the other.

    Each sender cuts by its peer's advertised frame size (a larger DATA would be a
    FRAME_SIZE_ERROR that ends the session) and keeps within its credit, both ways.
    """
    old = TunnelSettings(max_frame_payload=64 * 1024, initial_window=256 * 1024)
    payload = os.urandom(3_000_000)
    for server_settings, client_settings in ((old, None), (None, old)):
        async with tunnel_pair(
            server_settings=server_settings, client_settings=client_settings
        ) as pair:
            for opener in (pair.client, pair.server):
                stream = await opener.open_stream("echo")

                async def send(stream: TunnelStream = stream) -> None:
                    await stream.write(payload)
                    stream.end()

                async def receive(stream: TunnelStream = stream) -> bytes:
                    chunks = []
                    while data := await stream.read():
                        chunks.append(data)
                    return b"".join(chunks)

                _, echoed = await asyncio.gather(send(), receive())
                assert hashlib.sha256(echoed).digest() == hashlib.sha256(payload).digest()
            assert pair.client.session.peer_settings is not None
            assert pair.server.session.peer_settings is not None
            sizes = {
                pair.client.session.peer_settings.max_frame_payload,
                pair.server.session.peer_settings.max_frame_payload,
            }
            assert sizes == {64 * 1024, TunnelSettings().max_frame_payload}


async def test_keepalive_timer_keeps_an_idle_session_up() -> None:
    """The timer (one loop handle per session) sends PINGs and moves with each deadline.

    Idle for several times the keepalive timeout: only PINGs and PONGs keep it up, so a timer
    that fired once and was not re-armed would end the session with KEEPALIVE_TIMEOUT.
    """
    fast = TunnelSettings(ping_interval=0.1, ping_timeout=0.5, handshake_timeout=2.0)
    async with tunnel_pair(server_settings=fast, client_settings=fast) as pair:
        start = pair.client.messages_received

        async def received() -> int:
            return pair.client.messages_received - start

        await eventually_async(received, lambda n: n >= 20, what="20 keepalive messages")
        assert not pair.client.terminated
        assert not pair.server.terminated
        assert pair.client.rtt is not None
        assert pair.server.rtt is not None


async def test_a_peer_that_never_says_hello_is_timed_out() -> None:
    """The handshake deadline is the timer's first: a silent peer is cut off at it."""
    ended: asyncio.Future[TunnelConnection] = asyncio.get_running_loop().create_future()

    async def endpoint(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        connection = TunnelConnection(
            ws, role=Role.SERVER, name="srv", settings=TunnelSettings(handshake_timeout=0.3)
        )
        await connection.run()
        ended.set_result(connection)
        return ws

    app = web.Application()
    app.router.add_get("/tunnel", endpoint)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(f"http://127.0.0.1:{port}/tunnel") as ws,
        ):
            async with asyncio.timeout(10):
                connection = await ended
            assert connection.termination is not None
            assert connection.termination.code is ErrorCode.HANDSHAKE_TIMEOUT
            async with asyncio.timeout(10):
                while (await ws.receive()).type not in (
                    aiohttp.WSMsgType.CLOSE,
                    aiohttp.WSMsgType.CLOSED,
                ):
                    pass  # the server's HELLO and GO_AWAY, then its close
    finally:
        await runner.cleanup()
