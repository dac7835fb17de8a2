"""The gateway benchmark's load generator: N keep-alive HTTP/1.1 connections, one process.

    .venv/bin/python scripts/bench/gateway_load.py --port P [--address 127.0.0.1]
        [--host-header web.bench] [--path /small] --connections 100 --seconds 10
        [--warmup-s 2] [--records FILE]

Each connection sends ``GET`` and waits for the whole answer before the next (no pipelining),
like wrk. Requests that end inside the measured window (after the warm-up) count: req/s is the
2xx answers that ended in it divided by its length; latency is from writing the request to the
last byte of the answer. A failed connection is opened again after ``RETRY_PAUSE_S``. The last
stdout line is one JSON object; ``--records`` also writes every request (start, end, ok) of the
whole run as JSON, for the failover figure.

A bare ``asyncio.Protocol`` with a minimal response parser (status line, ``Content-Length``,
``Connection: close``; no chunked bodies: every path of the bench answers with a length), so
the generator costs as little CPU per request as Python allows; it still runs on one core,
which bounds what it can measure (it reports its own CPU seconds so the report can say so).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from pathlib import Path

from bench_stats import percentile

MAX_HEAD = 64 << 10
"""A head larger than this is an error: the bench's answers have a few hundred bytes."""
MAX_SAMPLE = 600
"""Bytes of a non-2xx answer kept for the report."""
REQUEST_TIMEOUT_S = 10.0
"""A request not answered within this fails (and its connection is dropped)."""
RETRY_PAUSE_S = 0.005
"""Pause after a failed request before the connection is opened again: no busy loop while a
path is down, short enough not to hide when it comes back."""


class LoadError(Exception):
    """A request failed: the connection broke, timed out, or the answer was not HTTP."""


class _Client(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._waiter: asyncio.Future[tuple[int, bool]] | None = None
        self.last_answer = b""
        """The head and body start of the last answer (kept to show a failed one)."""
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not isinstance(transport, asyncio.Transport):
            raise TypeError("expected a stream transport")
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(LoadError(f"connection lost: {exc}"))

    def request(self, data: bytes) -> asyncio.Future[tuple[int, bool]]:
        """Send ``data``; the future answers (status, the server closes after it)."""
        if self.transport is None or self.closed:
            raise LoadError("not connected")
        self._waiter = asyncio.get_running_loop().create_future()
        self._buffer.clear()
        self.transport.write(data)
        return self._waiter

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > MAX_HEAD:
                self._fail("answer head too large")
            return
        head = bytes(self._buffer[:end]).lower()
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[1].isdigit():
            self._fail(f"not an HTTP status line: {lines[0][:80]!r}")
            return
        length = 0
        close = False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name == b"content-length":
                length = int(value.strip())
            elif name == b"connection" and value.strip() == b"close":
                close = True
            elif name == b"transfer-encoding":
                self._fail("chunked answers are not supported by this generator")
                return
        if len(self._buffer) < end + 4 + length:
            return
        self.last_answer = bytes(self._buffer[:MAX_SAMPLE])
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result((int(parts[1]), close))

    def _fail(self, why: str) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(LoadError(why))
        if self.transport is not None:
            self.transport.close()


def _close(client: _Client | None) -> None:
    if client is not None and client.transport is not None:
        client.transport.close()


class Load:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.request = (
            f"GET {args.path} HTTP/1.1\r\nHost: {args.host_header}\r\nUser-Agent: edgefleet-bench"
            "\r\n\r\n"
        ).encode()
        self.window_start = 0.0
        self.window_end = 0.0
        self.latencies: list[float] = []
        self.ok = 0
        self.non_2xx = 0
        self.errors = 0
        self.answered_total = 0
        """Answers of the whole run, warm-up included (the CPU figures cover all of it)."""
        self.error_kinds: dict[str, int] = {}
        self.statuses: dict[int, int] = {}
        """Answers by status code, warm-up included."""
        self.sample = ""
        """The last non-2xx answer, its head and the start of its body."""
        self.records: list[tuple[float, float, bool]] | None = [] if args.records else None

    async def _connect(self) -> _Client:
        loop = asyncio.get_running_loop()
        _, client = await asyncio.wait_for(
            loop.create_connection(_Client, self.args.address, self.args.port), REQUEST_TIMEOUT_S
        )
        return client

    async def worker(self) -> None:
        client: _Client | None = None
        while (start := time.monotonic()) < self.window_end:
            try:
                if client is None or client.closed:
                    client = await self._connect()
                status, close = await asyncio.wait_for(
                    client.request(self.request), REQUEST_TIMEOUT_S
                )
            except (OSError, LoadError, TimeoutError) as exc:
                self._failed(start, type(exc).__name__)
                _close(client)
                client = None
                await asyncio.sleep(RETRY_PAUSE_S)
                continue
            self._answered(start, time.monotonic(), ok=200 <= status < 300)
            self.statuses[status] = self.statuses.get(status, 0) + 1
            if not 200 <= status < 300:
                self.sample = client.last_answer.decode("latin-1")
            if close:
                _close(client)
                client = None
        _close(client)

    def _failed(self, start: float, kind: str) -> None:
        end = time.monotonic()
        if end >= self.window_start:
            self.errors += 1
            self.error_kinds[kind] = self.error_kinds.get(kind, 0) + 1
        self._record(start, end, ok=False)

    def _answered(self, start: float, end: float, *, ok: bool) -> None:
        self._record(start, end, ok=ok)
        self.answered_total += 1
        if self.window_start <= end <= self.window_end:
            if ok:
                self.ok += 1
                self.latencies.append(end - start)
            else:
                self.non_2xx += 1

    def _record(self, start: float, end: float, *, ok: bool) -> None:
        if self.records is not None:
            self.records.append((start, end, ok))

    async def run(self) -> dict[str, object]:
        began = time.monotonic()
        self.window_start = began + self.args.warmup_s
        self.window_end = self.window_start + self.args.seconds
        cpu0 = time.process_time()
        async with asyncio.TaskGroup() as group:
            for index in range(self.args.connections):
                group.create_task(self.worker(), name=f"load.c{index}")
        cpu = time.process_time() - cpu0
        wall = time.monotonic() - began
        n = len(self.latencies)

        def pct(percent: float) -> float | None:
            return round(percentile(self.latencies, percent) * 1000, 3) if n else None

        return {
            "connections": self.args.connections,
            "seconds": self.args.seconds,
            "ok": self.ok,
            "non_2xx": self.non_2xx,
            "errors": self.errors,
            "error_kinds": self.error_kinds,
            "statuses": self.statuses,
            "non_2xx_sample": self.sample,
            "rps": round(self.ok / self.args.seconds, 1),
            "answered_total": self.answered_total,
            "p50_ms": pct(50),
            "p99_ms": pct(99),
            "max_ms": round(max(self.latencies) * 1000, 3) if n else None,
            "cpu_s": round(cpu, 2),
            "cpu_share": round(cpu / wall, 3) if wall > 0 else None,
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="keep-alive HTTP/1.1 load for the gateway bench")
    parser.add_argument("--address", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host-header", default="bench")
    parser.add_argument("--path", default="/small")
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup-s", type=float, default=1.0)
    parser.add_argument("--records", help="write every request (start, end, ok) here as JSON")
    args = parser.parse_args(argv)
    if not 1 <= args.connections <= 10_000 or not 0 < args.seconds <= 3600:
        parser.error("--connections 1..10000, --seconds 0..3600")
    with contextlib.suppress(KeyboardInterrupt):
        load = Load(args)
        result = asyncio.run(load.run())
        if args.records:
            Path(args.records).write_text(json.dumps(load.records))
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
