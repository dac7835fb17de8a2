"""The edge replica of every device twin: device requests in, cloud changes in, answers out.

Rules (docs/mqtt.md has the wire format):

1. A device's reported patch is checked against its model before anything changes; a bad one
   gets an error with the path and reason on ``twin/result`` and the twin is untouched.
2. An accepted patch goes through `device_models.write_change` on the device's edge `Replica`,
   and the new replica plus the `TwinChange` for the cloud are committed in one SQLite
   transaction before the device gets its answer (twin_store.py, outbox.py).
3. Group commit: messages are handled in batches (everything already received, up to a cap;
   mqtt_service.py forms them): one transaction and one fsync per batch, then the answers
   (published in order), then, once the broker acknowledged every answer of the batch (their
   PUBACKs), the caller's ``committed`` hook (it acknowledges the batch's messages to the
   broker). No device is answered before its change is durable, and no device message is
   acknowledged before the broker holds its answer: an agent killed in between gets the
   messages again from its session and answers them from the stored answers (rule 4) —
   acknowledged first, a lost answer would be resent by the device only later, possibly after
   its rid left the `MAX_RECENT` window, and be applied twice. A commit failure answers every
   request of the batch with ``unavailable`` and changes nothing in memory.
4. A request id (``rid``) makes a request idempotent: the answers to a device's last
   `MAX_RECENT` request ids are stored with its twin, and a redelivered request gets the stored
   answer without being applied again.
5. Cloud changes (`apply_cloud_change`) go through `device_models.apply_change`: exactly once
   per ``(origin, seq)``, in order, desired won by the cloud and reported by the edge. What
   actually changed in desired is sent to the device on ``twin/desired`` in order; the
   retained ``twin/delta`` always holds what the device still has to do, so a device that was
   away gets it on subscribe.
6. One lock orders every write and every publish, so retained deltas never go back in time and
   desired patches reach the broker in the order they were applied.
7. Pipelined batches (inside `EdgeTwinReplica.serving`, one broker session): batch N+1 is
   applied and committed while batch N's PUBACKs are awaited; rule 3 holds per batch, and
   `AckOrder` (sans-IO) decides when a batch's messages are acknowledged: after all of its
   answers are held and after every earlier batch ([MQTT-4.6.0-2]: in the order received),
   so after a crash the broker sends again only the newest batches. Bounded: at most
   `max_unacknowledged_batches` unacknowledged batches, and a new batch waits until every
   device's messages in unacknowledged batches fit its rid memory (`MAX_RECENT`), so each
   redelivered request is still answered from it. An answer the broker did not take stops
   all later acknowledgements and ends the session (`handle_batch` raises
   `aiomqtt.MqttError` before committing more): the broker sends them all again.
8. Desired belongs to the cloud; the edge writes it itself (`write_local_desired`) only for a
   device whose model allows it (``localControl: true``), and only when asked to (a Home
   Assistant command while the cloud is unreachable). The write is checked against the model,
   committed with its `TwinChange` in the outbox in one transaction, and sent to the device
   on ``twin/desired`` at once, exactly as a cloud change would be (rule 5). When the link
   returns it syncs like any change: a key the cloud also wrote meanwhile is the cloud's
   (device_models' conflict rule), and the device is then told the cloud's value.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol

import aiomqtt

from device_models import (
    MAX_DEPTH,
    DeviceModel,
    DeviceModelsError,
    JsonObject,
    JsonValue,
    LimitExceededError,
    ModelRegistry,
    Problem,
    Section,
    SequenceGapError,
    TwinChange,
    ValidationError,
    VersionConflictError,
    apply_change,
    json_equal,
    write_change,
)
from edge_agent.twins import topics
from edge_agent.twins.outbox import Metrics, Outbox
from edge_agent.twins.payloads import (
    Code,
    RequestError,
    decode_object,
    encode,
    error_from_model,
    only_fields,
    optional_rid,
)
from edge_agent.twins.topics import DeviceTopic, Op
from edge_agent.twins.twin_store import DeviceRecord, DeviceState, StoreWrite, TwinStore

__all__ = [
    "MAX_RECENT",
    "MAX_UNACKNOWLEDGED_BATCHES",
    "AckOrder",
    "CloudChangeError",
    "CloudChangeResult",
    "EdgeTwinReplica",
    "LocalWriteError",
    "Publisher",
]

log = logging.getLogger("edge_agent.twins.replica")

MAX_RECENT = 16
MAX_UNACKNOWLEDGED_BATCHES = 4
"""Default of the pipeline's depth (rule 7): batches committed whose device messages are not
acknowledged yet, at most. 4 x 256 messages (``max_batch``) is about paho's window of answers
in flight (``max_inflight_answers``, 1000) and MQTT 5's ``receive_maximum`` (1000): a deeper
pipeline would only queue answers in the client while the broker stopped sending messages.
1 is the unpipelined agent (each batch waits for its PUBACKs)."""
_REPORT_FIELDS = frozenset({"rid", "patch", "version"})
_GET_FIELDS = frozenset({"rid"})
_AVAILABILITY = (b"online", b"offline")


class Publisher(Protocol):
    async def publish(self, topic: str, payload: bytes, *, retain: bool) -> None:
        """Publish (QoS 1) and return once the broker acknowledged it."""
        ...


class CloudChangeError(RequestError):
    """A cloud change that was not applied; `code` says whether to resend (out_of_order)."""


class LocalWriteError(RequestError):
    """An edge write of desired that was refused; `code` and `message` say why (rule 8)."""


@dataclass(frozen=True, kw_only=True)
class CloudChangeResult:
    device_id: str
    applied: bool
    """False: a redelivery (or our own change echoed back); nothing changed."""

    rejected: bool = False
    """True: the change does not fit the model or the limits here. It was consumed (its
    sequence number used, its values not applied) and a ``change-rejected`` record went to
    the outbox; do not resend it."""

    version: int = 0
    """The section's ``$version`` on the edge afterwards."""


@dataclass(frozen=True, slots=True)
class _Outgoing:
    topic: str
    payload: bytes
    retain: bool = False


@dataclass(kw_only=True)
class _Batch:
    records: dict[str, DeviceRecord] = field(default_factory=dict)
    write: StoreWrite = field(default_factory=StoreWrite)
    outgoing: list[_Outgoing] = field(default_factory=list)
    answered: list[tuple[str, Op, str | None]] = field(default_factory=list)
    dirty_delta: set[str] = field(default_factory=set)
    accepted: int = 0
    outbox_waiting: int | None = None
    """Committed outbox records, looked up once per batch (a query per report cost 6 %)."""

    def outbox_committed(self, outbox: Outbox) -> int:
        if self.outbox_waiting is None:
            self.outbox_waiting = outbox.size
        return self.outbox_waiting


@dataclass(slots=True)
class _Pending:
    number: int
    answers: int
    """Answers of the batch the broker has not acknowledged yet."""
    devices: Counter[str]
    """Messages of the batch per device (each may carry a rid the device's memory must hold)."""


class AckOrder:
    """Which batches' device messages may be acknowledged now (rule 3); sans-IO.

    Batches are numbered as they are committed (`start`). A batch's messages are acknowledged
    once the broker holds every answer of the batch and every earlier batch's messages are
    acknowledged: acknowledgements go in the order the messages came ([MQTT-4.6.0-2]), so
    what the broker sends again after a crash is always the newest batches. Bounded: at most
    `limit` batches unacknowledged, and a device's messages in unacknowledged batches stay
    within its rid memory (`MAX_RECENT`), so each of them is answered from it when it comes
    again (a single batch larger than that is let through when nothing else is pending, as
    before pipelining). An answer the broker did not take (`failed`) stops every later
    acknowledgement: the caller ends the session and the broker sends them all again.
    """

    def __init__(self, *, limit: int, per_device: int = MAX_RECENT) -> None:
        if limit < 1:
            raise ValueError(f"limit: at least 1 batch, got {limit}")
        self._limit = limit
        self._per_device = per_device
        self._pending: deque[_Pending] = deque()
        self._by_device: Counter[str] = Counter()
        self._next = 0
        self.broken = False
        """An answer failed: nothing more is acknowledged on this session."""

    @property
    def unacknowledged(self) -> int:
        """Batches committed whose messages are not acknowledged yet."""
        return len(self._pending)

    def has_room(self, devices: Mapping[str, int]) -> bool:
        """Whether a batch with `devices` (messages per device) may be committed now."""
        if self.broken or not self._pending:
            return True
        if len(self._pending) >= self._limit:
            return False
        return all(
            self._by_device[device] + count <= self._per_device for device, count in devices.items()
        )

    def start(self, *, answers: int, devices: Mapping[str, int]) -> tuple[int, list[int]]:
        """A batch was committed with `answers` to send.

        Returns its number and what to acknowledge now (a batch with nothing to send is held
        at once).
        """
        if self.broken:
            raise RuntimeError("an answer failed on this session: end it, do not commit more")
        if answers < 0:
            raise ValueError(f"answers: at least 0, got {answers}")
        number = self._next
        self._next += 1
        self._pending.append(_Pending(number, answers, Counter(devices)))
        self._by_device.update(devices)
        return number, self._release()

    def held(self, number: int) -> list[int]:
        """The broker acknowledged one answer of batch `number`.

        Returns the batches to acknowledge now, oldest first.
        """
        entry = self._find(number)
        if entry.answers <= 0:
            raise ValueError(f"batch {number} has no answer left to hold")
        entry.answers -= 1
        return self._release()

    def failed(self, number: int) -> None:
        """An answer of batch `number` did not reach the broker: acknowledge nothing more."""
        self._find(number)
        self.broken = True

    def _find(self, number: int) -> _Pending:
        for entry in self._pending:
            if entry.number == number:
                return entry
        raise KeyError(f"batch {number} is not pending")

    def _release(self) -> list[int]:
        done: list[int] = []
        while not self.broken and self._pending and self._pending[0].answers == 0:
            entry = self._pending.popleft()
            self._by_device.subtract(entry.devices)
            done.append(entry.number)
        if done:
            self._by_device = +self._by_device  # drop the zeros: a long-lived agent sees many ids
        return done


class _AnswerPipeline:
    """The I/O half of rule 7: each batch's answers out, its ``committed`` hook when due.

    One per broker session (`EdgeTwinReplica.serving`); `AckOrder` decides when.
    """

    def __init__(
        self,
        *,
        group: asyncio.TaskGroup,
        publisher: Publisher,
        order: AckOrder,
        on_failure: Callable[[], None],
    ) -> None:
        self._group = group
        self._publisher = publisher
        self._order = order
        self._on_failure = on_failure
        self._hooks: dict[int, Callable[[], None] | None] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._room = asyncio.Event()
        self._abandoned = False

    async def wait_for_room(self, devices: Mapping[str, int]) -> None:
        while not self._order.has_room(devices):
            self._room.clear()
            await self._room.wait()
        if self._order.broken:
            raise aiomqtt.MqttError("an answer did not reach the broker; the session must end")

    def send(
        self,
        outgoing: list[_Outgoing],
        *,
        devices: Mapping[str, int],
        committed: Callable[[], None] | None,
    ) -> None:
        number, ready = self._order.start(answers=len(outgoing), devices=devices)
        self._hooks[number] = committed
        nowait = getattr(self._publisher, "publish_nowait", None)
        if nowait is not None:
            # No task per answer: the publisher calls back at its PUBACK (or session end).
            done = functools.partial(self._answered, number)
            for message in outgoing:
                nowait(message.topic, message.payload, retain=message.retain, done=done)
            self._acknowledge(ready)
            return
        for index, message in enumerate(outgoing):
            task = self._group.create_task(
                self._publish(number, message), name=f"twins.answer[{number}.{index}]"
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        self._acknowledge(ready)

    def abandon(self) -> None:
        """The session ended: stop waiting for PUBACKs; nothing more is acknowledged."""
        self._abandoned = True
        self._hooks.clear()
        for task in self._tasks:
            task.cancel()

    async def _publish(self, number: int, message: _Outgoing) -> None:
        try:
            await self._publisher.publish(message.topic, message.payload, retain=message.retain)
        except aiomqtt.MqttError as error:
            self._answered(number, error)
            return
        self._answered(number, None)

    def _answered(self, number: int, error: BaseException | None) -> None:
        if self._abandoned:
            return  # the session ended; the next one gets the batch's messages again
        if error is None:
            self._acknowledge(self._order.held(number))
            return
        if not self._order.broken:
            # The connection loop reconnects and republishes the retained deltas; this
            # batch's and later batches' messages stay unacknowledged and come again.
            log.warning("an answer of batch %s was not published: %s", number, error)
            self._on_failure()
        self._order.failed(number)
        self._room.set()  # a batch waiting for room learns that the session must end

    def _acknowledge(self, ready: list[int]) -> None:
        for number in ready:
            committed = self._hooks.pop(number, None)
            if committed is not None:
                committed()
        if ready:
            self._room.set()


class EdgeTwinReplica:
    """The edge replica of every device twin; the rules above."""

    def __init__(
        self,
        *,
        store: TwinStore,
        outbox: Outbox,
        models: ModelRegistry,
        metrics: Metrics,
        max_payload_bytes: int,
        max_cloud_change_bytes: int,
        clock: Callable[[], float] = time.time,
        max_unacknowledged_batches: int = MAX_UNACKNOWLEDGED_BATCHES,
    ) -> None:
        self._store = store
        self._max_unacknowledged_batches = max_unacknowledged_batches
        self._pipeline: _AnswerPipeline | None = None
        self._outbox = outbox
        self._models = models
        self._metrics = metrics
        self._max_payload = max_payload_bytes
        self._max_cloud_change = max_cloud_change_bytes
        self._clock = clock
        self._devices = {record.device_id: record for record in store.devices()}
        self._published_delta: dict[str, JsonObject] = {}
        self._publisher: Publisher | None = None
        self._lock = asyncio.Lock()

    # ------------------------------------------------------------------ wiring

    def attach(self, publisher: Publisher | None) -> None:
        """Use `publisher` for answers (None while the broker connection is down)."""
        self._publisher = publisher
        if publisher is None:
            self._published_delta.clear()

    def device(self, device_id: str) -> DeviceRecord | None:
        return self._devices.get(device_id)

    def device_ids(self) -> list[str]:
        return sorted(self._devices)

    @property
    def models(self) -> ModelRegistry:
        return self._models

    async def republish(self) -> None:
        """After (re)connecting: put every device's current delta on its retained topic."""
        async with self._lock:
            batch = _Batch(dirty_delta=set(self._devices))
            self._queue_deltas(batch)
            await self._send(batch.outgoing)

    # ------------------------------------------------------------------ devices

    async def commit_device(self, record: DeviceRecord, *, outbox: list[JsonObject]) -> None:
        """Write a device row (onboarding) with its outbox records."""
        async with self._lock:
            self._store.commit(StoreWrite(devices={record.device_id: record}, outbox=outbox))
            self._devices[record.device_id] = record
            self._outbox.notify()

    async def remove_device(self, device_id: str) -> None:
        """Forget a device and clear its retained topics (its credential is removed elsewhere)."""
        async with self._lock:
            record: JsonObject = {
                "kind": "device-removed",
                "device": device_id,
                "at": self._clock(),
            }
            self._store.commit(StoreWrite(outbox=[record]))
            self._store.delete_device(device_id)
            self._devices.pop(device_id, None)
            self._published_delta.pop(device_id, None)
            self._outbox.notify()
            clear = [
                _Outgoing(topics.device_topic(device_id, op), b"", retain=True)
                for op in (Op.DELTA, Op.AVAILABILITY)
            ]
            await self._send(clear)

    async def release_device(self, device_id: str, *, to: str) -> None:
        """Stop serving a device that moved to node `to` (its broker user now belongs to it).

        Unlike `remove_device` its retained topics stay: the availability is the device's
        own, and the new owner publishes its delta when it adopts the device.
        """
        async with self._lock:
            record: JsonObject = {
                "kind": "device-moved",
                "device": device_id,
                "to": to,
                "at": self._clock(),
            }
            self._store.commit(StoreWrite(outbox=[record]))
            self._store.delete_device(device_id)
            self._devices.pop(device_id, None)
            self._published_delta.pop(device_id, None)
            self._outbox.notify()

    async def adopt_device(self, record: DeviceRecord, *, announce: list[JsonObject]) -> None:
        """Serve a device another node handed over: its row, its records, its delta."""
        await self.commit_device(record, outbox=announce)
        async with self._lock:
            batch = _Batch(records={record.device_id: record}, dirty_delta={record.device_id})
            self._queue_deltas(batch)
            await self._send(batch.outgoing)

    def queue_unsent_availability(self) -> None:
        """Outbox has room again: queue availability changes that did not fit before."""
        for stale in self._store.unsent_availability():
            record = self._devices.get(stale.device_id, stale)
            try:
                self._outbox.check_room(1, availability=True)
            except RequestError:
                return
            updated = dataclasses.replace(record, availability_unsent=False)
            write = StoreWrite(
                devices={record.device_id: updated},
                outbox=[self._availability_record(record.device_id, record.availability)],
            )
            self._store.commit(write)
            self._devices[record.device_id] = updated
            self._outbox.notify()

    # ------------------------------------------------------------------ device messages

    async def handle_batch(
        self,
        messages: list[tuple[DeviceTopic, bytes]],
        *,
        committed: Callable[[], None] | None = None,
    ) -> None:
        """Handle device messages in arrival order with one commit; answer them.

        `committed` runs once the broker holds the batch's answers (or the ``unavailable``
        answers after a failed commit): the caller acknowledges the messages to the broker
        there (rule 3). Inside `serving` this returns once the batch is committed and its
        answers are handed to the client, and `committed` runs later, in batch order, while
        the next batches are handled (rule 7); it first waits for room in the pipeline, and
        raises `aiomqtt.MqttError` when an answer of an earlier batch did not reach the
        broker (end the session: the broker sends the unacknowledged messages again).
        Outside `serving` it returns after `committed` ran. An empty batch (the caller's
        other messages, e.g. claims) commits nothing; its `committed` still runs in order.
        """
        pipeline = self._pipeline
        devices = Counter(where.device_id for where, _ in messages)
        if pipeline is not None:
            await pipeline.wait_for_room(devices)
        if not messages:
            # Only other messages (claims): nothing to commit, acknowledged in their turn.
            if pipeline is not None:
                pipeline.send([], devices=devices, committed=committed)
            elif committed is not None:
                committed()
            return
        async with self._lock:
            outgoing = self._apply_and_commit(messages)
            if pipeline is not None and pipeline is self._pipeline:
                # Handed to the client in order under the lock (tasks start in creation
                # order); the PUBACKs are awaited by the pipeline, not here.
                pipeline.send(outgoing, devices=devices, committed=committed)
                return
            await self._send(outgoing)
        if committed is not None:
            committed()

    def _apply_and_commit(self, messages: list[tuple[DeviceTopic, bytes]]) -> list[_Outgoing]:
        """Apply the messages in order, commit once; the answers and deltas to send."""
        batch = _Batch()
        for where, payload in messages:
            self._handle_one(batch, where, payload)
        self._queue_deltas(batch)
        try:
            self._store.commit(batch.write)
        except Exception:
            log.exception(
                "twin store commit failed; %s requests answered unavailable", len(messages)
            )
            self._answer_storage_failure(batch)
            return batch.outgoing
        self._devices.update(batch.records)
        self._metrics.reports_accepted += batch.accepted
        if batch.write.outbox:
            self._outbox.notify()
        return batch.outgoing

    @contextlib.asynccontextmanager
    async def serving(self, publisher: Publisher) -> AsyncIterator[None]:
        """One broker session: answers go out through `publisher`, batches are pipelined.

        On exit (the session ended) answers still waiting for their PUBACK are abandoned and
        their batches stay unacknowledged: the broker sends those messages again on the next
        session and they are answered from the stored answers (rule 4). The exception that
        ended the session propagates unchanged (not wrapped in an ExceptionGroup).
        """
        failure: BaseException | None = None
        self.attach(publisher)
        try:
            async with asyncio.TaskGroup() as group:
                pipeline = _AnswerPipeline(
                    group=group,
                    publisher=publisher,
                    order=AckOrder(limit=self._max_unacknowledged_batches),
                    on_failure=self._published_delta.clear,
                )
                self._pipeline = pipeline
                try:
                    yield
                except BaseException as error:  # noqa: BLE001 - re-raised below, unwrapped
                    failure = error
                    self._pipeline = None
                    pipeline.abandon()
        finally:
            self._pipeline = None
            self.attach(None)
        if failure is not None:
            raise failure

    def _handle_one(self, batch: _Batch, where: DeviceTopic, payload: bytes) -> None:
        rid: str | None = None
        if where.device_id not in batch.records and where.device_id not in self._devices:
            # Another node's device: on a broker shared by several agents every agent
            # receives every device's messages, and only the owner answers (docs/mqtt.md §2).
            self._metrics.foreign_messages += 1
            return
        try:
            if where.op is Op.AVAILABILITY:
                self._availability(batch, where.device_id, payload)
                return
            record = self._active(batch, where.device_id)
            data = decode_object(payload, max_bytes=self._max_payload)
            rid = optional_rid(data)
            if where.op is Op.GET:
                only_fields(data, _GET_FIELDS)
                self._answer(batch, where.device_id, Op.GET, rid, self._twin_answer(record))
            else:
                self._report(batch, record, where.op, rid, data)
        except RequestError as error:
            self._metrics.reports_rejected += where.op is not Op.GET
            log.info("%s from %s refused: %s", where.op, where.device_id, error.message)
            self._answer(batch, where.device_id, where.op, rid, error.to_json(), remember=False)
        except Exception:
            log.exception("internal error on %s from %s", where.op, where.device_id)
            internal = RequestError(Code.INTERNAL, "internal error; the twin is unchanged")
            self._answer(batch, where.device_id, where.op, rid, internal.to_json(), remember=False)

    def _active(self, batch: _Batch, device_id: str) -> DeviceRecord:
        record = batch.records.get(device_id) or self._devices.get(device_id)
        if record is None or record.state is not DeviceState.ACTIVE:
            raise RequestError(Code.UNKNOWN_DEVICE, f"device {device_id} is not onboarded")
        return record

    def _model(self, record: DeviceRecord) -> DeviceModel:
        model = self._models.get(record.model)
        if model is None:
            raise RequestError(Code.UNKNOWN_MODEL, f"model {record.model} is not loaded here")
        return model

    def _report(
        self, batch: _Batch, record: DeviceRecord, op: Op, rid: str | None, data: JsonObject
    ) -> None:
        only_fields(data, _REPORT_FIELDS)
        if rid is not None and (stored := _recent(record, rid)) is not None:
            log.debug("redelivered %s %s from %s", op, rid, record.device_id)
            self._answer(batch, record.device_id, op, rid, stored, remember=False)
            return
        patch = data.get("patch")
        if not isinstance(patch, dict):
            raise RequestError(Code.BAD_REQUEST, "patch must be a JSON object (a merge patch)")
        expected = data.get("version")
        if expected is not None and (isinstance(expected, bool) or not isinstance(expected, int)):
            raise RequestError(Code.BAD_REQUEST, "version must be an integer")
        model = self._model(record)
        try:
            checked = model.validate_reported(patch)
        except ValidationError as error:
            raise error_from_model(error, Code.INVALID_VALUE) from None
        except LimitExceededError as error:
            raise error_from_model(error, Code.TOO_LARGE) from None
        except DeviceModelsError as error:
            raise error_from_model(error, Code.BAD_REQUEST) from None
        replica = record.replica
        if checked:
            self._outbox.check_room(
                len(batch.write.outbox) + 1, waiting=batch.outbox_committed(self._outbox)
            )
            try:
                replica, change = write_change(
                    replica, Section.REPORTED, checked, now=self._clock(), expected_version=expected
                )
            except VersionConflictError as error:
                raise error_from_model(error, Code.VERSION_CONFLICT) from None
            except LimitExceededError as error:
                raise error_from_model(error, Code.TOO_LARGE) from None
            batch.write.outbox.append(self._change_record(record, change))
            batch.dirty_delta.add(record.device_id)
            batch.accepted += 1
        version = replica.twin.reported.version
        updated = dataclasses.replace(record, replica=replica)
        self._stage(batch, updated)
        answer: JsonObject = {"code": 200, "version": version}
        self._answer(batch, record.device_id, op, rid, answer, quiet=op is Op.TELEMETRY)

    def _availability(self, batch: _Batch, device_id: str, payload: bytes) -> None:
        status = payload.strip()
        if not status:
            return  # a cleared retained message
        if status not in _AVAILABILITY:
            raise RequestError(Code.BAD_REQUEST, "availability must be online or offline")
        record = self._active(batch, device_id)
        text = status.decode()
        if record.availability == text:
            return  # the retained message replayed when the agent subscribes
        try:
            self._outbox.check_room(
                len(batch.write.outbox) + 1,
                availability=True,
                waiting=batch.outbox_committed(self._outbox),
            )
        except RequestError:
            self._metrics.availability_deferred += 1
            log.error("outbox full: availability %s of %s kept for later", text, device_id)  # noqa: TRY400 - the refusal is expected, a traceback would only add noise
            self._stage(
                batch, dataclasses.replace(record, availability=text, availability_unsent=True)
            )
            return
        batch.write.outbox.append(self._availability_record(device_id, text))
        self._stage(
            batch, dataclasses.replace(record, availability=text, availability_unsent=False)
        )

    def _stage(self, batch: _Batch, record: DeviceRecord) -> None:
        batch.records[record.device_id] = record
        batch.write.devices[record.device_id] = record

    def _answer(
        self,
        batch: _Batch,
        device_id: str,
        op: Op,
        rid: str | None,
        body: JsonObject,
        *,
        remember: bool = True,
        quiet: bool = False,
    ) -> None:
        answer: JsonObject = {"rid": rid, "op": _op_name(op), **body}
        if rid is None:
            del answer["rid"]
        if remember and rid is not None and op is not Op.GET:
            record = batch.records[device_id]
            recent = (*record.recent, (rid, answer))[-MAX_RECENT:]
            self._stage(batch, dataclasses.replace(record, recent=recent))
        batch.answered.append((device_id, op, rid))
        if not quiet:
            topic = topics.device_topic(device_id, Op.RESULT)
            batch.outgoing.append(_Outgoing(topic, encode(answer)))

    def _answer_storage_failure(self, batch: _Batch) -> None:
        error = RequestError(Code.UNAVAILABLE, "the agent could not store the change; retry")
        batch.outgoing = [
            _Outgoing(
                topics.device_topic(device_id, Op.RESULT),
                encode({"rid": rid, "op": _op_name(op), **error.to_json()}),
            )
            for device_id, op, rid in batch.answered
            if rid is not None and op is not Op.AVAILABILITY
        ]

    def _twin_answer(self, record: DeviceRecord) -> JsonObject:
        twin = record.replica.twin
        return {
            "code": 200,
            "desired": {**twin.desired.values, "$version": twin.desired.version},
            "reported": {**twin.reported.values, "$version": twin.reported.version},
        }

    def _queue_deltas(self, batch: _Batch) -> None:
        for device_id in sorted(batch.dirty_delta):
            record = batch.records.get(device_id) or self._devices.get(device_id)
            if record is None or record.state is not DeviceState.ACTIVE:
                continue
            twin = record.replica.twin
            body: JsonObject = {"version": twin.desired.version, "delta": twin.delta()}
            if json_equal(self._published_delta.get(device_id), body):
                continue
            self._published_delta[device_id] = body
            topic = topics.device_topic(device_id, Op.DELTA)
            batch.outgoing.append(_Outgoing(topic, encode(body), retain=True))

    async def _send(self, outgoing: list[_Outgoing]) -> None:
        publisher = self._publisher
        if publisher is None or not outgoing:
            return
        try:
            # Tasks start in creation order and each hands its message to the client at once,
            # so the broker gets them in this order while their acknowledgements overlap; the
            # batch's device messages are acknowledged only after these (rule 3).
            async with asyncio.TaskGroup() as group:
                for index, message in enumerate(outgoing):
                    group.create_task(
                        publisher.publish(message.topic, message.payload, retain=message.retain),
                        name=f"twins.publish[{index}]",
                    )
        except* aiomqtt.MqttError as errors:
            # The connection loop reconnects and republishes the retained deltas; the batch's
            # messages, unacknowledged on a dead session, come again and are answered from
            # the stored answers (their rid makes that safe).
            log.warning("publishing %s answers failed: %s", len(outgoing), errors.exceptions[0])
            self._published_delta.clear()

    # ------------------------------------------------------------------ outbox records

    def _change_record(self, record: DeviceRecord, change: TwinChange) -> JsonObject:
        return {
            "kind": "twin-change",
            "device": record.device_id,
            "model": record.model,
            "change": change.to_json(),
        }

    def _availability_record(self, device_id: str, status: str | None) -> JsonObject:
        return {
            "kind": "availability",
            "origin": self._store.origin,
            "device": device_id,
            "status": status,
            "at": self._clock(),
        }

    # ------------------------------------------------------------------ local desired

    async def write_local_desired(self, device_id: str, patch: JsonObject) -> int:
        """Write `patch` into `device_id`'s desired section here, at the edge (rule 8).

        Returns the desired ``$version`` afterwards. Raises LocalWriteError: the device is
        not active here (``device_not_found``), its model is not loaded (``model_unknown``)
        or does not allow local control (``bad_request``), the patch does not fit the model
        (``invalid_value``, ``too_large``), or the outbox is full (``outbox_full``); the
        twin is then unchanged.
        """
        async with self._lock:
            record = self._devices.get(device_id)
            if record is None or record.state is not DeviceState.ACTIVE:
                raise LocalWriteError(Code.UNKNOWN_DEVICE, f"device {device_id} is not onboarded")
            model = self._models.get(record.model)
            if model is None:
                raise LocalWriteError(
                    Code.UNKNOWN_MODEL, f"model {record.model} is not loaded here"
                )
            if not model.local_control:
                raise LocalWriteError(
                    Code.BAD_REQUEST, f"model {model.name} does not allow local control"
                )
            if not patch:
                raise LocalWriteError(Code.BAD_REQUEST, "an empty patch changes nothing")
            try:
                checked = model.validate_desired(patch)
                self._outbox.check_room(1)
                replica, change = write_change(
                    record.replica, Section.DESIRED, checked, now=self._clock()
                )
            except ValidationError as error:
                raise LocalWriteError(Code.INVALID_VALUE, error.summary, error.problems) from None
            except LimitExceededError as error:
                raise LocalWriteError(Code.TOO_LARGE, error.summary, error.problems) from None
            except RequestError as error:  # the outbox is full
                raise LocalWriteError(error.code, error.message) from None
            except DeviceModelsError as error:
                raise LocalWriteError(Code.BAD_REQUEST, error.summary, error.problems) from None
            updated = dataclasses.replace(record, replica=replica)
            self._store.commit(
                StoreWrite(
                    devices={device_id: updated}, outbox=[self._change_record(record, change)]
                )
            )
            self._devices[device_id] = updated
            self._outbox.notify()
            version = replica.twin.desired.version
            # The device learns it as it learns a cloud change: the patch, then the delta.
            batch = _Batch(records={device_id: updated}, dirty_delta={device_id})
            body: JsonObject = {"version": version, "patch": checked}
            batch.outgoing.append(
                _Outgoing(topics.device_topic(device_id, Op.DESIRED), encode(body))
            )
            self._metrics.desired_delivered += 1
            self._queue_deltas(batch)
            await self._send(batch.outgoing)
            log.info(
                "desired of %s written at the edge (local control): $version %s", device_id, version
            )
            return version

    # ------------------------------------------------------------------ cloud changes

    async def apply_cloud_change(
        self, message: Mapping[str, object] | str | bytes
    ) -> CloudChangeResult:
        """Apply one change from the cloud: ``{"device": id, "change": TwinChange JSON}``.

        Idempotent: a redelivered change returns ``applied=False`` and changes nothing.
        Raises CloudChangeError: ``bad_request`` (malformed: drop it), ``device_not_found``
        (resend after the device is known), ``out_of_order`` (resend the missing ones first).
        """
        device_id, change = self._parse_cloud_change(message)
        async with self._lock:
            record = self._devices.get(device_id)
            if record is None or record.state is not DeviceState.ACTIVE:
                raise CloudChangeError(Code.UNKNOWN_DEVICE, f"device {device_id} is not onboarded")
            replica = record.replica
            high_water = replica.applied.get(change.origin, 0)
            if change.origin == replica.origin or change.seq <= high_water:
                version = replica.twin.section(change.section).version
                return CloudChangeResult(device_id=device_id, applied=False, version=version)
            if change.seq != high_water + 1:
                error = SequenceGapError(
                    origin=change.origin, expected=high_water + 1, got=change.seq
                )
                raise CloudChangeError(Code.OUT_OF_ORDER, error.summary, error.problems)
            write = StoreWrite()
            rejected = False
            try:
                _check_values(self._model_of(record), change)
                result = apply_change(replica, change)
            except (ValidationError, LimitExceededError) as error:
                # Dead-letter: use up its sequence number without its values, and tell the
                # cloud, so that later changes from the same origin are not blocked forever.
                log.warning(
                    "cloud change %s#%s for %s rejected: %s",
                    change.origin,
                    change.seq,
                    device_id,
                    error,
                )
                empty = dataclasses.replace(
                    change, values=MappingProxyType({}), metadata=MappingProxyType({})
                )
                result = apply_change(replica, empty)
                write.outbox.append(_rejected_record(device_id, change, error))
                rejected = True
            section = result.replica.twin.section(change.section)
            if not result.applied:
                return CloudChangeResult(
                    device_id=device_id, applied=False, version=section.version
                )
            updated = dataclasses.replace(record, replica=result.replica)
            write.devices[device_id] = updated
            self._store.commit(write)
            self._devices[device_id] = updated
            if write.outbox:
                self._outbox.notify()
            batch = _Batch(records={device_id: updated}, dirty_delta={device_id})
            if change.section is Section.DESIRED and result.patch:
                body: JsonObject = {"version": section.version, "patch": result.patch}
                topic = topics.device_topic(device_id, Op.DESIRED)
                batch.outgoing.append(_Outgoing(topic, encode(body)))
                self._metrics.desired_delivered += 1
            self._queue_deltas(batch)
            await self._send(batch.outgoing)
            return CloudChangeResult(
                device_id=device_id, applied=True, rejected=rejected, version=section.version
            )

    def _parse_cloud_change(
        self, message: Mapping[str, object] | str | bytes
    ) -> tuple[str, TwinChange]:
        if isinstance(message, str | bytes):
            raw = message.encode() if isinstance(message, str) else message
            try:
                data: Mapping[str, object] = decode_object(
                    raw, max_bytes=self._max_cloud_change, max_depth=MAX_DEPTH + 3
                )
            except RequestError as error:
                raise CloudChangeError(error.code, error.message) from None
        else:
            data = message
        unknown = set(data) - {"device", "change"}
        device_id = data.get("device")
        if unknown or not isinstance(device_id, str) or not topics.DEVICE_ID.fullmatch(device_id):
            raise CloudChangeError(
                Code.BAD_REQUEST, 'a cloud change is {"device": <device id>, "change": {...}}'
            )
        try:
            change = TwinChange.from_json(data.get("change"))
        except DeviceModelsError as error:
            raise CloudChangeError(Code.BAD_REQUEST, error.summary, error.problems) from None
        return device_id, change

    def _model_of(self, record: DeviceRecord) -> DeviceModel:
        model = self._models.get(record.model)
        if model is None:
            problem = f"model {record.model} is not loaded on this agent"
            raise ValidationError("unknown model", (Problem(path="model", reason=problem),))
        return model


def _check_values(model: DeviceModel, change: TwinChange) -> None:
    values = dict(change.values)
    if change.section is Section.DESIRED:
        model.validate_desired(values)
    else:
        model.validate_reported(values)


def _rejected_record(device_id: str, change: TwinChange, error: DeviceModelsError) -> JsonObject:
    code = Code.TOO_LARGE if isinstance(error, LimitExceededError) else Code.INVALID_VALUE
    problems: list[JsonValue] = [{"path": p.path, "reason": p.reason} for p in error.problems]
    return {
        "kind": "change-rejected",
        "device": device_id,
        "origin": change.origin,
        "seq": change.seq,
        "section": str(change.section),
        "error": {"reason": str(code), "detail": error.summary, "problems": problems},
    }


def _recent(record: DeviceRecord, rid: str) -> JsonObject | None:
    return next((answer for seen, answer in record.recent if seen == rid), None)


def _op_name(op: Op) -> str:
    return {Op.GET: "get", Op.REPORTED: "reported", Op.TELEMETRY: "telemetry"}.get(op, str(op))
