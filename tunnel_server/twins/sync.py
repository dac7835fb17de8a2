"""The cloud end of the ``twins`` stream an agent opens inside its tunnel session.

Rules (docs/twins.md, "The sync stream", has the message table):

1. The agent opens the stream and speaks first: ``hello`` with the protocol version, its edge
   origin and its downlink window. The origin must be ``<session node>.<boot id>``; anything
   else resets the stream. The cloud answers ``welcome``.
2. One live stream per node: a newer one (the agent reconnected) resets the older.
3. ``batch``: records from the agent's outbox, applied in one transaction (CloudTwinReplica); the
   ``batch-ack`` is written only after the commit, so the agent deletes only what is durable
   here. A store failure answers ``batch-error`` (retryable); a batch that breaks the protocol
   resets the stream.
4. ``change``: cloud changes for the node's devices, oldest first, at most ``window`` in flight
   (``command``, a device's move, is queued and acknowledged the same way).
   Each ``ack`` removes its change; ``failed`` (the edge can never apply it) dead-letters it;
   ``retry`` (the edge could not store it now) ends the stream so that everything still
   queued is sent again, in order, on the next one.
5. The protocol itself (message order, ids, the window, the checks of every message) is
   device_models.sync_session, the sans-IO session shared with the agent; this file only
   drives it. Anything it refuses resets the stream.
6. ``desired-request`` (a Home Assistant command the agent forwards; our welcome advertises
   the feature, device_models.sync_requests): the device must be one of *this session's*
   node (the key is (session node, device), so a node never reaches another's devices),
   active, and the patch must pass its model. It is applied by `CloudTwinReplica.write`, the
   call an operator's ``PATCH /api/v1/devices/{id}/twin`` makes, so desired ``$version``
   moves the same way and the change goes down the normal desired path. Each request,
   accepted or refused, is one audit record (user ``node:<name>``, role the source,
   action ``devices.twin.update``) and is answered ``desired-answer`` at once.
7. A batch's edge changes to desired (a model with local control, written at the edge while
   the cloud was unreachable; service.py rule 7) are audited once the batch is committed:
   one record per change, user ``node:<name>``, role ``local-control``, the same action,
   status 200 when applied, 403 ``local_control_not_allowed`` when the model does not allow
   it, 422 ``invalid_value`` when the model refuses the values.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from prometheus_client.core import CounterMetricFamily

from device_models import DeviceModelsError, Role, Section
from device_models.sync_requests import (
    FEATURES,
    DesiredAnswer,
    DesiredRequest,
    RequestSyncSession,
)
from device_models.sync_session import (
    Ack,
    Batch,
    BatchAck,
    Change,
    Command,
    Event,
    RemoteProtocolError,
    StreamEnded,
    SyncProtocolError,
    Welcome,
)
from device_models.sync_session import BatchError as BatchFailed
from tunnel_aio import StreamError, TunnelStream
from tunnel_protocol import ErrorCode
from tunnel_server.audit.log_store import AuditRecord
from tunnel_server.twins.backend import TwinStoreError
from tunnel_server.twins.service import (
    BatchError,
    CloudTwinReplica,
    DeviceRemovedError,
    EdgeDesiredWrite,
    ModelUnknownError,
    QueueFullError,
    UnknownDeviceError,
)

if TYPE_CHECKING:
    from tunnel_server.tunnel.sessions import AgentSession

__all__ = ["EdgeTwinLinks"]

log = logging.getLogger("tunnel_server.twins.sync")

_DONE = frozenset({"applied", "duplicate", "rejected"})
AUDIT_ROUTE = "/api/v1/devices/{id}/twin"
"""The route an operator's desired PATCH is audited under; a node's request shares it."""
AUDIT_ACTION = "devices.twin.update"
LOCAL_CONTROL_ROLE = "local-control"
_EDGE_WRITE_STATUS: dict[str | None, int] = {"local_control_not_allowed": 403, "invalid_value": 422}
"""The audit role of a desired change the edge wrote itself (rule 7)."""


class AuditSink(Protocol):
    def append(self, record: AuditRecord) -> int: ...


@dataclass
class RequestCounters:
    """Desired requests from agents (HA commands), for ``tunnel_server_twins_*``."""

    accepted: int = 0
    refused: int = 0


class RequestMetrics:
    """``tunnel_server_twins_desired_requests_total{result}``."""

    def __init__(self, counters: RequestCounters) -> None:
        self._counters = counters

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "tunnel_server_twins_desired_requests",
            "Desired patches agents asked for on behalf of Home Assistant, by result",
            labels=["result"],
        )
        family.add_metric(["accepted"], self._counters.accepted)
        family.add_metric(["refused"], self._counters.refused)
        yield family


class _Link:
    """One agent's live sync stream: the sans-IO session driven over a tunnel stream."""

    def __init__(
        self, *, stream: TunnelStream, node: str, cloud: CloudTwinReplica, links: EdgeTwinLinks
    ) -> None:
        self.stream = stream
        self.node = node
        self.cloud = cloud
        self._links = links
        settings = cloud.settings
        self._session = RequestSyncSession(
            Role.CLOUD,
            features=FEATURES,
            max_message_bytes=settings.max_message_bytes,
            max_depth=settings.max_depth,
            window=settings.downlink_window,
            max_batch_records=settings.max_batch_records,
        )
        self._ready: deque[Event] = deque()
        self._write_lock = asyncio.Lock()
        self._wake = cloud.waker(node)
        self._acked: list[int] = []

    @property
    def origin(self) -> str:
        return self._session.peer_origin

    async def send(self, event: Event | DesiredAnswer) -> None:
        async with self._write_lock:  # the session's order is the stream's order
            await self.stream.write(self._session.send(event))

    async def next_event(self) -> Event:
        while not self._ready:
            self._ready.extend(self._session.receive_data(await self.stream.read()))
            for request in self._session.take_requests():
                if isinstance(request, DesiredRequest):
                    await self.send(self._desired_request(request))
        return self._ready.popleft()

    def _desired_request(self, request: DesiredRequest) -> DesiredAnswer:
        """Apply one node's desired request as an operator's PATCH is applied (rule 6)."""
        key = (self.node, request.device)
        status, reason, version = 200, None, None
        try:
            row = self.cloud.write(key, Section.DESIRED, request.patch)
        except DeviceModelsError as error:
            texts = [str(problem) for problem in error.problems] or [error.summary]
            status, reason, text = 400, "invalid_value", "; ".join(texts)
        except UnknownDeviceError:
            status, reason, text = 404, "device_not_found", "no such device on this node"
        except DeviceRemovedError:
            status, reason, text = 409, "device_removed", "the device was removed"
        except ModelUnknownError as error:
            status, reason, text = 422, "model_unknown", f"model {error} not loaded in the cloud"
        except QueueFullError:
            status, reason, text = 503, "queue_full", "busy: too many changes wait for the node"
        else:
            version = row.replica.twin.desired.version
            text = ""
        self._audit(request, status, reason)
        counters = self._links.request_counters
        if version is None:
            counters.refused += 1
            log.info(
                "twins: %s's desired request for %s refused: %s", self.node, request.device, text
            )
            return DesiredAnswer(id=request.id, accepted=False, reason=text)
        counters.accepted += 1
        log.info(
            "twins: desired of %s:%s patched to $version %s by node %s (%s)",
            self.node,
            request.device,
            version,
            self.node,
            request.source,
        )
        return DesiredAnswer(id=request.id, accepted=True, version=version)

    def _audit(self, request: DesiredRequest, status: int, reason: str | None) -> None:
        record = AuditRecord(
            at=time.time(),
            user=f"node:{self.node}",
            role=request.source,
            method="PATCH",
            route=AUDIT_ROUTE,
            action=AUDIT_ACTION,
            target=f"{self.node}:{request.device}",
            status=status,
            reason=reason,
            request_id=f"sync-{request.id}"[:64],
            peer=None,  # the user names the node; its address is in its session's events
        )
        self._append_audit(record)

    async def handshake(self) -> None:
        async with asyncio.timeout(self.cloud.settings.hello_timeout):
            await self.next_event()  # the session lets only a valid hello through
        try:
            self.cloud.hello(self.node, self._session.peer_origin)
        except ValueError as error:
            raise RemoteProtocolError(str(error)) from None
        await self.send(Welcome(origin=self.cloud.origin))

    async def serve(self) -> None:
        async with asyncio.TaskGroup() as group:
            sender = group.create_task(self._sender(), name=f"twins[{self.node}].sender")
            await self._receive()
            sender.cancel()

    async def _receive(self) -> None:
        while True:
            event = await self.next_event()
            if isinstance(event, StreamEnded):
                self.stream.end()
                return
            if isinstance(event, Batch):
                await self._batch(event)
            elif isinstance(event, Ack):
                self._ack(event)
            if not self._ready:
                self._flush_acks()

    async def _batch(self, batch: Batch) -> None:
        try:
            result = self.cloud.apply_batch(
                node=self.node, origin=self.origin, records=batch.records
            )
        except BatchError as error:
            raise RemoteProtocolError(f"batch {batch.id}: {error}") from None
        except (sqlite3.Error, TwinStoreError) as error:
            log.exception("twins: storing batch %s of %s failed", batch.id, self.node)
            await self.send(BatchFailed(id=batch.id, error="unavailable", message=str(error)))
            return
        for write in result.desired_writes:
            self._audit_edge_write(write)
        await self.send(BatchAck(id=batch.id, body=result.to_json()))

    def _audit_edge_write(self, write: EdgeDesiredWrite) -> None:
        """One edge change to desired, as committed (rule 7)."""
        log.info(
            "twins: desired %s of %s:%s written at the edge (%s): %s",
            ",".join(write.keys),
            self.node,
            write.device,
            write.change,
            write.refused or "applied",
        )
        self._append_audit(
            AuditRecord(
                at=time.time(),
                user=f"node:{self.node}",
                role=LOCAL_CONTROL_ROLE,
                method="PATCH",
                route=AUDIT_ROUTE,
                action=AUDIT_ACTION,
                target=f"{self.node}:{write.device}",
                status=_EDGE_WRITE_STATUS.get(write.refused, 200),
                reason=write.refused,
                request_id=f"sync-{write.change}"[:64],
                peer=None,
            )
        )

    def _append_audit(self, record: AuditRecord) -> None:
        sink = self._links.audit
        if sink is None:
            return
        try:
            sink.append(record)
        except sqlite3.Error:
            log.exception("twins: audit record of %s's desired change not stored", self.node)

    def _ack(self, ack: Ack) -> None:
        self._wake.set()
        if ack.result in _DONE:
            self._acked.append(ack.id)
        elif ack.result == "failed":
            self._flush_acks()
            error, text = ack.body.get("error"), ack.body.get("message")
            self.cloud.downlink_failed(self.node, ack.id, str(error)[:64], str(text)[:512])
        else:  # "retry"
            raise RemoteProtocolError(
                f"the agent could not store change {ack.id} now; it is sent again next stream"
            )

    def _flush_acks(self) -> None:
        if self._acked:
            acked, self._acked = self._acked, []
            self.cloud.downlink_done(acked)

    async def _sender(self) -> None:
        last_sent = 0
        while True:
            self._wake.clear()
            room = self._session.room
            rows = self.cloud.store.downlink_after(self.node, last_sent, room) if room > 0 else []
            for row in rows:
                body = json.loads(row.body)
                last_sent = row.id
                kind = Command if "command" in body else Change
                await self.send(kind(id=row.id, body=body))
            if not rows:
                await self._wake.wait()

    def close(self) -> None:
        self.cloud.release_waker(self.node, self._wake)


class EdgeTwinLinks:
    """The sync links of this server to the edges: one live stream per node."""

    def __init__(self, cloud: CloudTwinReplica) -> None:
        self.cloud = cloud
        self._links: dict[str, _Link] = {}
        self.audit: AuditSink | None = None
        """Where desired requests are recorded (the audit log; set once the app starts)."""
        self.request_counters = RequestCounters()

    def connected(self, node: str) -> bool:
        return node in self._links

    async def serve(self, stream: TunnelStream, session: AgentSession) -> None:
        """Serve one ``twins`` stream for as long as it lives."""
        stream.accept()
        node = session.name
        link = _Link(stream=stream, node=node, cloud=self.cloud, links=self)
        try:
            await link.handshake()
            older = self._links.get(node)
            if older is not None:
                older.stream.reset(ErrorCode.CANCEL, "replaced by a newer twins stream")
            self._links[node] = link
            log.info("twins: %s syncing (origin %s)", node, link.origin)
            await link.serve()
        except* SyncProtocolError as group:
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
