"""Twin sync over the tunnel: the outbox's `Sender` and the cloud's changes, on one stream.

Wiring (the daemon)::

    sync = TwinSync(settings=TwinSyncSettings())
    twins = TwinsService(settings=..., sender=sync)
    sync.attach(twins)
    client.session_tasks["twins"] = sync.run_session

Rules (docs/twins.md, "The sync stream", has the message table):

1. For each tunnel session, `run_session` opens one ``twins`` stream to the cloud and keeps it:
   a stream that fails while the session lives is opened again after a growing delay.
2. We speak first: ``hello`` with the protocol version, our edge origin and our window; the
   cloud answers ``welcome``. Then the outbox is kicked, so records that waited while the
   link was down go at once instead of after the outbox's backoff.
3. `deliver` (called by the outbox, one batch at a time) sends ``batch`` messages and returns
   only when the cloud answered ``batch-ack`` for every one, i.e. committed them durably. No
   stream, a ``batch-error``, a timeout: it raises, and the outbox retries the same records
   later. The cloud skips records it already applied (by ``outboxId``), so a retry after a
   lost acknowledgement applies nothing twice.
4. ``change`` messages (the cloud's changes, desired mostly) are applied one at a time, in
   arrival order, through `TwinsService.apply_cloud_change` (exactly once per (origin, seq);
   the device gets what changed, in order), and each is answered with an ``ack``. The cloud
   keeps at most ``window`` in flight; more is a protocol violation. ``command`` messages
   (move a device to another node) take the same queue and the same ``ack``, through
   `TwinsService.apply_cloud_command`.
5. Frames are a 4-byte big-endian length and a JSON object; the length is checked against
   the cap before anything is buffered, the depth before parsing. A bad frame resets the
   stream. The framing is device_models.sync_wire, shared with the tunnel server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from device_models.sync_wire import PROTOCOL_VERSION, Decoder, WireError, encode, encode_frame
from edge_agent.twins import CloudChangeError, CloudChangeResult, Code
from tunnel_aio import StreamError, TunnelConnection, TunnelStream
from tunnel_protocol import ErrorCode, SessionState

__all__ = [
    "SYNC_TARGET",
    "ProtocolViolationError",
    "SyncCounters",
    "TwinSync",
    "TwinSyncSettings",
    "TwinsEndpoint",
]

log = logging.getLogger("edge_agent.twin_sync")

SYNC_TARGET = "twins"
_FAILED = frozenset({Code.BAD_REQUEST, Code.UNKNOWN_DEVICE, Code.OUT_OF_ORDER, Code.MOVE_REFUSED})


@dataclass(frozen=True, kw_only=True)
class TwinSyncSettings:
    max_message_bytes: int = 4 * 1024 * 1024
    """Largest sync message either way, in bytes: the outbox's batches are at most 1 MiB plus
    one record, and a batch bigger than this is split over several messages."""

    max_depth: int = 24
    """JSON nesting depth of one message at most: a 10-level section with its metadata inside
    a change inside a record inside a batch."""

    window: int = 64
    """Cloud changes we accept in flight (received, not yet acknowledged). Each is applied and
    committed in turn, so this bounds the queue in memory to 64 changes of at most ~100 KB."""

    ack_timeout: float = 30.0
    """Seconds `deliver` waits for the cloud's acknowledgement of one message: a commit on a
    busy cloud takes milliseconds, a slow uplink a few seconds. After it, the outbox retries."""

    open_timeout: float = 10.0
    """Seconds to open the stream and to get the cloud's ``welcome``."""

    reopen_initial: float = 1.0
    """Seconds before opening the stream again after it failed inside a live session."""

    reopen_max: float = 30.0
    """Ceiling in seconds of that (doubling) delay."""


class Kickable(Protocol):
    def kick(self) -> None: ...


class TwinsEndpoint(Protocol):
    """What the sync needs of `edge_agent.twins.TwinsService`."""

    @property
    def origin(self) -> str: ...

    @property
    def outbox(self) -> Kickable: ...

    async def apply_cloud_change(
        self, change: Mapping[str, object] | str | bytes
    ) -> CloudChangeResult: ...

    async def apply_cloud_command(self, message: Mapping[str, object]) -> CloudChangeResult: ...


class ProtocolViolationError(Exception):
    """The cloud broke the sync protocol; the stream is reset."""


@dataclass(kw_only=True)
class SyncCounters:
    """Totals since start, for the local API's /status."""

    streams: int = 0
    batches: int = 0
    records: int = 0
    batch_failures: int = 0
    changes_applied: int = 0
    changes_duplicate: int = 0
    changes_rejected: int = 0
    changes_failed: int = 0
    changes_retry: int = 0


# ---------------------------------------------------------------------- framing, sans-IO


def batch_frames(records: list[dict[str, Any]], *, first_id: int, max_bytes: int) -> list[bytes]:
    """`records` as framed ``batch`` messages of at most `max_bytes` each, ids from `first_id`.

    A record too large for a message on its own raises WireError (the twin limits keep every
    record far below the default cap).
    """
    encoded = [
        json.dumps(record, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
        for record in records
    ]
    frames: list[bytes] = []
    group: list[bytes] = []
    size = 0
    overhead = 64  # the envelope around the records, with room for the id

    def flush() -> None:
        batch_id = first_id + len(frames)
        body = b'{"type":"batch","id":%d,"records":[%s]}' % (batch_id, b",".join(group))
        frames.append(encode_frame(body, max_bytes=max_bytes))

    for data in encoded:
        if len(data) + overhead > max_bytes:
            raise WireError(f"an outbox record of {len(data)} bytes exceeds the message cap")
        if group and size + len(data) + 1 + overhead > max_bytes:
            flush()
            group, size = [], 0
        group.append(data)
        size += len(data) + 1
    if group:
        flush()
    return frames


# ---------------------------------------------------------------------- one stream


class _Link:
    """One live ``twins`` stream: requests (batches) out, changes in."""

    def __init__(self, stream: TunnelStream, settings: TwinSyncSettings) -> None:
        self.stream = stream
        self._settings = settings
        self._decoder = Decoder(max_bytes=settings.max_message_bytes, max_depth=settings.max_depth)
        self._ready: deque[dict[str, Any]] = deque()
        self._write_lock = asyncio.Lock()
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._next_id = 1
        self._changes: asyncio.Queue[dict[str, Any]] = asyncio.Queue(settings.window)

    async def write(self, data: bytes) -> None:
        async with self._write_lock:
            await self.stream.write(data)

    async def send(self, message: dict[str, Any]) -> None:
        await self.write(encode(message, max_bytes=self._settings.max_message_bytes))

    async def next_message(self) -> dict[str, Any] | None:
        while not self._ready:
            chunk = await self.stream.read()
            if not chunk:
                if self._decoder.buffered:
                    raise WireError("the stream ended inside a message")
                return None
            self._ready.extend(self._decoder.feed(chunk))
        return self._ready.popleft()

    async def handshake(self, origin: str) -> str:
        """Hello / welcome; the cloud's origin."""
        await self.send(
            {
                "type": "hello",
                "version": PROTOCOL_VERSION,
                "origin": origin,
                "window": self._settings.window,
            }
        )
        async with asyncio.timeout(self._settings.open_timeout):
            welcome = await self.next_message()
        if welcome is None or welcome.get("type") != "welcome":
            raise ProtocolViolationError("the cloud did not answer the hello with a welcome")
        if welcome.get("version") != PROTOCOL_VERSION:
            raise ProtocolViolationError(f"the cloud speaks version {welcome.get('version')}")
        return str(welcome.get("origin", ""))[:160]

    async def deliver(self, records: list[dict[str, Any]]) -> None:
        frames = batch_frames(
            records, first_id=self._next_id, max_bytes=self._settings.max_message_bytes
        )
        loop = asyncio.get_running_loop()
        for frame in frames:
            batch_id = self._next_id
            self._next_id += 1
            future: asyncio.Future[dict[str, Any]] = loop.create_future()
            self._pending[batch_id] = future
            try:
                await self.write(frame)
                async with asyncio.timeout(self._settings.ack_timeout):
                    answer = await future
            finally:
                self._pending.pop(batch_id, None)
            if answer["type"] != "batch-ack":
                message = str(answer.get("message", ""))[:256]
                raise ConnectionError(f"the cloud could not store the batch: {message}")

    def fail_pending(self, error: Exception) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)
                future.exception()  # retrieved: the deliverer may have gone already
        self._pending.clear()

    async def serve(self, twins: TwinsEndpoint, counters: SyncCounters) -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(self._apply_changes(twins, counters), name="twin-sync.apply")
            await self._receive()
            raise ConnectionError("the cloud ended the twins stream")

    async def _receive(self) -> None:
        while (message := await self.next_message()) is not None:
            kind = message["type"]
            if kind in ("batch-ack", "batch-error"):
                batch_id = message.get("id")
                future = self._pending.get(batch_id) if isinstance(batch_id, int) else None
                if future is not None and not future.done():
                    future.set_result(message)
            elif kind in ("change", "command"):
                # Commands (a device's move) share the changes' queue: they are applied in
                # the order the cloud queued them, after the changes before them.
                row_id = message.get("id")
                if isinstance(row_id, bool) or not isinstance(row_id, int):
                    raise ProtocolViolationError(f"a {kind} needs an integer id")
                try:
                    self._changes.put_nowait(message)
                except asyncio.QueueFull:
                    raise ProtocolViolationError(
                        f"the cloud sent more than {self._settings.window} changes in flight"
                    ) from None
            else:
                raise ProtocolViolationError(f"unexpected message type {kind[:32]!r}")

    async def _apply_changes(self, twins: TwinsEndpoint, counters: SyncCounters) -> None:
        while True:
            message = await self._changes.get()
            answer = await _apply_one(twins, message, counters)
            await self.send({"type": "ack", "id": message["id"], **answer})


async def _apply_one(
    twins: TwinsEndpoint, message: dict[str, Any], counters: SyncCounters
) -> dict[str, Any]:
    try:
        if message["type"] == "command":
            command = {"device": message.get("device"), "command": message.get("command")}
            result = await twins.apply_cloud_command(command)
        else:
            body = {"device": message.get("device"), "change": message.get("change")}
            result = await twins.apply_cloud_change(body)
    except CloudChangeError as error:
        if error.code in _FAILED:
            counters.changes_failed += 1
            log.warning("cloud change %s refused for good: %s", message["id"], error.message)
            return {"result": "failed", "error": str(error.code), "message": error.message[:512]}
        counters.changes_retry += 1
        return {"result": "retry", "error": str(error.code), "message": error.message[:512]}
    except Exception:  # a store failure here must not kill the stream's other half: retry later
        log.exception("applying cloud change %s failed", message["id"])
        counters.changes_retry += 1
        return {"result": "retry", "error": "internal", "message": "the agent failed to apply it"}
    if result.rejected:
        counters.changes_rejected += 1
        return {"result": "rejected", "version": result.version}
    if result.applied:
        counters.changes_applied += 1
        return {"result": "applied", "version": result.version}
    counters.changes_duplicate += 1
    return {"result": "duplicate", "version": result.version}


# ---------------------------------------------------------------------- the sync


@dataclass(kw_only=True)
class _State:
    link: _Link | None = None
    cloud_origin: str | None = None
    last_error: str | None = None
    counters: SyncCounters = field(default_factory=SyncCounters)


class TwinSync:
    """The outbox's sender and the downlink; one per agent, living across sessions."""

    def __init__(self, *, settings: TwinSyncSettings | None = None) -> None:
        self.settings = settings or TwinSyncSettings()
        self._twins: TwinsEndpoint | None = None
        self._state = _State()
        self._deliver_lock = asyncio.Lock()

    @property
    def counters(self) -> SyncCounters:
        return self._state.counters

    @property
    def connected(self) -> bool:
        return self._state.link is not None

    def attach(self, twins: TwinsEndpoint) -> None:
        """Give the sync its twins service (constructed after the sync, with it as sender)."""
        self._twins = twins

    def status(self) -> dict[str, object]:
        """For the local API's /status."""
        state = self._state
        return {
            "connected": state.link is not None,
            "cloud_origin": state.cloud_origin,
            "last_error": state.last_error,
            **vars(state.counters),
        }

    async def deliver(self, batch: list[dict[str, Any]]) -> None:
        """Outbox `Sender`: return once the cloud committed every record; raise otherwise."""
        async with self._deliver_lock:
            link = self._state.link
            if link is None:
                raise ConnectionError("no twins stream to the cloud (the tunnel is down)")
            try:
                await link.deliver(batch)
            except (ConnectionError, TimeoutError, WireError):
                self.counters.batch_failures += 1
                raise
            self.counters.batches += 1
            self.counters.records += len(batch)

    async def run_session(self, connection: TunnelConnection) -> None:
        """Session task: keep one ``twins`` stream open for as long as `connection` lives."""
        twins = self._twins
        if twins is None:
            raise RuntimeError("TwinSync.attach(twins) was not called")
        delay = self.settings.reopen_initial
        while _usable(connection):
            stream = await connection.open_stream(SYNC_TARGET, timeout=self.settings.open_timeout)
            if await self._serve_until_draining(stream, twins, connection):
                delay = self.settings.reopen_initial
            if not _usable(connection):
                return
            log.info("twins stream closed; opening it again in %.1f s", delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.settings.reopen_max)

    async def _serve_until_draining(
        self, stream: TunnelStream, twins: TwinsEndpoint, connection: TunnelConnection
    ) -> bool:
        """Serve the stream; close it once the session drains (SIGTERM) so the drain is quick.

        Ending the stream mid-batch is safe: the outbox retries and the cloud skips what it
        already applied; a cloud change applied but not acknowledged is sent again and
        answered ``duplicate``.
        """
        async with asyncio.TaskGroup() as group:
            serving = group.create_task(self._serve_stream(stream, twins), name="twins.stream")
            watch = group.create_task(_until_not_usable(connection), name="twins.drain-watch")
            await asyncio.wait({serving, watch}, return_when=asyncio.FIRST_COMPLETED)
            if not serving.done():
                log.info("twins stream closing: the tunnel session is draining")
                serving.cancel()
            watch.cancel()
        return not serving.cancelled() and serving.result()

    async def _serve_stream(self, stream: TunnelStream, twins: TwinsEndpoint) -> bool:
        """Serve one stream until it ends; True if it got as far as the welcome."""
        link = _Link(stream, self.settings)
        state = self._state
        welcomed = False
        try:
            state.cloud_origin = await link.handshake(twins.origin)
            welcomed = True
            state.link = link
            state.counters.streams += 1
            state.last_error = None
            log.info("twins syncing with the cloud (origin %s)", state.cloud_origin)
            twins.outbox.kick()
            await link.serve(twins, state.counters)
        except* (ProtocolViolationError, WireError) as group:
            text = str(group.exceptions[0])
            state.last_error = text
            log.warning("twins stream reset: %s", text)
            stream.reset(ErrorCode.PROTOCOL_ERROR, text[:512])
        except* (StreamError, ConnectionError, TimeoutError) as group:
            state.last_error = str(group.exceptions[0])
            log.info("twins stream ended: %s", state.last_error)
        finally:
            if state.link is link:
                state.link = None
            link.fail_pending(ConnectionError("the twins stream closed"))
            with contextlib.suppress(StreamError):
                stream.reset(ErrorCode.CANCEL, "twins stream closed")
        return welcomed


_DRAIN_CHECK = 0.25
"""Seconds between checks that the session is still open (it has no "draining" event)."""


def _usable(connection: TunnelConnection) -> bool:
    return not connection.terminated and connection.session.state is SessionState.OPEN


async def _until_not_usable(connection: TunnelConnection) -> None:
    while True:
        await asyncio.sleep(_DRAIN_CHECK)
        if not _usable(connection):
            return
