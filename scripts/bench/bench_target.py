"""The benchmark's target: a small, fast HTTP/1.1 server on loopback.

    .venv/bin/python scripts/bench/bench_target.py [--host 127.0.0.1] [--port 0]

Prints ``PORT <n>`` on stdout once it listens, and stops on SIGTERM or SIGINT. Routes:

- ``GET /small``: a 3-byte body, for latency.
- ``GET /bulk?bytes=N``: N bytes streamed in 1 MiB chunks of one preallocated buffer.

A bare ``asyncio.Protocol`` rather than aiohttp: the target should cost as little CPU as
possible so that the figures show the path, not the server (aiohttp serves about half the
small requests per second on the same core). Keep-alive and pipelining work; request bodies
are refused, as no route takes one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import socket
import sys
from urllib.parse import parse_qs, urlsplit

CHUNK = 1 << 20
MAX_BULK = 64 << 30
MAX_HEAD = 16 << 10
_BUFFER = memoryview(bytes(CHUNK))
_SMALL = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nok\n"


def _simple(status: str, text: str) -> bytes:
    body = text.encode()
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode() + body


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._left = 0  # bytes of a bulk body still to send
        self._paused = False
        self._close_after = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not isinstance(transport, asyncio.Transport):
            raise TypeError("expected a stream transport")
        self._transport = transport
        transport.set_write_buffer_limits(high=4 * CHUNK, low=CHUNK)

    def connection_lost(self, exc: Exception | None) -> None:
        del exc
        self._transport = None
        self._left = 0

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) > MAX_HEAD and self._buffer.find(b"\r\n\r\n") < 0:
            self._fail("431 Request Header Fields Too Large", "request head too large\n")
            return
        self._serve()

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._pump()

    def _fail(self, status: str, text: str) -> None:
        if self._transport is not None:
            self._transport.write(_simple(status, text))
            self._transport.close()
        self._buffer.clear()

    def _serve(self) -> None:
        while self._transport is not None and self._left == 0:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self._buffer[:end]).decode("latin-1").lower()
            del self._buffer[: end + 4]
            self._handle(head)
            if self._close_after and self._left == 0 and self._transport is not None:
                self._transport.close()

    def _handle(self, head: str) -> None:
        if self._transport is None:
            return
        request_line, *headers = head.split("\r\n")
        parts = request_line.split(" ")
        if len(parts) != 3 or parts[0] != "get":
            self._fail("405 Method Not Allowed", "only GET\n")
            return
        for line in headers:
            name, _, value = line.partition(":")
            value = value.strip()
            if name == "connection" and value == "close":
                self._close_after = True
            elif (name == "content-length" and value != "0") or name == "transfer-encoding":
                self._fail("400 Bad Request", "request bodies are not accepted\n")
                return
        self._close_after = self._close_after or parts[2] == "http/1.0"
        url = urlsplit(parts[1])
        if url.path == "/small":
            self._transport.write(_SMALL)
        elif url.path == "/bulk":
            try:
                size = int(parse_qs(url.query).get("bytes", ["0"])[0])
            except ValueError:
                size = -1
            if not 0 <= size <= MAX_BULK:
                self._fail("400 Bad Request", f"bytes must be an integer within 0..{MAX_BULK}\n")
                return
            self._transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                b"Content-Length: %d\r\n\r\n" % size
            )
            self._left = size
            self._pump()
        else:
            self._fail("404 Not Found", "routes: /small, /bulk?bytes=N\n")

    def _pump(self) -> None:
        while self._left > 0 and not self._paused and self._transport is not None:
            step = min(self._left, CHUNK)
            self._transport.write(_BUFFER[:step])
            self._left -= step
        if self._left == 0 and not self._paused:
            self._serve()
            if self._close_after and self._transport is not None:
                self._transport.close()


async def serve(host: str, port: int, *, announce: bool = True) -> None:
    loop = asyncio.get_running_loop()
    sock = socket.create_server((host, port), backlog=1024)
    server = await loop.create_server(_Connection, sock=sock)
    async with server:
        if announce:
            print(f"PORT {sock.getsockname()[1]}", flush=True)
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="HTTP target for scripts/bench/tunnel")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
