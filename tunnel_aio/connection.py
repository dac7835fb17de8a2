"""Run one ``TunnelSession`` over one WebSocket: a reader and a writer task in a task group.

Rules of this loop:

* One writer task sends every frame, in the order the session queued them; everything else
  only wakes it. aiohttp's ``send_bytes`` waits for the socket to drain, so a slow link
  pushes back on the writer and, through the credit windows, on each stream's producer.
* After every call into the session (a received message, an API call, a timer) its events are
  dispatched at once, so a stream never waits for a frame that has already arrived.
* Streams the peer opens go to ``on_stream`` in their own named task in the same task group;
  the handler must ``accept()`` or ``reject()``. A handler that raises resets its stream and
  is logged, and never takes the session down.
* The session's timers (handshake timeout, keepalive) are one ``loop.call_at`` handle, moved
  only when the next deadline comes earlier; a deadline that moved later is found when the
  handle fires. A server holds thousands of idle sessions: a task per timer would cost each
  of them a task and a frame.
* ``run()`` returns when the session is over (peer gone, keepalive timeout, protocol error,
  ``close()``); by then every stream has been reset and closed and every task has ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

import aiohttp

from tunnel_aio.stream import (
    StreamError,
    StreamRejectedError,
    StreamResetError,
    TunnelClosedError,
    TunnelStream,
)
from tunnel_protocol import (
    HEADER_SIZE,
    DataReceived,
    ErrorCode,
    GoAwayReceived,
    HandshakeComplete,
    LocalProtocolError,
    PongReceived,
    Role,
    SendCapacityAvailable,
    SessionTerminated,
    StreamAccepted,
    StreamClosed,
    StreamEnded,
    StreamOpened,
    StreamRejected,
    StreamReset,
    StreamState,
    TunnelSession,
    TunnelSettings,
)

StreamHandler = Callable[[TunnelStream], Awaitable[None]]

_CLOSING = frozenset({aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED})


class _Flag:
    """``asyncio.Event`` for one loop, without a deque per instance.

    A connection has three and a server holds thousands of idle connections: asyncio's Event
    allocates a 64-slot deque (~760 bytes) each, whether anyone waits or not.
    """

    __slots__ = ("_value", "_waiters")

    def __init__(self) -> None:
        self._value = False
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._value

    def set(self) -> None:
        if self._value:
            return
        self._value = True
        for waiter in self._waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._value = False

    async def wait(self) -> None:
        if self._value:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            self._waiters.remove(waiter)


class MessageSocket(Protocol):
    """What we need of aiohttp's server and client WebSockets alike."""

    async def receive(self, timeout: float | None = None) -> aiohttp.WSMessage: ...  # noqa: ASYNC109 - aiohttp's own signature
    async def send_bytes(self, data: bytes, compress: int | None = None) -> None: ...
    async def close(self, *, code: int = ..., message: bytes = b"") -> bool: ...


class TunnelConnection:
    """One live tunnel session: open streams to the peer and serve the streams it opens."""

    def __init__(
        self,
        ws: MessageSocket,
        *,
        role: Role,
        name: str,
        on_stream: StreamHandler | None = None,
        settings: TunnelSettings | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._ws = ws
        self.name = name
        self.session = TunnelSession(role, now=self._loop.time(), settings=settings)
        self._on_stream = on_stream
        self._log = logger or logging.getLogger("tunnel_aio")
        self._streams: dict[int, TunnelStream] = {}
        self._handlers: dict[int, asyncio.Task[None]] = {}
        """The running handler task of each stream the peer opened."""
        self._wake_writer = _Flag()
        self._ready = _Flag()
        self._terminated = _Flag()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        """When ``_timer`` fires (loop time), None when no timer is armed."""
        self._group: asyncio.TaskGroup | None = None
        self.termination: SessionTerminated | None = None
        self.rtt: float | None = None
        self.bytes_received = 0
        self.bytes_sent = 0
        self.messages_received = 0
        self.messages_sent = 0
        self._wake_writer.set()  # our HELLO is already queued

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        """Serve the session until it ends; every task it started has ended on return."""
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                group.create_task(self._reader(), name=f"tunnel[{self.name}].reader")
                group.create_task(self._writer(), name=f"tunnel[{self.name}].writer")
                self._arm_timer()
        finally:
            self._group = None
            self._disarm_timer()

    async def wait_ready(self) -> None:
        """Until the HELLOs are exchanged; raises if the session ended first."""
        if self._ready.is_set() and not self._terminated.is_set():
            return  # the common case on every open_stream: no futures, no waiting
        ready = asyncio.ensure_future(self._ready.wait())  # noqa: TID251 - awaited right here
        over = asyncio.ensure_future(self._terminated.wait())  # noqa: TID251 - awaited right here
        try:
            await asyncio.wait({ready, over}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()
            over.cancel()
        if not self._ready.is_set():
            raise self._closed_error()

    @property
    def terminated(self) -> bool:
        return self._terminated.is_set()

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    def close(self, code: ErrorCode = ErrorCode.NO_ERROR, text: str = "closing") -> None:
        """End the session now: streams are reset, a final GO_AWAY is flushed, run() returns."""
        self.session.close(code, text)
        self._process()

    def go_away(self, text: str = "draining") -> None:
        """Drain: refuse new streams both ways, let the live ones finish."""
        self.session.go_away(ErrorCode.NO_ERROR, text)
        self._process()

    async def drain(self, timeout: float) -> None:  # noqa: ASYNC109 - a grace period, not a cancel scope
        """GO_AWAY, wait up to ``timeout`` seconds for live streams to finish, then close."""
        if self.terminated:
            return
        self.go_away("shutting down")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while self._streams:
                    await next(iter(self._streams.values())).wait_closed()
        self.close(ErrorCode.NO_ERROR, "shut down")

    # ------------------------------------------------------------------ streams we open

    async def open_stream(
        self,
        target: str,
        *,
        timeout: float = 10.0,  # noqa: ASYNC109 - the peer's dial time is part of the protocol
        early_data: bytes | bytearray | memoryview = b"",
        end: bool = False,
    ) -> TunnelStream:
        """A stream to ``target`` on the peer, once it accepted; raises StreamRejectedError.

        ``early_data`` is sent on the stream, and ``end`` ends our side after it (FIN). When
        the peer speaks the early-data extension they leave with the OPEN, in the same
        WebSocket message, up to the stream's initial credit, so the peer can pass them on
        as soon as it has dialled instead of a round trip later; the rest (and everything,
        with an older peer) is written once the stream is accepted, waiting for credit like
        any ``write`` beyond the peer's initial window (a request head fits many times over).

        What a failure means for those bytes: ``StreamRejectedError`` says none of them
        reached the target (the peer refused the stream and dropped them unread, or it was
        refused here), so any request is safe to send again elsewhere. Any other error
        (``StreamResetError`` when no answer came within ``timeout`` after early data was
        sent, ``TunnelClosedError``...) leaves that unknown, as a failure after the accept.
        """
        await self.wait_ready()
        if self.terminated:
            raise self._closed_error()
        try:
            stream_id = self.session.open_stream(target)
        except LocalProtocolError as error:
            raise StreamRejectedError(f"{target}: {error}", code=error.code) from error
        stream = TunnelStream(self, stream_id, target)
        self._streams[stream_id] = stream
        rest = memoryview(early_data)
        if rest and self.session.early_data:
            rest = rest[stream.send_now(rest) :]
            if end and not rest:
                self.session.end_stream(stream_id)
                end = False
        sent_early = len(rest) < len(early_data)
        self._process()
        try:
            async with asyncio.timeout(timeout):
                await stream.wait_accepted()
        except TimeoutError:
            stream.reset(ErrorCode.CANCEL, "open timed out")
            if sent_early:
                raise StreamResetError(
                    f"{target}: no answer within {timeout} s (the early data may have reached"
                    " the target)",
                    code=ErrorCode.CANCEL,
                ) from None
            raise StreamRejectedError(
                f"{target}: no answer within {timeout} s", code=ErrorCode.CANCEL
            ) from None
        if rest:
            await stream.write(rest)
        if end:
            stream.end()
        return stream

    # ------------------------------------------------------------------ calls from streams

    def acknowledge(self, stream_id: int, n: int) -> None:
        self.session.acknowledge(stream_id, n)
        self._process()

    def send_data(self, stream: TunnelStream, data: memoryview) -> int:
        try:
            taken = self.session.send_data(stream.stream_id, data)
        except LocalProtocolError as error:
            raise (
                self._closed_error() if self.terminated else _cannot_send(stream, error)
            ) from error
        self._process()
        return taken

    def send_capacity(self, stream_id: int) -> int:
        return self.session.send_capacity(stream_id)

    def end_stream(self, stream_id: int) -> None:
        with contextlib.suppress(LocalProtocolError):  # already ended or reset: nothing to do
            self.session.end_stream(stream_id)
        self._process()

    def reset_stream(self, stream_id: int, code: ErrorCode, text: str) -> None:
        with contextlib.suppress(LocalProtocolError):
            self.session.reset_stream(stream_id, code, text)
        self._process()

    def accept_stream(self, stream_id: int) -> None:
        try:
            self.session.accept(stream_id)
        except LocalProtocolError as error:
            # The stream died before its handler answered (the peer reset it or broke the
            # protocol on it, or the session ended): the peer's doing, not a bug of the handler.
            raise self._gone_error(stream_id, error) from error
        self._process()

    def reject_stream(self, stream_id: int, code: ErrorCode, text: str) -> None:
        with contextlib.suppress(LocalProtocolError):  # already gone: nothing left to refuse
            self.session.reject(stream_id, code, text)
        self._process()

    # ------------------------------------------------------------------ tasks

    async def _reader(self) -> None:
        ws = self._ws
        while not self.terminated:
            message = await ws.receive()
            if message.type is aiohttp.WSMsgType.BINARY:
                data: bytes = message.data
                self.bytes_received += len(data)
                self.messages_received += 1
                self.session.receive_message(data, now=self._loop.time())
            elif message.type in _CLOSING:
                self.session.close(ErrorCode.NO_ERROR, "the peer closed the WebSocket")
            elif message.type is aiohttp.WSMsgType.ERROR:
                self.session.close(ErrorCode.INTERNAL_ERROR, f"WebSocket error: {message.data}")
            else:  # TEXT, PING and PONG are not ours to use
                self.session.close(ErrorCode.PROTOCOL_ERROR, f"unexpected {message.type.name}")
            self._process()

    async def _writer(self) -> None:
        while True:
            await self._wake_writer.wait()
            self._wake_writer.clear()
            try:
                for message in self._coalesce(self.session.messages_to_send()):
                    await self._ws.send_bytes(message)
                    self.bytes_sent += len(message)
                    self.messages_sent += 1
            except (ConnectionError, RuntimeError) as error:
                # aiohttp raises ConnectionResetError (or RuntimeError once closing) when the
                # transport is gone: the session is over, whatever it still wanted to say.
                self.session.close(ErrorCode.INTERNAL_ERROR, f"send failed: {error}")
                self._process()
                self.session.messages_to_send()
            if self.terminated:
                break
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self._ws.close()

    def _coalesce(self, messages: list[bytes]) -> list[bytes]:
        """Pack consecutive frames into WebSocket messages of at most one full DATA frame.

        A small request costs several frames each way (OPEN, ACCEPT, DATA, WINDOW_UPDATE,
        FIN...); sent one by one, each is its own WebSocket frame, TLS record and system call.
        The peer's advertised frame size bounds a message, so it always fits its reader.
        """
        peer = self.session.peer_settings
        if peer is None or len(messages) < 2:
            return messages
        limit = peer.max_frame_payload + HEADER_SIZE
        packed: list[bytes] = []
        batch: list[bytes] = []
        size = 0
        for message in messages:
            if batch and size + len(message) > limit:
                packed.append(batch[0] if len(batch) == 1 else b"".join(batch))
                batch, size = [], 0
            batch.append(message)
            size += len(message)
        packed.append(batch[0] if len(batch) == 1 else b"".join(batch))
        return packed

    def _arm_timer(self) -> None:
        """Have ``_on_timer`` run by the session's next deadline (earlier is harmless)."""
        if self._group is None:  # not running (yet, or any more): run() arms it
            return
        deadline = None if self.terminated else self.session.next_deadline()
        if deadline is None:
            self._disarm_timer()
        elif self._timer_at is None or deadline < self._timer_at:
            self._disarm_timer()
            self._timer_at = deadline
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _disarm_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._timer_at = None, None

    def _on_timer(self) -> None:
        self._timer, self._timer_at = None, None
        try:
            self.session.handle_timeout(self._loop.time())
            self._process()
        except Exception:  # noqa: BLE001 - a callback's error would otherwise only be logged
            self._log.exception("tunnel %s: timer failed", self.name)
            self.close(ErrorCode.INTERNAL_ERROR, "timer failed")

    # ------------------------------------------------------------------ events

    def _process(self) -> None:
        session = self.session
        for event in session.events():
            self._dispatch(event)
        # Wake the writer only for something to send (or to end): a read that gives back no
        # credit yet, the common case, then costs no task switch.
        if session.has_messages_to_send or self._terminated.is_set():
            self._wake_writer.set()
        self._arm_timer()

    def _dispatch(self, event: object) -> None:  # noqa: C901, PLR0912 - one flat switch reads best
        match event:
            case DataReceived(stream_id=sid, data=data):
                if (stream := self._streams.get(sid)) is not None:
                    stream._on_data(data)  # noqa: SLF001 - stream and connection are one unit
            case SendCapacityAvailable(stream_id=sid):
                if (stream := self._streams.get(sid)) is not None:
                    stream._on_capacity()  # noqa: SLF001
            case StreamEnded(stream_id=sid):
                if (stream := self._streams.get(sid)) is not None:
                    stream._on_end()  # noqa: SLF001
            case StreamAccepted(stream_id=sid):
                if (stream := self._streams.get(sid)) is not None:
                    stream._on_accepted()  # noqa: SLF001
            case StreamRejected(stream_id=sid, code=code, text=text):
                if (stream := self._streams.get(sid)) is not None:
                    stream._on_rejected(code, text)  # noqa: SLF001
            case StreamReset(stream_id=sid, code=code, text=text, by_peer=by_peer):
                if (stream := self._streams.get(sid)) is not None:
                    # A stream we had not answered yet is gone (the peer reset it, broke the
                    # protocol on it, or the session ended): stop our handler's work for it
                    # (a dial, say) at once, so an open-then-reset loop cannot keep work
                    # running after the stream is gone (rapid reset), and a handler never
                    # starts for a stream that no longer exists. A handler resetting its own
                    # stream is not cancelled under its feet.
                    handler = self._handlers.get(sid)
                    if (
                        handler is not None
                        and not stream.accepted
                        and handler is not asyncio.current_task()
                    ):
                        handler.cancel()
                    stream._on_reset(code, text, by_peer=by_peer)  # noqa: SLF001
            case StreamClosed(stream_id=sid):
                if (stream := self._streams.pop(sid, None)) is not None:
                    stream._on_closed()  # noqa: SLF001
            case StreamOpened(stream_id=sid, target=target):
                self._on_peer_open(sid, target)
            case PongReceived(rtt=rtt):
                self.rtt = rtt
            case HandshakeComplete(version=version):
                self._log.debug("tunnel %s ready, protocol version %s", self.name, version)
                self._ready.set()
            case GoAwayReceived(code=code, text=text):
                self._log.info("tunnel %s: peer is draining (%s: %s)", self.name, code.name, text)
            case SessionTerminated():
                self.termination = event
                self._terminated.set()

    def _on_peer_open(self, stream_id: int, target: str) -> None:
        if self._on_stream is None or self._group is None:
            self.session.reject(
                stream_id, ErrorCode.TARGET_NOT_ALLOWED, "this end serves no targets"
            )
            return
        stream = TunnelStream(self, stream_id, target)
        self._streams[stream_id] = stream
        handler = self._group.create_task(
            self._serve_stream(stream), name=f"tunnel[{self.name}].stream-{stream_id}"
        )
        self._handlers[stream_id] = handler
        handler.add_done_callback(lambda _: self._handlers.pop(stream_id, None))

    async def _serve_stream(self, stream: TunnelStream) -> None:
        assert self._on_stream is not None  # noqa: S101 - checked before the task was made
        try:
            await self._on_stream(stream)
        except (ConnectionError, TimeoutError) as error:
            self._log.debug("stream %s to %s ended: %s", stream.stream_id, stream.target, error)
        except Exception:  # noqa: BLE001 - one stream's bug must not end the whole session
            self._log.exception("handler of stream to %s failed", stream.target)
            stream.reset(ErrorCode.INTERNAL_ERROR, "the handler failed")
        finally:
            state = self.session.stream_state(stream.stream_id)
            if not stream.closed and state is StreamState.OPENING_REMOTE:
                stream.reject(ErrorCode.INTERNAL_ERROR, "the handler did not answer")

    def _gone_error(self, stream_id: int, error: LocalProtocolError) -> StreamError:
        if self.terminated:
            return self._closed_error()
        stream = self._streams.get(stream_id)
        target = stream.target if stream is not None else "?"
        return StreamResetError(f"stream to {target} is gone: {error}", code=ErrorCode.CANCEL)

    def _closed_error(self) -> TunnelClosedError:
        event = self.termination
        text = f"{event.code.name}: {event.text}" if event else "session closed"
        return TunnelClosedError(f"tunnel {self.name} is closed ({text})", code=ErrorCode.CANCEL)


def _cannot_send(stream: TunnelStream, error: LocalProtocolError) -> Exception:
    return TunnelClosedError(f"stream to {stream.target} cannot send: {error}", code=error.code)


__all__ = ["MessageSocket", "StreamHandler", "TunnelConnection"]
