"""One tunnel stream as the application sees it: ``read``, ``write``, ``end``, ``reset``.

Credit goes back to the peer only when the application *reads* bytes, so a slow consumer
slows its own stream and nothing else, and the bytes held here never exceed the window.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Protocol

from tunnel_protocol import ErrorCode


class StreamOwner(Protocol):
    """What a stream asks of the connection that carries it (``TunnelConnection``).

    A protocol rather than an import, so that the connection module can build streams without
    the two modules importing each other.
    """

    def acknowledge(self, stream_id: int, n: int) -> None: ...
    def send_data(self, stream: TunnelStream, data: memoryview) -> int: ...
    def send_capacity(self, stream_id: int) -> int: ...
    def end_stream(self, stream_id: int) -> None: ...
    def reset_stream(self, stream_id: int, code: ErrorCode, text: str) -> None: ...
    def accept_stream(self, stream_id: int) -> None: ...
    def reject_stream(self, stream_id: int, code: ErrorCode, text: str) -> None: ...


class StreamError(ConnectionError):
    """A stream failed; ``code`` is the protocol's error code."""

    def __init__(self, message: str, *, code: ErrorCode) -> None:
        super().__init__(message)
        self.code = code


class StreamRejectedError(StreamError):
    """The peer refused to open the stream (target not allowed, dial failed, draining...).

    Nothing sent on the stream reached the target, early data included: safe to retry.
    """


class StreamResetError(StreamError):
    """The stream was reset by the peer or by us; no more data flows either way."""


class TunnelClosedError(StreamError):
    """The whole tunnel session is gone."""


class TunnelStream:
    """A bidirectional byte stream inside a tunnel session, with real half-close."""

    def __init__(self, connection: StreamOwner, stream_id: int, target: str) -> None:
        self._connection = connection
        self.stream_id = stream_id
        self.target = target
        self._chunks: deque[bytes] = deque()
        self._eof = False
        self._error: StreamError | None = None
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._accepted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._closed = asyncio.Event()
        self._on_writable: Callable[[], None] | None = None
        self.bytes_read = 0
        self.bytes_written = 0

    def __repr__(self) -> str:
        return f"<TunnelStream {self.stream_id} to {self.target!r}>"

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    # ------------------------------------------------------------------ application side

    async def read(self, max_bytes: int = 256 * 1024) -> bytes:
        """Up to ``max_bytes`` bytes; ``b""`` once the peer has ended its side."""
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self._eof:
                return b""
            self._readable.clear()
            await self._readable.wait()
        chunk = self._chunks.popleft()
        if len(chunk) > max_bytes:
            self._chunks.appendleft(chunk[max_bytes:])
            chunk = chunk[:max_bytes]
        self.bytes_read += len(chunk)
        self._connection.acknowledge(self.stream_id, len(chunk))
        return chunk

    @property
    def has_data(self) -> bool:
        """Whether ``read`` would return at once (bytes queued, the peer's end, an error)."""
        return bool(self._chunks) or self._eof or self._error is not None

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        """Send all of ``data``, waiting for the peer's credit as needed."""
        view = memoryview(data)
        while view:
            if self._error is not None:
                raise self._error
            taken = self._connection.send_data(self, view)
            self.bytes_written += taken
            view = view[taken:]
            if view:
                self._writable.clear()
                if self._connection.send_capacity(self.stream_id) == 0:
                    await self._writable.wait()

    def send_now(self, data: bytes | bytearray | memoryview) -> int:
        """Send what the peer's credit allows right now, without waiting; the bytes taken.

        For callback code (``asyncio.Protocol``) that cannot await: on a short count, ask
        ``notify_writable`` and send the rest from there. Raises like ``write``.
        """
        if self._error is not None:
            raise self._error
        taken = self._connection.send_data(self, memoryview(data))
        self.bytes_written += taken
        return taken

    def notify_writable(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once, soon, from the loop: more credit came or the stream ended.

        It runs in a later loop step, never from inside the connection's event dispatch, so
        it may call ``send_now``, ``end`` or ``reset`` freely. One callback at a time.
        """
        if self._error is not None or self.closed:
            asyncio.get_running_loop().call_soon(callback)
        else:
            self._on_writable = callback

    def end(self) -> None:
        """Half-close: we send nothing more, but keep reading until the peer ends too."""
        if self._error is None and not self.closed:
            self._connection.end_stream(self.stream_id)

    def reset(self, code: ErrorCode = ErrorCode.CANCEL, text: str = "") -> None:
        """Abort both directions at once; idempotent."""
        if not self.closed:
            self._connection.reset_stream(self.stream_id, code, text)

    def accept(self) -> None:
        """Answer a peer's OPEN: the stream is ours to use."""
        self._connection.accept_stream(self.stream_id)
        if not self._accepted.done():
            self._accepted.set_result(None)

    def reject(self, code: ErrorCode, text: str) -> None:
        """Answer a peer's OPEN with a refusal the peer can show a person.

        Early data that came with the OPEN is dropped unread: the peer is told none of it was
        passed on, so a handler must not pass early data on before it accepts.
        """
        self._chunks.clear()
        self._connection.reject_stream(self.stream_id, code, text)

    @property
    def accepted(self) -> bool:
        """True once the OPEN was answered with ACCEPT (by either end)."""
        done = self._accepted.done() and not self._accepted.cancelled()
        return done and self._accepted.exception() is None

    async def wait_accepted(self) -> None:
        await self._accepted

    async def wait_closed(self) -> None:
        await self._closed.wait()

    # ------------------------------------------------------------------ connection side

    def _on_accepted(self) -> None:
        if not self._accepted.done():
            self._accepted.set_result(None)

    def _on_rejected(self, code: ErrorCode, text: str) -> None:
        error = StreamRejectedError(f"{self.target}: {text or code.name}", code=code)
        self._fail(error)

    def _on_data(self, data: bytes) -> None:
        self._chunks.append(data)
        self._readable.set()

    def _on_end(self) -> None:
        self._eof = True
        self._readable.set()

    def _on_reset(self, code: ErrorCode, text: str, *, by_peer: bool) -> None:
        who = "peer" if by_peer else "local"
        cls = TunnelClosedError if code in _SESSION_CODES else StreamResetError
        self._fail(cls(f"stream to {self.target} reset ({who}): {text or code.name}", code=code))

    def _on_capacity(self) -> None:
        self._writable.set()
        self._wake_writable()

    def _wake_writable(self) -> None:
        callback, self._on_writable = self._on_writable, None
        if callback is not None:
            asyncio.get_running_loop().call_soon(callback)

    def _on_closed(self) -> None:
        self._closed.set()
        self._eof = True
        self._readable.set()
        self._writable.set()
        self._wake_writable()
        if not self._accepted.done():
            self._fail(TunnelClosedError(f"stream to {self.target} closed", code=ErrorCode.CANCEL))

    def _fail(self, error: StreamError) -> None:
        if self._error is None:
            self._error = error
        self._chunks.clear()
        self._readable.set()
        self._writable.set()
        self._wake_writable()
        if not self._accepted.done():
            self._accepted.set_exception(error)
            self._accepted.exception()  # retrieved: nobody may be waiting for an accept


_SESSION_CODES = frozenset(
    {
        ErrorCode.KEEPALIVE_TIMEOUT,
        ErrorCode.HANDSHAKE_TIMEOUT,
        ErrorCode.VERSION_MISMATCH,
        ErrorCode.ENHANCE_YOUR_CALM,
    }
)

__all__ = [
    "StreamError",
    "StreamRejectedError",
    "StreamResetError",
    "TunnelClosedError",
    "TunnelStream",
]
