"""A small TCP balancer: what a Kubernetes Service gives agents in front of several replicas.

An agent takes one server address (``identity.json``'s ``server``), so replicas are reached
through one address that spreads connections. Rules:

* Round robin over the backends; a backend that refuses the connection (a replica that
  died) is skipped and the next one tried, so a client sees a refusal only when all are down.
* Bytes pass untouched both ways (TLS ends at the replica, as with the passthrough Service).
* Runs on its own event loop in a daemon thread, so a synchronous test or bench can use it.
* ``connections`` counts accepted connections per backend port (what the spread was).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
from collections import Counter
from collections.abc import Sequence

PIPE_CHUNK = 64 * 1024
"""Bytes read at a time from one side."""


class Balancer:
    def __init__(self, backends: Sequence[int], *, host: str = "127.0.0.1") -> None:
        self.backends = list(backends)
        self.host = host
        self.port = 0
        self.connections: Counter[int] = Counter()
        self._next = itertools.cycle(range(len(self.backends)))
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def start(self) -> None:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        future.result(timeout=10)

    def stop(self) -> None:
        with contextlib.suppress(TimeoutError, RuntimeError):
            asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        if self._server is not None:
            await self._server.wait_closed()

    async def _connect(self) -> tuple[int, asyncio.StreamReader, asyncio.StreamWriter] | None:
        for _ in range(len(self.backends)):
            port = self.backends[next(self._next)]
            try:
                reader, writer = await asyncio.open_connection(self.host, port)
            except OSError:
                continue  # refused: that replica is down, try the next one
            return port, reader, writer
        return None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A connection task is the top of its own stack: what escapes it is only logged.
        with contextlib.suppress(asyncio.CancelledError, ExceptionGroup, OSError):
            await self._forward(reader, writer)

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream = await self._connect()
        if upstream is None:
            writer.transport.abort()
            return
        port, up_reader, up_writer = upstream
        self.connections[port] += 1
        self._writers.update({writer, up_writer})
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._pipe(reader, up_writer), name="balancer.up")
                group.create_task(self._pipe(up_reader, writer), name="balancer.down")
        finally:
            for end in (writer, up_writer):
                self._writers.discard(end)
                end.transport.abort()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(PIPE_CHUNK):
                writer.write(data)
                await writer.drain()
        writer.transport.abort()
