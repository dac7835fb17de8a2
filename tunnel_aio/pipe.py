"""Join a tunnel stream and a TCP connection, byte for byte, with half-close both ways."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from tunnel_aio.stream import StreamError, TunnelStream
from tunnel_protocol import ErrorCode

log = logging.getLogger("tunnel_aio.pipe")

CHUNK = 64 * 1024
"""Bytes per socket read: one full DATA frame at the default frame size."""


async def pipe_socket(
    stream: TunnelStream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """Copy both ways until both directions ended; close the socket; never leak either side.

    An EOF on one side becomes a half-close on the other (FIN or ``write_eof``), so protocols
    that signal "done sending" by shutting down one direction work through the tunnel. Any
    error resets the stream and aborts the socket.
    """
    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(_socket_to_stream(reader, stream), name=f"pipe-up-{stream.stream_id}")
            group.create_task(
                _stream_to_socket(stream, writer), name=f"pipe-down-{stream.stream_id}"
            )
    except* (OSError, StreamError) as errors:
        log.debug("pipe %s to %s ended: %s", stream.stream_id, stream.target, errors.exceptions[0])
        stream.reset(ErrorCode.CANCEL, "connection to the target failed")
        writer.transport.abort()
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _socket_to_stream(reader: asyncio.StreamReader, stream: TunnelStream) -> None:
    while data := await reader.read(CHUNK):
        await stream.write(data)
    stream.end()


async def _stream_to_socket(stream: TunnelStream, writer: asyncio.StreamWriter) -> None:
    while data := await stream.read():
        writer.write(data)
        await writer.drain()
    if writer.can_write_eof():
        writer.write_eof()
