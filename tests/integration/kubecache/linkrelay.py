# Copyright 2026 The EdgeFleet Authors. SPDX-License-Identifier: Apache-2.0
"""A TCP relay between the kube proxy and the API server that fails the way real links do.

Modes (each applies to open connections at once and to new ones):

* ``reset()``: every connection is reset and new ones are reset on accept (a cut).
* ``silence()``: nothing is forwarded in either direction and nothing is closed (packets
  dropped: a NAT entry timed out, a cable pulled behind a switch). New connections are
  accepted and then ignored too, so a TLS handshake hangs.
* ``drop_answers()``: requests go through, answers are swallowed; with ``reset()`` after it,
  "forward a request, drop the answer, reset".
* ``throttle(bytes_per_second, cut_after=N)``: answers trickle; the first connection whose
  answer passes N bytes makes the relay ``reset()`` (a link that dies mid-answer).
* ``restore()``: forward normally again (connections opened meanwhile are reset first, as a
  real outage loses them).

The tests' only fake: everything on either side of it is real.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from enum import Enum


class Mode(Enum):
    FORWARD = "forward"
    RESET = "reset"
    SILENT = "silent"
    DROP_ANSWERS = "drop-answers"
    THROTTLE = "throttle"


_CHUNK = 16 * 1024


class LinkRelay:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.mode = Mode.FORWARD
        self.rate = 0
        self.cut_after = 0
        self.answer_bytes_before_cut = 0
        """How many answer bytes the connection that tripped ``cut_after`` had passed."""
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self.reset()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    # ------------------------------------------------------------ faults

    def reset(self) -> None:
        self.mode = Mode.RESET
        self._abort_all()

    def silence(self, *, drop_open: bool = False) -> None:
        """Go silent.

        ``drop_open`` first resets open connections, so the next request has to open a new
        one, and its TLS handshake hangs (a connect that never completes).
        """
        self.mode = Mode.SILENT
        if drop_open:
            self._abort_all()

    def drop_answers(self) -> None:
        self.mode = Mode.DROP_ANSWERS

    def throttle(self, bytes_per_second: int, *, cut_after: int) -> None:
        self.rate = bytes_per_second
        self.cut_after = cut_after
        self.mode = Mode.THROTTLE

    def restore(self) -> None:
        if self.mode is not Mode.FORWARD:
            self._abort_all()
        self.mode = Mode.FORWARD

    def _abort_all(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    # ------------------------------------------------------------ relaying

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A connection task is the top of its own stack: asyncio logs, not raises, what
        # escapes it, so a reset (which cancels the pipes) ends it quietly here.
        with contextlib.suppress(asyncio.CancelledError, ExceptionGroup, OSError):
            await self._relay(reader, writer)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode is Mode.RESET:
            writer.transport.abort()
            return
        self._writers.add(writer)
        if self.mode is Mode.SILENT:
            # Accepted, never answered: read and drop until the relay resets it.
            while await reader.read(_CHUNK):
                pass
            return
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self._writers.add(up_writer)
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._pipe(reader, up_writer, answer=False), name="relay.up")
                group.create_task(self._pipe(up_reader, writer, answer=True), name="relay.down")
        finally:
            for end in (writer, up_writer):
                self._writers.discard(end)
                end.transport.abort()

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, answer: bool
    ) -> None:
        passed = 0
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(_CHUNK):
                mode = self.mode
                if mode is Mode.SILENT or (mode is Mode.DROP_ANSWERS and answer):
                    continue
                if mode is Mode.THROTTLE and answer:
                    if passed + len(data) > self.cut_after:
                        writer.write(data[: self.cut_after - passed])
                        await writer.drain()
                        self.answer_bytes_before_cut = self.cut_after
                        self.reset()
                        return
                    passed += len(data)
                    await asyncio.sleep(len(data) / self.rate)  # the link's pace, not a wait
                writer.write(data)
                await writer.drain()
        writer.transport.abort()


@contextlib.asynccontextmanager
async def link_relay(host: str, port: int) -> AsyncIterator[LinkRelay]:
    relay = LinkRelay(host, port)
    await relay.start()
    try:
        yield relay
    finally:
        await relay.stop()
