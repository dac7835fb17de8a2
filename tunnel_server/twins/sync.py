"""The cloud end of the ``twins`` stream an agent opens inside its tunnel session.

Rules (docs/twins.md, "The sync stream", has the message table):

1. The agent opens the stream and speaks first: ``hello`` with the protocol version, its edge
   origin and its downlink window. The origin must be ``<session node>.<boot id>``; anything
   else resets the stream. The cloud answers ``welcome``.
2. One live stream per node: a newer one (the agent reconnected) resets the older.
3. ``batch``: records from the agent's outbox, applied in one transaction (TwinsCloud); the
   ``batch-ack`` is written only after the commit, so the agent deletes only what is durable
   here. A store failure answers ``batch-error`` (retryable); a batch that breaks the protocol
   resets the stream.
4. ``change``: cloud changes for the node's devices, oldest first, at most ``window`` in flight
   (``command``, a device's move, is queued and acknowledged the same way).
   Each ``ack`` removes its change; ``failed`` (the edge can never apply it) dead-letters it;
   ``retry`` (the edge could not store it now) ends the stream so that everything still
   queued is sent again, in order, on the next one.
5. Every message is framed and bounded (wire.py); anything malformed resets the stream.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections import deque
from typing import TYPE_CHECKING, Any

from device_models import sync_wire as wire
from tunnel_aio import StreamError, TunnelStream
from tunnel_protocol import ErrorCode
from tunnel_server.twins.service import BatchError, TwinsCloud

if TYPE_CHECKING:
    from tunnel_server.tunnel.sessions import AgentSession

__all__ = ["ProtocolViolationError", "SyncHub"]

log = logging.getLogger("tunnel_server.twins.sync")

MAX_WINDOW = 1024
_DONE = frozenset({"applied", "duplicate", "rejected"})


class ProtocolViolationError(Exception):
    """The agent broke the sync protocol; the stream is reset with this text."""


class _Reader:
    def __init__(self, stream: TunnelStream, decoder: wire.Decoder) -> None:
        self._stream = stream
        self._decoder = decoder
        self._ready: deque[dict[str, Any]] = deque()

    @property
    def queued(self) -> int:
        return len(self._ready)

    async def next(self) -> dict[str, Any] | None:
        """The next message; None at a clean end of the stream."""
        while not self._ready:
            chunk = await self._stream.read()
            if not chunk:
                if self._decoder.buffered:
                    raise wire.WireError("the stream ended inside a message")
                return None
            self._ready.extend(self._decoder.feed(chunk))
        return self._ready.popleft()


class _Link:
    """One agent's live sync stream."""

    def __init__(self, *, stream: TunnelStream, node: str, cloud: TwinsCloud) -> None:
        self.stream = stream
        self.node = node
        self.cloud = cloud
        settings = cloud.settings
        self._max_bytes = settings.max_message_bytes
        self._reader = _Reader(
            stream,
            wire.Decoder(max_bytes=settings.max_message_bytes, max_depth=settings.max_depth),
        )
        self._write_lock = asyncio.Lock()
        self._wake = cloud.waker(node)
        self._in_flight: set[int] = set()
        self._acked: list[int] = []
        self._window = settings.downlink_window
        self.origin = ""

    async def send(self, message: dict[str, Any]) -> None:
        data = wire.encode(message, max_bytes=self._max_bytes)
        async with self._write_lock:
            await self.stream.write(data)

    async def handshake(self) -> None:
        async with asyncio.timeout(self.cloud.settings.hello_timeout):
            hello = await self._reader.next()
        if hello is None or hello.get("type") != "hello":
            raise ProtocolViolationError("the first message must be a hello")
        version = hello.get("version")
        if version != wire.PROTOCOL_VERSION:
            raise ProtocolViolationError(
                f"protocol version {str(version)[:16]} is not supported (this cloud speaks "
                f"{wire.PROTOCOL_VERSION})"
            )
        origin, window = hello.get("origin"), hello.get("window")
        if not isinstance(origin, str):
            raise ProtocolViolationError("hello needs the agent's origin")
        if isinstance(window, bool) or not isinstance(window, int) or not 1 <= window <= MAX_WINDOW:
            raise ProtocolViolationError(f"window must be an integer in 1..{MAX_WINDOW}")
        try:
            self.cloud.hello(self.node, origin)
        except ValueError as error:
            raise ProtocolViolationError(str(error)) from None
        self.origin = origin
        self._window = min(window, self.cloud.settings.downlink_window)
        await self.send(
            {"type": "welcome", "version": wire.PROTOCOL_VERSION, "origin": self.cloud.origin}
        )

    async def serve(self) -> None:
        async with asyncio.TaskGroup() as group:
            sender = group.create_task(self._sender(), name=f"twins[{self.node}].sender")
            await self._receive()
            sender.cancel()

    async def _receive(self) -> None:
        while True:
            message = await self._reader.next()
            if message is None:
                self.stream.end()
                return
            kind = message["type"]
            if kind == "batch":
                await self._batch(message)
            elif kind == "ack":
                self._ack(message)
            else:
                raise ProtocolViolationError(f"unexpected message type {kind[:32]!r}")
            if not self._reader.queued:
                self._flush_acks()

    async def _batch(self, message: dict[str, Any]) -> None:
        batch_id, records = message.get("id"), message.get("records")
        if isinstance(batch_id, bool) or not isinstance(batch_id, int):
            raise ProtocolViolationError("a batch needs an integer id")
        if not isinstance(records, list) or not records:
            raise ProtocolViolationError("a batch needs a non-empty list of records")
        if len(records) > self.cloud.settings.max_batch_records:
            limit = self.cloud.settings.max_batch_records
            raise ProtocolViolationError(f"a batch holds at most {limit} records")
        try:
            result = self.cloud.apply_batch(node=self.node, origin=self.origin, records=records)
        except BatchError as error:
            raise ProtocolViolationError(f"batch {batch_id}: {error}") from None
        except sqlite3.Error as error:
            log.exception("twins: storing batch %s of %s failed", batch_id, self.node)
            await self.send(
                {
                    "type": "batch-error",
                    "id": batch_id,
                    "error": "unavailable",
                    "message": str(error),
                }
            )
            return
        await self.send({"type": "batch-ack", "id": batch_id, **result.to_json()})

    def _ack(self, message: dict[str, Any]) -> None:
        row_id, result = message.get("id"), message.get("result")
        if isinstance(row_id, bool) or not isinstance(row_id, int) or row_id not in self._in_flight:
            raise ProtocolViolationError("an ack must name a change in flight")
        self._in_flight.discard(row_id)
        self._wake.set()
        if result in _DONE:
            self._acked.append(row_id)
        elif result == "failed":
            self._flush_acks()
            reason = f"{str(message.get('error'))[:64]}: {str(message.get('message'))[:512]}"
            self.cloud.downlink_failed(self.node, row_id, reason)
        elif result == "retry":
            raise ProtocolViolationError(
                f"the agent could not store change {row_id} now; it is sent again next stream"
            )
        else:
            raise ProtocolViolationError(
                "ack result must be applied, duplicate, rejected, failed or retry"
            )

    def _flush_acks(self) -> None:
        if self._acked:
            acked, self._acked = self._acked, []
            self.cloud.downlink_done(acked)

    async def _sender(self) -> None:
        last_sent = 0
        while True:
            self._wake.clear()
            room = self._window - len(self._in_flight)
            rows = self.cloud.store.downlink_after(self.node, last_sent, room) if room > 0 else []
            for row in rows:
                body = json.loads(row.body)
                self._in_flight.add(row.id)
                last_sent = row.id
                kind = "command" if "command" in body else "change"
                await self.send({"type": kind, "id": row.id, **body})
            if not rows:
                await self._wake.wait()

    def close(self) -> None:
        self.cloud.release_waker(self.node, self._wake)


class SyncHub:
    """The live sync streams of this server, one per node."""

    def __init__(self, cloud: TwinsCloud) -> None:
        self.cloud = cloud
        self._links: dict[str, _Link] = {}

    def connected(self, node: str) -> bool:
        return node in self._links

    async def serve(self, stream: TunnelStream, session: AgentSession) -> None:
        """Serve one ``twins`` stream for as long as it lives."""
        stream.accept()
        node = session.name
        link = _Link(stream=stream, node=node, cloud=self.cloud)
        try:
            await link.handshake()
            older = self._links.get(node)
            if older is not None:
                older.stream.reset(ErrorCode.CANCEL, "replaced by a newer twins stream")
            self._links[node] = link
            log.info("twins: %s syncing (origin %s)", node, link.origin)
            await link.serve()
        except* ProtocolViolationError as group:
            text = str(group.exceptions[0])
            log.warning("twins: stream of %s reset: %s", node, text)
            stream.reset(ErrorCode.PROTOCOL_ERROR, text[:512])
        except* wire.WireError as group:
            text = str(group.exceptions[0])
            log.warning("twins: stream of %s reset: %s", node, text)
            stream.reset(ErrorCode.PROTOCOL_ERROR, text[:512])
        except* TimeoutError:
            log.warning("twins: %s sent no hello in time", node)
            stream.reset(ErrorCode.PROTOCOL_ERROR, "no hello in time")
        except* StreamError as group:
            log.info("twins: stream of %s ended: %s", node, group.exceptions[0])
        finally:
            if self._links.get(node) is link:
                del self._links[node]
            link.close()
