"""Join a tunnel stream and a TCP connection, byte for byte, with half-close both ways.

Two ways in, same rules:

* ``connect_pipe(host, port)`` dials with an ``asyncio.Protocol`` of our own (what the agent
  uses for every stream to an allow-listed target): socket bytes go to the stream from the
  protocol's ``data_received`` callback, with no reader task, no ``StreamReader`` copy and no
  loop step in between; stream bytes go to the socket from the one task that calls
  ``SocketPipe.run``. A stream that serves one small request costs one task, not three.
* ``pipe_socket(stream, reader, writer)`` does the same over an ``asyncio`` stream pair, for
  callers that already hold one (a connection accepted by ``asyncio.start_server``).

Rules of both:

* Backpressure both ways, memory bounded. Towards the stream: bytes are sent only as the
  peer's credit allows; when it runs out the socket is not read (``pause_reading``) until
  credit comes back, so we hold at most one socket read beyond the window. Towards the
  socket: the stream is read (and credit given back) only while the socket's write buffer is
  under its high-water mark.
* An EOF on one side becomes a half-close on the other (FIN or ``write_eof``), so protocols
  that signal "done sending" by shutting down one direction work through the tunnel.
* Any error resets the stream and aborts the socket; on return the socket is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import cast

from tunnel_aio.stream import StreamError, TunnelStream
from tunnel_protocol import ErrorCode

log = logging.getLogger("tunnel_aio.pipe")

CHUNK = 256 * 1024
"""Bytes per socket read of ``pipe_socket``: one full DATA frame at the default frame size
(fewer frames per MiB is what saves CPU on both ends; ``tunnel_protocol.settings``)."""


class _SocketSide(asyncio.Protocol):
    """The socket end of a ``SocketPipe``; callbacks only, the stream end is ``run``."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.transport: asyncio.Transport | None = None
        self.stream: TunnelStream | None = None
        self._pending: deque[memoryview] = deque()
        """Socket bytes the stream had no credit for yet (reading is paused meanwhile)."""
        self._eof = False
        self.up_done: asyncio.Future[None] = loop.create_future()
        """Done once the socket -> stream direction ended: ``None``, or the error."""
        self._drained: asyncio.Future[None] | None = None
        self._writing_paused = False
        self.lost = False

    # ------------------------------------------------------------------ asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A TCP transport (asyncio's or uvloop's, which does not subclass asyncio.Transport).
        self.transport = cast("asyncio.Transport", transport)

    def data_received(self, data: bytes) -> None:
        if self.up_done.done():
            return  # the direction failed: nothing is forwarded any more
        self._pending.append(memoryview(data))
        if self.stream is not None and len(self._pending) == 1:
            self._flush()
        else:  # not piped yet, or already waiting for credit
            self._pause_reading()

    def eof_received(self) -> bool:
        self._eof = True
        if self.stream is not None and not self._pending:
            self._flush()
        return True  # keep our write direction open: a half-close, not the end

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if not self.up_done.done():
            # Lost before the target's EOF reached the stream: the exchange is cut short.
            self._finish_up(exc or ConnectionResetError("the connection to the target closed"))
        self._wake_drain(exc or ConnectionResetError("the connection to the target was lost"))

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._wake_drain(None)

    # ------------------------------------------------------------------ socket -> stream

    def _flush(self) -> None:
        """Send pending bytes as far as credit goes; then read on, or end the stream."""
        stream = self.stream
        if stream is None or self.up_done.done():
            return
        try:
            while self._pending:
                view = self._pending[0]
                taken = stream.send_now(view)
                if taken < len(view):
                    self._pending[0] = view[taken:]
                    self._pause_reading()
                    stream.notify_writable(self._flush)
                    return
                self._pending.popleft()
            if self._eof:
                stream.end()
                self._finish_up(None)
            elif self.transport is not None and not self.transport.is_closing():
                self.transport.resume_reading()
        except StreamError as error:
            self._finish_up(error)

    def _pause_reading(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def _finish_up(self, error: Exception | None) -> None:
        self._pending.clear()
        if error is not None:
            # Like a failed task in the other direction's group: the whole exchange is over.
            if self.stream is not None:
                self.stream.reset(ErrorCode.CANCEL, "connection to the target failed")
            if self.transport is not None:
                self.transport.abort()
        if self.up_done.done():
            return
        if error is None:
            self.up_done.set_result(None)
        else:
            self.up_done.set_exception(error)
            self.up_done.exception()  # retrieved: ``run`` may already be gone

    # ------------------------------------------------------------------ stream -> socket

    async def drain(self) -> None:
        if self.lost:
            raise ConnectionResetError("the connection to the target was lost")
        if not self._writing_paused:
            return
        self._drained = self._loop.create_future()
        await self._drained

    def _wake_drain(self, exc: Exception | None) -> None:
        waiter, self._drained = self._drained, None
        if waiter is None or waiter.done():
            return
        if exc is None:
            waiter.set_result(None)
        else:
            waiter.set_exception(exc)


class SocketPipe:
    """A dialled TCP connection waiting to be joined to a stream with ``run``."""

    def __init__(self, side: _SocketSide) -> None:
        self._side = side

    async def run(self, stream: TunnelStream) -> None:
        """Copy both ways until both directions ended, then close the socket.

        Never raises for the peer's or the target's failures: they reset the stream and
        abort the socket.
        """
        side = self._side
        transport = side.transport
        assert transport is not None  # noqa: S101 - set by connection_made before we exist
        side.stream = stream
        side._flush()  # noqa: SLF001 - bytes the target sent before the accept; resumes reading
        try:
            while data := await stream.read():
                if transport.is_closing():
                    raise ConnectionResetError("the connection to the target is closed")
                transport.write(data)
                await side.drain()
            if transport.can_write_eof() and not transport.is_closing():
                transport.write_eof()
            await side.up_done
        except (OSError, StreamError) as error:
            log.debug("pipe %s to %s ended: %s", stream.stream_id, stream.target, error)
            stream.reset(ErrorCode.CANCEL, "connection to the target failed")
            transport.abort()
        finally:
            transport.close()

    def close(self) -> None:
        """Drop a pipe that will not be ``run`` (the stream died before it was accepted)."""
        if self._side.transport is not None:
            self._side.transport.abort()


async def connect_pipe(host: str, port: int) -> SocketPipe:
    """Dial ``host:port``; raises OSError.

    Bytes the target sends before ``run`` are held (reading paused), so a server that speaks
    first (SSH, SMTP) loses nothing.
    """
    loop = asyncio.get_running_loop()
    _, side = await loop.create_connection(lambda: _SocketSide(loop), host, port)
    return SocketPipe(side)


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
