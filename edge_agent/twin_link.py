"""`CloudTwinLink`: the edge's sync link to the cloud over the tunnel.

The outbox's `Sender` and the cloud's changes, on one stream; the cloud's end is
tunnel_server/twins/sync.py's `EdgeTwinLinks`.

Wiring (the daemon)::

    sync = CloudTwinLink(settings=CloudTwinLinkSettings())
    twins = TwinMqttService(settings=..., sender=sync)
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
   arrival order, through `TwinMqttService.apply_cloud_change` (exactly once per (origin, seq);
   the device gets what changed, in order), and each is answered with an ``ack``. The cloud
   keeps at most ``window`` in flight; more is a protocol violation. ``command`` messages
   (move a device to another node) take the same queue and the same ``ack``, through
   `TwinMqttService.apply_cloud_command`.
5. The protocol itself (who may send what when, ids, the window, the checks of every
   message) is device_models.sync_session, the sans-IO session shared with the tunnel
   server; this file only drives it. Anything it refuses resets the stream.
6. `request_desired` (a Home Assistant command): one ``desired-request`` on the live stream,
   answered ``desired-answer`` by the cloud (device_models.sync_requests). Never queued: no
   stream, a cloud that does not take requests, too many in flight, no answer within
   ``request_timeout`` all raise `RequestRefusedError` at once, and the caller shows it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from device_models import Role
from device_models.sync_requests import (
    NOT_TAKEN,
    UNREACHABLE,
    DesiredAnswer,
    DesiredRequest,
    RequestRefusedError,
    RequestSyncSession,
)
from device_models.sync_session import (
    Ack,
    BatchAck,
    BatchError,
    Change,
    Command,
    Event,
    Hello,
    LocalProtocolError,
    StreamEnded,
    SyncProtocolError,
)
from edge_agent.twins import CloudChangeError, CloudChangeResult, Code
from tunnel_aio import StreamError, TunnelConnection, TunnelStream
from tunnel_protocol import ErrorCode, SessionState

__all__ = [
    "SYNC_TARGET",
    "CloudTwinLink",
    "CloudTwinLinkSettings",
    "RequestRefusedError",
    "SyncCounters",
    "TwinsEndpoint",
]

log = logging.getLogger("edge_agent.twin_link")

SYNC_TARGET = "twins"
_FAILED = frozenset(
    {
        Code.BAD_REQUEST,
        Code.UNKNOWN_DEVICE,
        Code.OUT_OF_ORDER,
        Code.MOVE_REFUSED,
        Code.UNKNOWN_MODEL,
        Code.DUPLICATE_ID,
    }
)


@dataclass(frozen=True, kw_only=True)
class CloudTwinLinkSettings:
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

    request_timeout: float = 10.0
    """Seconds a desired request (an HA command) waits for the cloud's answer: the cloud
    answers from one SQLite commit; a person at HA's switch waits no longer than this."""

    max_pending_requests: int = 16
    """Desired requests in flight at most; one more is refused (``busy``), not queued."""


class Kickable(Protocol):
    def kick(self) -> None: ...


class TwinsEndpoint(Protocol):
    """What the sync needs of `edge_agent.twins.TwinMqttService`."""

    @property
    def origin(self) -> str: ...

    @property
    def outbox(self) -> Kickable: ...

    async def apply_cloud_change(
        self, change: Mapping[str, object] | str | bytes
    ) -> CloudChangeResult: ...

    async def apply_cloud_command(self, message: Mapping[str, object]) -> CloudChangeResult: ...


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


# ---------------------------------------------------------------------- one stream


class _Link:
    """One live ``twins`` stream: the sans-IO session driven over a tunnel stream."""

    def __init__(self, stream: TunnelStream, settings: CloudTwinLinkSettings) -> None:
        self.stream = stream
        self._settings = settings
        self._session = RequestSyncSession(
            Role.EDGE,
            max_pending=settings.max_pending_requests,
            max_message_bytes=settings.max_message_bytes,
            max_depth=settings.max_depth,
            window=settings.window,
        )
        self._requests: dict[int, asyncio.Future[DesiredAnswer]] = {}
        self._next_request = 1
        self._ready: deque[Event] = deque()
        self._write_lock = asyncio.Lock()
        self._pending: dict[int, asyncio.Future[BatchAck | BatchError]] = {}
        self._changes: asyncio.Queue[Change | Command] = asyncio.Queue()

    async def send(self, event: Event | DesiredRequest) -> None:
        async with self._write_lock:  # one writer at a time: messages never interleave
            await self.stream.write(self._session.send(event))

    async def next_event(self) -> Event:
        while not self._ready:
            self._ready.extend(self._session.receive_data(await self.stream.read()))
            for answer in self._session.take_requests():
                future = self._requests.get(answer.id)
                if isinstance(answer, DesiredAnswer) and future is not None and not future.done():
                    future.set_result(answer)
        return self._ready.popleft()

    async def request_desired(
        self, device: str, patch: dict[str, Any], source: str
    ) -> DesiredAnswer:
        session = self._session
        if not session.accepts_requests:
            raise RequestRefusedError(NOT_TAKEN)
        if session.requests_room <= 0:
            raise RequestRefusedError("busy: too many commands wait for the cloud")
        request_id, self._next_request = self._next_request, self._next_request + 1
        future: asyncio.Future[DesiredAnswer] = asyncio.get_running_loop().create_future()
        self._requests[request_id] = future
        try:
            request = DesiredRequest(id=request_id, device=device, patch=patch, source=source)
            try:
                await self.send(request)
            except LocalProtocolError as error:
                raise RequestRefusedError(str(error)[:256]) from None
            except (StreamError, ConnectionError):
                # The stream broke under us: its own task notices and reopens it.
                raise RequestRefusedError(UNREACHABLE) from None
            try:
                async with asyncio.timeout(self._settings.request_timeout):
                    return await future
            except TimeoutError:
                raise RequestRefusedError("the cloud did not answer in time") from None
        finally:
            del self._requests[request_id]
            session.abandon_request(request_id)

    async def handshake(self, origin: str) -> str:
        """Hello / welcome; the cloud's origin."""
        await self.send(Hello(origin=origin, window=self._settings.window))
        async with asyncio.timeout(self._settings.open_timeout):
            await self.next_event()  # the session lets only a welcome through
        return self._session.peer_origin

    async def deliver(self, records: list[dict[str, Any]]) -> None:
        loop = asyncio.get_running_loop()
        frames = self._session.send_batches(records)
        try:
            for batch_id, frame in frames:
                future: asyncio.Future[BatchAck | BatchError] = loop.create_future()
                self._pending[batch_id] = future
                try:
                    async with self._write_lock:
                        await self.stream.write(frame)
                    async with asyncio.timeout(self._settings.ack_timeout):
                        answer = await future
                finally:
                    self._pending.pop(batch_id, None)
                if isinstance(answer, BatchError):
                    message = answer.message[:256]
                    raise ConnectionError(f"the cloud could not store the batch: {message}")
        finally:
            # Batches given up on (a timeout, an error): a late answer is a stray now.
            self._session.abandon_batches(batch_id for batch_id, _ in frames)

    def fail_pending(self, error: Exception) -> None:
        for request in self._requests.values():
            if not request.done():
                request.set_exception(RequestRefusedError(UNREACHABLE))
                request.exception()
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
        while not isinstance(event := await self.next_event(), StreamEnded):
            if isinstance(event, BatchAck | BatchError):
                future = self._pending.get(event.id)
                if future is not None and not future.done():
                    future.set_result(event)
            elif isinstance(event, Change | Command):
                # Commands (a device's move) share the changes' queue: they are applied in
                # the order the cloud queued them, after the changes before them. The
                # session bounds the queue to the window.
                self._changes.put_nowait(event)

    async def _apply_changes(self, twins: TwinsEndpoint, counters: SyncCounters) -> None:
        while True:
            event = await self._changes.get()
            answer = await _apply_one(twins, event, counters)
            result = answer.pop("result")
            await self.send(Ack(id=event.id, result=result, body=answer))


async def _apply_one(
    twins: TwinsEndpoint, event: Change | Command, counters: SyncCounters
) -> dict[str, Any]:
    message = event.body
    try:
        if isinstance(event, Command):
            command = {"device": message.get("device"), "command": message.get("command")}
            result = await twins.apply_cloud_command(command)
        else:
            body = {"device": message.get("device"), "change": message.get("change")}
            result = await twins.apply_cloud_change(body)
    except CloudChangeError as error:
        if error.code in _FAILED:
            counters.changes_failed += 1
            log.warning("cloud change %s refused for good: %s", event.id, error.message)
            return {"result": "failed", "error": str(error.code), "message": error.message[:512]}
        counters.changes_retry += 1
        return {"result": "retry", "error": str(error.code), "message": error.message[:512]}
    except Exception:  # a store failure here must not kill the stream's other half: retry later
        log.exception("applying cloud change %s failed", event.id)
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


class CloudTwinLink:
    """The sync link to the cloud: the outbox's sender and the downlink.

    One per agent, living across sessions.
    """

    def __init__(self, *, settings: CloudTwinLinkSettings | None = None) -> None:
        self.settings = settings or CloudTwinLinkSettings()
        self._twins: TwinsEndpoint | None = None
        self._state = _State()
        self._deliver_lock = asyncio.Lock()

    @property
    def counters(self) -> SyncCounters:
        return self._state.counters

    @property
    def connected(self) -> bool:
        return self._state.link is not None

    async def request_desired(
        self, device: str, patch: dict[str, Any], *, source: str
    ) -> DesiredAnswer:
        """Ask the cloud to apply `patch` to `device`'s desired section (rule 6).

        The cloud's answer, accepted or refused; `RequestRefusedError` when it never got
        there (``cloud unreachable``, ``busy``, an older cloud, no answer in time).
        """
        link = self._state.link
        if link is None:
            raise RequestRefusedError(UNREACHABLE)
        return await link.request_desired(device, patch, source)

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
            except (ConnectionError, TimeoutError, LocalProtocolError):
                self.counters.batch_failures += 1
                raise
            self.counters.batches += 1
            self.counters.records += len(batch)

    async def run_session(self, connection: TunnelConnection) -> None:
        """Session task: keep one ``twins`` stream open for as long as `connection` lives."""
        twins = self._twins
        if twins is None:
            raise RuntimeError("CloudTwinLink.attach(twins) was not called")
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
        except* SyncProtocolError as group:
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
