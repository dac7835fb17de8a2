"""Early data over real WebSockets: a request rides with the OPEN, with new and old peers alike.

``TunnelSettings(early_data=False)`` plays a peer of the release before the extension (its
HELLO is byte for byte the old one: ``tests/unit/tunnel_protocol/test_early_data.py``), at
either end, as the frame-size interop test does for frame and window sizes.
"""

from __future__ import annotations

import asyncio
import hashlib
import os

import pytest

from tests.integration.tunnel_aio.test_connection import tunnel_pair
from tunnel_aio import StreamRejectedError, StreamResetError, TunnelStream
from tunnel_protocol import ErrorCode, TunnelSettings

OLD = TunnelSettings(early_data=False)
REQUEST = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"


class Recorder:
    """A handler that notes what had arrived when it was called, before it answered."""

    def __init__(self) -> None:
        self.had_data: list[bool] = []

    async def echo(self, stream: TunnelStream) -> None:
        self.had_data.append(stream.has_data)
        if stream.target == "refuse":
            stream.reject(ErrorCode.TARGET_UNREACHABLE, "connection refused")
            return
        if stream.target == "silent":
            await asyncio.Event().wait()  # never answers: the opener times out
        stream.accept()
        while data := await stream.read():
            await stream.write(data)
        stream.end()


async def read_all(stream: TunnelStream) -> bytes:
    chunks = []
    while data := await stream.read():
        chunks.append(data)
    return b"".join(chunks)


@pytest.mark.parametrize(
    ("server_settings", "client_settings", "early"),
    [(None, None, True), (OLD, None, False), (None, OLD, False), (OLD, OLD, False)],
    ids=["new-new", "old-server", "old-agent", "old-old"],
)
async def test_a_request_with_the_open_works_with_every_peer(
    server_settings: TunnelSettings | None, client_settings: TunnelSettings | None, *, early: bool
) -> None:
    """The same answers whichever end predates the extension.

    With two new ends the request is there when the handler starts (it came with the OPEN);
    with an old end at either side it follows the ACCEPT, as before.
    """
    agent = Recorder()
    async with tunnel_pair(
        client_handler=agent.echo,
        server_settings=server_settings,
        client_settings=client_settings,
    ) as pair:
        assert pair.server.session.early_data is early
        assert pair.client.session.early_data is early
        stream = await pair.server.open_stream("echo", early_data=REQUEST, end=True)
        assert await read_all(stream) == REQUEST
        await stream.wait_closed()
    assert agent.had_data == [early]


async def test_early_data_larger_than_the_window_arrives_whole() -> None:
    """What the initial credit takes goes with the OPEN, the rest once credit comes back."""
    small = TunnelSettings(initial_window=64 * 1024, max_frame_payload=16 * 1024)
    payload = os.urandom(1_000_000)
    async with tunnel_pair(server_settings=small, client_settings=small) as pair:
        stream = await pair.server.open_stream("hash", early_data=payload, end=True)
        answer = await read_all(stream)
    assert answer == hashlib.sha256(payload).hexdigest().encode()


async def test_a_refusal_says_the_early_data_was_not_delivered() -> None:
    agent = Recorder()
    async with tunnel_pair(client_handler=agent.echo) as pair:
        with pytest.raises(StreamRejectedError) as caught:
            await pair.server.open_stream("refuse", early_data=REQUEST, end=True)
        assert caught.value.code is ErrorCode.TARGET_UNREACHABLE
        assert pair.client.session.total_buffered_bytes == 0
    assert agent.had_data == [True]  # it had come, and was dropped unread


async def test_a_timeout_after_early_data_is_not_a_refusal() -> None:
    """No answer in time: the early data may have been passed on.

    So the opener is not told it is safe to retry (a StreamRejectedError would say so).
    """
    agent = Recorder()
    async with tunnel_pair(client_handler=agent.echo) as pair:
        with pytest.raises(StreamResetError, match="may have reached") as caught:
            await pair.server.open_stream("silent", early_data=REQUEST, timeout=0.2)
        assert caught.value.code is ErrorCode.CANCEL
        with pytest.raises(StreamRejectedError):  # without early data: a refusal, as before
            await pair.server.open_stream("silent", timeout=0.2)
