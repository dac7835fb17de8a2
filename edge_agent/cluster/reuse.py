"""Kept-alive connections to the member API server for plain GETs.

Most of what kubectl and controllers send is a bodiless GET; opening TLS to the member for
each one costs a handshake (3.4 ms p50 measured on the test machine) plus the API server's
own per-connection work. So a GET or HEAD without a body and without an upgrade goes over a
kept-alive connection: the agent sends it without the cloud's ``Connection: close``, relays
the answer's bytes untouched while h11 follows the framing beside them, and when the answer
is complete (and both sides may go on) ends the stream and keeps the connection for the next
GET. Everything else (bodies, watches that never end, upgrades) is relayed raw on a fresh
connection, as ``apiserver`` describes.

A kept connection the member closed meanwhile shows as an EOF (or a reset) before any answer
byte: the GET is then sent once more on a fresh connection, which is safe for GET and HEAD.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

import h11

POOLED_METHODS = frozenset({b"GET", b"HEAD"})
MAX_RESPONSE_HEAD = 64 * 1024
"""Bytes of an answer's head h11 keeps while it follows the framing (the API server's are
a few hundred bytes); past it the answer is still relayed, the connection not kept."""


def poolable(request: h11.Request, rest: bytes) -> bool:
    """Whether ``request`` (with ``rest`` read past its head) may use a kept connection."""
    if request.method not in POOLED_METHODS or rest:
        return False
    for name, value in request.headers:
        if name in (b"content-length", b"transfer-encoding", b"upgrade"):
            return False
        if name == b"connection" and b"upgrade" in value.lower():
            return False
    return True


def keep_alive_request(request: h11.Request) -> h11.Request:
    """``request`` without its ``Connection`` header: HTTP/1.1 keeps the connection then."""
    headers = [(n, v) for n, v in request.headers.raw_items() if n.lower() != b"connection"]
    return h11.Request(method=request.method, target=request.target, headers=headers)


class AnswerTracker:
    """Follows one answer's framing beside the raw relay: is it complete, may we go on?"""

    def __init__(self, request: h11.Request) -> None:
        self._conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_RESPONSE_HEAD)
        self._conn.send(request)
        self._conn.send(h11.EndOfMessage())
        self.broken = False
        """h11 could not follow the answer: relay the rest as it comes, keep nothing."""
        self.complete = False

    def feed(self, data: bytes) -> None:
        """Bytes of the answer as they came (``b""`` for EOF)."""
        if self.broken or self.complete:
            self.broken = self.broken or bool(data)  # bytes past the answer: keep nothing
            return
        try:
            self._conn.receive_data(data)
            while True:
                event = self._conn.next_event()
                if event is h11.NEED_DATA or isinstance(event, h11.ConnectionClosed):
                    return
                if isinstance(event, h11.EndOfMessage):
                    self.complete = True
                    return
        except h11.ProtocolError:
            self.broken = True

    @property
    def reusable(self) -> bool:
        """The answer is complete and both sides may send another exchange."""
        conn = self._conn
        return (
            self.complete
            and not self.broken
            and conn.our_state is h11.DONE
            and conn.their_state is h11.DONE
            and not conn.trailing_data[0]
        )


@dataclass
class _Idle:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    since: float


class ConnectionPool:
    """Idle kept-alive connections to the member, newest first; bounded in number and age."""

    def __init__(
        self, *, max_idle: int, idle_timeout: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._max_idle = max_idle
        self._idle_timeout = idle_timeout
        self._clock = clock
        self._idle: list[_Idle] = []
        self.reused = 0

    def __len__(self) -> int:
        return len(self._idle)

    def take(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """A kept connection that still looks usable, or None."""
        now = self._clock()
        while self._idle:
            idle = self._idle.pop()
            fresh = now - idle.since < self._idle_timeout
            if fresh and not idle.reader.at_eof() and not idle.writer.is_closing():
                self.reused += 1
                return idle.reader, idle.writer
            idle.writer.transport.abort()
        return None

    def give(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Keep a connection whose last exchange completed cleanly (or drop it when full)."""
        self._expire()
        if len(self._idle) >= self._max_idle:
            writer.transport.abort()
            return
        self._idle.append(_Idle(reader=reader, writer=writer, since=self._clock()))

    def _expire(self) -> None:
        now = self._clock()
        keep = []
        for idle in self._idle:
            if now - idle.since < self._idle_timeout:
                keep.append(idle)
            else:
                idle.writer.transport.abort()
        self._idle = keep

    def close(self) -> None:
        for idle in self._idle:
            with contextlib.suppress(Exception):
                idle.writer.transport.abort()
        self._idle = []
