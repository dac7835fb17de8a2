"""The cloud replica of every device twin: edge batches in, API writes in, changes out.

Rules (docs/twins.md has the long form):

1. Devices are keyed by (node, device id). A node's batches can only ever touch its own
   devices: the node is the session's verified certificate name, and every record's edge
   origin must be ``<node>.<boot id>``, the origin the agent announced in its hello.
2. A batch from the edge is applied in one transaction with the origin's ``outboxId`` mark:
   records at or below the mark are redeliveries and are skipped, so every record of the
   outbox takes effect once. Twin changes are also applied with `device_models.apply_change`
   (once per (origin, seq); reported won by the edge, desired by the cloud).
3. A record that cannot be applied (malformed, a value the model refuses, a gap) is consumed
   into ``dead_letters`` with its reason and shown on the device (``syncError``): one bad
   record must not block a node's outbox for ever. Only a store failure refuses a batch, and
   the agent then retries it.
4. An API write goes through `device_models.write_change` on the cloud replica; the new
   replica and the change for the edge (``downlink``) commit together, and the node's sync
   stream is woken to send it.
5. A ``device`` record means the edge onboarded the device with a fresh replica. The cloud
   starts a fresh replica too (so both number from 1 again), drops changes still queued for
   the old one, and re-sends its desired values as a new change: intent survives a device
   being re-onboarded, and moved (from the node it came from, per the ``moves`` table).
6. A device belongs to one node; `move` queues a ``move`` command for its node, which hands
   it over on the site's broker; its ``device-moved`` record ends it there and the target's
   ``device`` record starts it there (docs/twins.md, "Moving a device").
7. Desired belongs to the cloud. An edge change to desired is applied only when the device's
   model, as the cloud holds it, says ``localControl: true`` (the agent wrote it for a Home
   Assistant command while the cloud was unreachable); then it merges by the conflict rule
   (a key the cloud also wrote meanwhile stays the cloud's). Otherwise it is consumed like a
   value the model refuses (rule 3): its seq used up, nothing applied, ``syncError`` says why.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import prometheus_client

from device_models import (
    DeviceModel,
    DeviceModelsError,
    JsonObject,
    LimitExceededError,
    ModelRegistry,
    Problem,
    Replica,
    Role,
    Section,
    SequenceGapError,
    TwinChange,
    ValidationError,
    apply_change,
    write_change,
)
from tunnel_server.twins.backend import TwinBackend
from tunnel_server.twins.settings import CloudTwinsSettings
from tunnel_server.twins.store import DeviceKey, DeviceRow, DeviceState, Transaction

__all__ = [
    "DEVICE_ID",
    "BatchError",
    "BatchResult",
    "CloudTwinReplica",
    "CommandOutcome",
    "DeviceRemovedError",
    "EdgeDesiredWrite",
    "ModelUnknownError",
    "MovePendingError",
    "QueueFullError",
    "SameNodeError",
    "UnknownDeviceError",
]

log = logging.getLogger("tunnel_server.twins")

# The edge's device id alphabet (edge_agent.twins.topics.DEVICE_ID): a topic level.
DEVICE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_MODEL_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_BOOT = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_REJECTED_BYTES = 8 * 1024
"""A ``change-rejected`` record's error is kept on the device up to this size."""


class BatchError(Exception):
    """The batch breaks the protocol (ids not increasing, not a list...): refuse it whole."""


class UnknownDeviceError(LookupError):
    pass


class DeviceRemovedError(Exception):
    pass


class ModelUnknownError(Exception):
    """The device's model is not loaded in the cloud, so a write cannot be validated."""


class SameNodeError(ValueError):
    """A move to the node the device is on already."""


class MovePendingError(ValueError):
    """A move of a device that is being moved already (one at a time)."""


class QueueFullError(Exception):
    """Too many changes wait for an offline node already."""


@dataclass(frozen=True, kw_only=True)
class CommandOutcome:
    """What the node's agent answered to a lifecycle command (register, remove, revoke)."""

    ok: bool
    error: str = ""
    """The agent's reason word when not ok (``model_unknown``, ``duplicate_id``...)."""
    message: str = ""


class _RejectedError(Exception):
    def __init__(self, reason: str, *, device: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.device = device


@dataclass(frozen=True, kw_only=True)
class EdgeDesiredWrite:
    """An edge change to desired the batch brought (rule 7), for the audit log."""

    device: str
    change: str
    """``<origin>#<seq>``."""
    keys: tuple[str, ...]
    refused: str | None = None
    """None: applied. Else the reason word: ``local_control_not_allowed`` (the model does
    not allow it) or ``invalid_value`` (the model refuses the values)."""


@dataclass(kw_only=True)
class BatchResult:
    applied: int = 0
    duplicates: int = 0
    rejected: int = 0
    desired_writes: list[EdgeDesiredWrite] = dataclasses.field(default_factory=list)
    """Not sent to the agent (`to_json`): the caller audits them."""

    def to_json(self) -> JsonObject:
        return {"applied": self.applied, "duplicates": self.duplicates, "rejected": self.rejected}


@dataclass(kw_only=True)
class Counters:
    """Totals since start, for /metrics."""

    batches: int = 0
    records_applied: int = 0
    records_duplicate: int = 0
    records_rejected: int = 0
    changes_applied: int = 0
    changes_duplicate: int = 0
    downlink_queued: int = 0
    downlink_acked: int = 0
    downlink_failed: int = 0


END_TO_END_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0,
)  # fmt: skip
"""Seconds: a loaded LAN path is 5-100 ms, a tunnel retry seconds, an offline spell minutes to
hours (those land in the top buckets; +Inf beyond an hour)."""


class CloudTwinReplica:
    """The cloud replica of every device twin: the twin store plus the rules above.

    One per server process.
    """

    def __init__(
        self,
        *,
        store: TwinBackend,
        models: ModelRegistry,
        settings: CloudTwinsSettings,
        clock: Callable[[], float] = time.time,
        registry: prometheus_client.CollectorRegistry | None = None,
    ) -> None:
        self.store = store
        self.models = models
        self.settings = settings
        self.counters = Counters()
        self.end_to_end = prometheus_client.Histogram(
            "tunnel_server_twins_end_to_end_seconds",
            "Device twin changes from agents: seconds from the agent accepting the device's"
            " report (the change's time, the agent's clock) to the cloud storing it (after the"
            " commit); includes the agent's outbox wait, so offline spells show up here",
            buckets=END_TO_END_BUCKETS,
            registry=registry,
        )
        """Not registered when `registry` is None (tests read it with ``collect()``)."""
        self._applied_at: list[float] = []
        """The edge times of the changes applied by the batch being stored."""
        self._desired_writes: list[EdgeDesiredWrite] = []
        """The edge's desired changes in the batch being stored (rule 7)."""
        self._clock = clock
        self._wakers: dict[str, asyncio.Event] = {}
        self._changed = asyncio.Event()
        self._waiters = 0
        self._stopping = False
        self.reported_observers: list[Callable[[DeviceKey, JsonObject, float], None]] = []
        """Called with (device, what changed, the edge's time) when reported values change."""
        self._commands: dict[int, asyncio.Future[CommandOutcome]] = {}
        """Lifecycle commands an API request waits on, by downlink row id."""

    @property
    def origin(self) -> str:
        return self.store.origin

    # ------------------------------------------------------------------ lookups

    def device(self, key: DeviceKey) -> DeviceRow | None:
        return self.store.device(key)

    def resolve(self, device_id: str) -> list[DeviceKey]:
        """API id -> keys: ``node:device`` names one; a bare device id may match several."""
        node, sep, device = device_id.rpartition(":")
        if sep:
            return [(node, device)] if self.store.device((node, device)) is not None else []
        keys = self.store.find(device_id)
        if len(keys) > 1:
            # A moved device leaves a removed row behind on its old node: the live one wins.
            active = [key for key in keys if _active(self.store.device(key))]
            if len(active) == 1:
                return active
        return keys

    # ------------------------------------------------------------------ sync stream hooks

    def waker(self, node: str) -> asyncio.Event:
        """A new event for the node's newest sync stream, set when changes are queued."""
        event = self._wakers[node] = asyncio.Event()
        return event

    def release_waker(self, node: str, event: asyncio.Event) -> None:
        if self._wakers.get(node) is event:
            del self._wakers[node]

    def _wake(self, node: str) -> None:
        event = self._wakers.get(node)
        if event is not None:
            event.set()

    def notify_soon(self) -> None:
        """Wake long-polls (call after a commit): swap in a fresh event, set the old one."""
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    @property
    def waiters(self) -> int:
        """Long-polls waiting now (for /metrics)."""
        return self._waiters

    @property
    def stopping(self) -> bool:
        """True once ``end_waits`` ran: the server is shutting down."""
        return self._stopping

    def end_waits(self) -> None:
        """Answer every waiting long-poll now, and any later one at once: the server stops.

        A long-poll may wait ``max_wait`` (30 s), longer than the server's drain on SIGTERM
        (``shutdown_grace``, 10 s). aiohttp's drain waits the grace for a handler, then cancels
        only its request body and waits the grace again before cancelling the task: without
        this, one long-poll held ``tunnel-server run`` for ~22 s after SIGTERM.
        """
        self._stopping = True
        self.notify_soon()

    async def wait_version(
        self, key: DeviceKey, wanted: Mapping[Section, int], *, within: float
    ) -> DeviceRow | None:
        """The device once a ``section.$version >= version`` of ``wanted`` holds, or later.

        As it is after ``within`` seconds when none did, and at once when the server stops
        (``end_waits``). Waiting on both sections is what a page showing a twin needs:
        whichever side changes first ends the wait.
        """
        if self._waiters >= self.settings.max_waiters:
            raise QueueFullError(f"{self._waiters} long-polls wait already")
        self._waiters += 1
        try:
            async with asyncio.timeout(within):
                while not self._stopping and not _version_reached(self.store.device(key), wanted):
                    await self._changed.wait()
        except TimeoutError:
            pass
        finally:
            self._waiters -= 1
        return self.store.device(key)

    # ------------------------------------------------------------------ edge -> cloud

    def hello(self, node: str, origin: str) -> None:
        """Check an agent's announced origin; ValueError if it is not ``<node>.<boot id>``."""
        boot = origin.removeprefix(f"{node}.")
        if boot == origin or not _BOOT.fullmatch(boot):
            raise ValueError(f"origin {origin[:160]!r} is not {node!r} plus '.' and a boot id")
        self.store.forget_origins(node, keep=origin)

    def apply_batch(self, *, node: str, origin: str, records: list[Any]) -> BatchResult:
        """Apply an outbox batch exactly once per record; raises BatchError or a store error."""
        now = self._clock()
        self._applied_at.clear()
        self._desired_writes.clear()
        txn = self.store.begin()
        mark = self.store.uplink_mark(origin)
        last = mark
        result = BatchResult()
        for record in records:
            if not isinstance(record, dict):
                raise BatchError("every record is a JSON object")
            outbox_id = record.get("outboxId")
            if isinstance(outbox_id, bool) or not isinstance(outbox_id, int) or outbox_id < 1:
                raise BatchError("every record needs an integer outboxId >= 1")
            if outbox_id <= last:
                if outbox_id <= mark:
                    result.duplicates += 1
                    continue
                raise BatchError(f"outboxId {outbox_id} after {last}: ids must increase")
            last = outbox_id
            try:
                self._apply_record(txn, node=node, origin=origin, record=record, now=now)
            except _RejectedError as rejected:
                log.warning(
                    "twins: record %s of %s dead-lettered: %s", outbox_id, node, rejected.reason
                )
                txn.dead_letter(node, rejected.device, rejected.reason, record)
                result.rejected += 1
            else:
                result.applied += 1
        txn.marks[origin] = (node, last)
        added = self.store.commit(txn)
        stored = self._clock()
        for at in self._applied_at:
            # A clock behind the agent's would give negative times: they count as 0.
            self.end_to_end.observe(max(0.0, stored - at))
        self._applied_at.clear()
        result.desired_writes, self._desired_writes = self._desired_writes, []
        counters = self.counters
        counters.batches += 1
        counters.records_applied += result.applied
        counters.records_duplicate += result.duplicates
        counters.records_rejected += result.rejected
        counters.downlink_queued += len(added)
        if added:
            self._wake(node)
        self.notify_soon()
        return result

    def _apply_record(
        self, txn: Transaction, *, node: str, origin: str, record: dict[str, Any], now: float
    ) -> None:
        kind = record.get("kind")
        device = record.get("device")
        if not isinstance(device, str) or not DEVICE_ID.fullmatch(device):
            raise _RejectedError("device must be a device id ([A-Za-z0-9][A-Za-z0-9._-]{0,63})")
        key = (node, device)
        if kind == "device":
            self._onboarded(txn, key, origin=origin, record=record, now=now)
        elif kind == "twin-change":
            self._twin_change(txn, key, origin=origin, record=record, now=now)
        elif kind == "availability":
            self._availability(txn, key, origin=origin, record=record)
        elif kind == "change-rejected":
            self._change_rejected(txn, key, record=record, now=now)
        elif kind in ("device-removed", "device-moved"):
            # A moved device now belongs to the node it went to (which onboards it with a
            # ``device`` record of its own); here it ends like a removed one. An operator's
            # removal may have deleted the row already (twin=delete) or marked it revoked.
            row = txn.get(key)
            if row is None and kind == "device-removed":
                return
            row = _existing(txn, key)
            txn.purge(key)
            state = DeviceState.REVOKED if row.state is DeviceState.REVOKED else DeviceState.REMOVED
            txn.put(dataclasses.replace(row, state=state, updated=now))
        else:
            raise _RejectedError(f"unknown record kind {str(kind)[:64]!r}", device=device)

    def _onboarded(
        self, txn: Transaction, key: DeviceKey, *, origin: str, record: dict[str, Any], now: float
    ) -> None:
        _same_origin(record.get("origin"), origin, key[1])
        model = record.get("model")
        version = record.get("modelVersion", "")
        if not isinstance(model, str) or not _MODEL_NAME.fullmatch(model):
            raise _RejectedError("model must be a model name", device=key[1])
        if not isinstance(version, str) or len(version) > 64:
            raise _RejectedError("modelVersion must be a string of at most 64", device=key[1])
        old = txn.get(key)
        if old is None and self.store.count_devices(key[0]) >= self.settings.max_devices_per_node:
            limit = self.settings.max_devices_per_node
            raise _RejectedError(f"node has {limit} devices already (the cap)", device=key[1])
        replica = self.store.new_replica()
        txn.purge(key)
        source = self.store.moved_from(key)
        if source is not None:
            # Moved here from another node: its desired values come along.
            txn.moves.append(((source, key[1]), None, now))
            old_twin = txn.get((source, key[1])) or old
        else:
            old_twin = old
        if old_twin is not None and old_twin.replica.twin.desired.values:
            replica = self._carry_desired(
                txn, key=key, replica=replica, old=old_twin, model_name=model, now=now
            )
        txn.put(
            DeviceRow(
                node=key[0],
                device=key[1],
                model=model,
                model_version=version,
                state=DeviceState.ACTIVE,
                created=old.created if old is not None else now,
                updated=now,
                replica=replica,
                edge_origin=origin,
            )
        )

    def _carry_desired(
        self,
        txn: Transaction,
        *,
        key: DeviceKey,
        replica: Replica,
        old: DeviceRow,
        model_name: str,
        now: float,
    ) -> Replica:
        values = dict(old.replica.twin.desired.values)
        model = self.models.get(model_name)
        try:
            if model is not None:
                values = model.validate_desired(values)
            replica, change = write_change(replica, Section.DESIRED, values, now=now)
        except DeviceModelsError as error:
            log.warning("twins: desired of %s not carried to its new twin: %s", key, error)
            return replica
        txn.queue(key, {"device": key[1], "change": change.to_json()})
        return replica

    def _twin_change(
        self, txn: Transaction, key: DeviceKey, *, origin: str, record: dict[str, Any], now: float
    ) -> None:
        device = key[1]
        try:
            change = TwinChange.from_json(record.get("change"))
        except DeviceModelsError as error:
            raise _RejectedError(f"malformed change: {error.summary}", device=device) from None
        if change.origin != origin or change.role is not Role.EDGE:
            raise _RejectedError("a change must come from the session's edge origin", device=device)
        row = txn.get(key) or self._implicit_row(key, origin=origin, record=record, now=now)
        if row.state is not DeviceState.ACTIVE:
            raise _RejectedError(f"change for a {row.state} device", device=device)
        row = _resume_edge_origin(row, change)
        written = change  # as the edge wrote it; `change` may be emptied below
        problem: str | None = None
        # A change the model or the limits refuse uses up its seq without its values, so
        # that later changes from the same origin still apply (the edge does the same).
        empty = dataclasses.replace(change, values={}, metadata={})
        refusal = _refusal(self.models.get(row.model), change, row.model)
        if refusal is not None:
            problem = f"change {change.origin}#{change.seq} not applied: {refusal[1]}"
            change = empty
        try:
            try:
                result = apply_change(row.replica, change)
            except LimitExceededError as error:
                problem = f"change {change.origin}#{change.seq} not applied: {_describe(error)}"
                result = apply_change(row.replica, empty)
        except SequenceGapError as error:
            txn.put(dataclasses.replace(row, sync_error=str(error.problems[0])))
            raise _RejectedError(str(error.problems[0]), device=device) from None
        if result.applied:
            self.counters.changes_applied += 1
            self._observe_reported(key, change, result.patch)
            self._note_desired(device, written, refused=refusal and refusal[0])
        else:
            self.counters.changes_duplicate += 1
        txn.put(
            dataclasses.replace(
                row, replica=result.replica, updated=now, sync_error=problem or row.sync_error
            )
        )
        if problem is not None:
            raise _RejectedError(problem, device=device)
        if result.applied:
            self._applied_at.append(change.at)

    def _note_desired(self, device: str, written: TwinChange, *, refused: str | None) -> None:
        """Keep an edge change to desired for the caller's audit (rule 7)."""
        if written.section is Section.DESIRED and written.values:
            self._desired_writes.append(
                EdgeDesiredWrite(
                    device=device,
                    change=f"{written.origin}#{written.seq}",
                    keys=tuple(sorted(written.values)),
                    refused=refused,
                )
            )

    def _observe_reported(self, key: DeviceKey, change: TwinChange, patch: JsonObject) -> None:
        if change.section is Section.REPORTED and patch:
            for observer in self.reported_observers:  # telemetry history (twins/telemetry.py)
                observer(key, patch, change.at)

    def _implicit_row(
        self, key: DeviceKey, *, origin: str, record: dict[str, Any], now: float
    ) -> DeviceRow:
        """A row for a change whose device the cloud does not know (a restored store)."""
        model = record.get("model")
        if not isinstance(model, str) or not _MODEL_NAME.fullmatch(model):
            raise _RejectedError("unknown device and no model name", device=key[1])
        return DeviceRow(
            node=key[0],
            device=key[1],
            model=model,
            model_version="",
            state=DeviceState.ACTIVE,
            created=now,
            updated=now,
            replica=self.store.new_replica(),
            edge_origin=origin,
        )

    def _availability(
        self, txn: Transaction, key: DeviceKey, *, origin: str, record: dict[str, Any]
    ) -> None:
        _same_origin(record.get("origin"), origin, key[1])
        status = record.get("status")
        at = record.get("at")
        if status not in ("online", "offline", None):
            raise _RejectedError("status must be online, offline or null", device=key[1])
        if isinstance(at, bool) or not isinstance(at, int | float) or not at >= 0:
            raise _RejectedError("at must be epoch seconds", device=key[1])
        row = _existing(txn, key)
        if row.availability_at is None or float(at) >= row.availability_at:
            txn.put(dataclasses.replace(row, availability=status, availability_at=float(at)))

    def _change_rejected(
        self, txn: Transaction, key: DeviceKey, *, record: dict[str, Any], now: float
    ) -> None:
        row = _existing(txn, key)
        rejected: JsonObject = {
            "origin": str(record.get("origin"))[:160],
            "seq": record.get("seq") if isinstance(record.get("seq"), int) else None,
            "section": str(record.get("section"))[:16],
            "error": record.get("error") if isinstance(record.get("error"), dict) else None,
            "at": now,
        }
        if len(repr(rejected)) > MAX_REJECTED_BYTES:
            rejected["error"] = {"message": "(too large to keep)"}
        log.warning("twins: the edge refused change %s of %s", rejected.get("seq"), key)
        txn.put(dataclasses.replace(row, last_rejected=rejected, updated=now))

    # ------------------------------------------------------------------ API -> edge

    def write(
        self,
        key: DeviceKey,
        section: Section,
        patch: object,
        *,
        expected_version: int | None = None,
    ) -> DeviceRow:
        """A local write (the REST API writes desired); the change is queued for the edge.

        Raises the errors of `device_models` (ValidationError, VersionConflictError,
        LimitExceededError...) or UnknownDeviceError, DeviceRemovedError, ModelUnknownError,
        QueueFullError.
        """
        row = self.store.device(key)
        if row is None:
            raise UnknownDeviceError(f"{key[0]}:{key[1]}")
        if row.state is not DeviceState.ACTIVE:
            raise DeviceRemovedError(f"{row.id} was {row.state} from its node")
        model = self.models.get(row.model)
        if model is None:
            raise ModelUnknownError(row.model)
        if not isinstance(patch, dict) or not patch:
            problem = Problem(path=str(section), reason="must be a non-empty JSON object")
            raise ValidationError("invalid patch", (problem,))
        checked = (
            model.validate_desired(patch)
            if section is Section.DESIRED
            else model.validate_reported(patch)
        )
        queued = self.store.downlink_count(key[0])
        if queued >= self.settings.max_downlink_per_node:
            raise QueueFullError(f"{queued} changes wait for node {key[0]} already")
        now = self._clock()
        replica, change = write_change(
            row.replica, section, checked, now=now, expected_version=expected_version
        )
        updated = dataclasses.replace(row, replica=replica, updated=now)
        txn = self.store.begin()
        txn.put(updated)
        txn.queue(key, {"device": key[1], "change": change.to_json()})
        self.store.commit(txn)
        self.counters.downlink_queued += 1
        self._wake(key[0])
        self.notify_soon()
        return updated

    def move(self, key: DeviceKey, target: str) -> str:
        """Ask the device's node to hand it over to `target` (docs/twins.md, "Moving").

        Returns the pending target. Raises UnknownDeviceError, DeviceRemovedError,
        SameNodeError, MovePendingError or QueueFullError.
        """
        row = self.store.device(key)
        if row is None:
            raise UnknownDeviceError(f"{key[0]}:{key[1]}")
        if row.state is not DeviceState.ACTIVE:
            raise DeviceRemovedError(f"{row.id} was {row.state} from its node")
        if target == key[0]:
            raise SameNodeError(f"{row.id} is on node {target} already")
        pending = self.store.pending_move(key)
        if pending is not None:
            raise MovePendingError(f"{row.id} is being moved to node {pending} already")
        queued = self.store.downlink_count(key[0])
        if queued >= self.settings.max_downlink_per_node:
            raise QueueFullError(f"{queued} changes wait for node {key[0]} already")
        now = self._clock()
        txn = self.store.begin()
        txn.queue(key, {"device": key[1], "command": {"op": "move", "to": target}})
        txn.moves.append((key, target, now))
        self.store.commit(txn)
        self.counters.downlink_queued += 1
        log.info("twins: moving %s to node %s", row.id, target)
        self._wake(key[0])
        self.notify_soon()
        return target

    # ------------------------------------------------------------------ lifecycle commands

    def command(self, key: DeviceKey, command: JsonObject) -> int:
        """Queue a lifecycle command for the device's node; its downlink row id.

        ``{"op": "register", "model", "secretSha256"}``, ``{"op": "remove"}`` or
        ``{"op": "revoke"}`` (docs/twins.md, "Device lifecycle"). `wait_command` waits for
        the agent's answer. Raises QueueFullError.
        """
        queued = self.store.downlink_count(key[0])
        if queued >= self.settings.max_downlink_per_node:
            raise QueueFullError(f"{queued} changes wait for node {key[0]} already")
        txn = self.store.begin()
        txn.queue(key, {"device": key[1], "command": command})
        [row_id] = self.store.commit(txn)
        self.counters.downlink_queued += 1
        self._commands[row_id] = asyncio.get_running_loop().create_future()
        self._wake(key[0])
        return row_id

    async def wait_command(self, row_id: int, *, within: float) -> CommandOutcome | None:
        """The agent's answer to command `row_id`; None (and the command dropped) on timeout.

        A command not answered in time is taken off the queue, so a node that comes back
        later does not act on a request whose caller was told it failed (one already in
        flight may still be applied: the operator sees the outcome on the device).
        """
        future = self._commands.get(row_id)
        if future is None:
            return None
        try:
            async with asyncio.timeout(within):
                return await asyncio.shield(future)
        except TimeoutError:
            self.store.remove_downlink([row_id])
            return None
        finally:
            self._commands.pop(row_id, None)

    def finish_removal(self, key: DeviceKey, *, state: DeviceState, delete_twin: bool) -> None:
        """The agent removed or revoked the device: keep its twin (marked) or delete it."""
        row = self.store.device(key)
        if row is None:
            return
        txn = self.store.begin()
        if delete_twin:
            txn.delete(key)
        else:
            txn.purge(key)
            txn.put(dataclasses.replace(row, state=state, updated=self._clock()))
        self.store.commit(txn)
        self.notify_soon()

    def downlink_done(self, ids: list[int]) -> None:
        """The edge applied (or already had, or dead-lettered itself) these changes."""
        self.store.remove_downlink(ids)
        self.counters.downlink_acked += len(ids)
        for row_id in ids:
            future = self._commands.get(row_id)
            if future is not None and not future.done():
                future.set_result(CommandOutcome(ok=True))

    def downlink_failed(self, node: str, row_id: int, error: str, message: str) -> None:
        """The edge cannot ever apply this change: keep it as a dead letter, drop it.

        A lifecycle command whose caller waits is answered instead: the caller gets the
        agent's reason, nothing is dead-lettered.
        """
        reason = f"{error}: {message}"
        row = self.store.downlink_row(row_id)
        if row is None or row.node != node:
            return
        future = self._commands.get(row_id)
        if future is not None and not future.done():
            self.store.remove_downlink([row_id])
            future.set_result(CommandOutcome(ok=False, error=error, message=message))
            return
        self.counters.downlink_failed += 1
        log.warning("twins: change %s for %s:%s dropped: %s", row_id, node, row.device, reason)
        txn = self.store.begin()
        txn.removed_downlink.append(row_id)
        txn.dead_letter(node, row.device, f"edge refused: {reason}", row.body)
        what = "a change"
        if '"command"' in row.body:
            txn.moves.append(((node, row.device), None, self._clock()))  # the move is off
            what = "the move"
        device = self.store.device((node, row.device))
        if device is not None:
            txn.put(dataclasses.replace(device, sync_error=f"edge refused {what}: {reason}"))
        self.store.commit(txn)
        self.notify_soon()


def _describe(error: DeviceModelsError) -> str:
    """One line: the summary and the first few problems (path: reason)."""
    problems = "; ".join(str(problem) for problem in error.problems[:3])
    return f"{error.summary} ({problems})" if problems else error.summary


def _version_reached(row: DeviceRow | None, wanted: Mapping[Section, int]) -> bool:
    """Whether a section of ``wanted`` reached its version (one read of the row for all)."""
    return row is not None and any(
        row.replica.twin.section(section).version >= version for section, version in wanted.items()
    )


def _active(row: DeviceRow | None) -> bool:
    return row is not None and row.state is DeviceState.ACTIVE


def _existing(txn: Transaction, key: DeviceKey) -> DeviceRow:
    row = txn.get(key)
    if row is None:
        raise _RejectedError("unknown device", device=key[1])
    return row


def _resume_edge_origin(row: DeviceRow, change: TwinChange) -> DeviceRow:
    """`row`, taking the edge origin's numbering up at `change` if the cloud has no count of it.

    Only a twin store restored from an older backup (its rebase forgets every edge count) or
    recreated meets an edge origin past its first change: the agent has deleted what the
    cloud acknowledged since. Refusing the gap would dead-letter every change to come; what
    the lost changes alone wrote stays as the backup had it until the device reports it again.
    """
    if change.origin in row.replica.applied or change.seq <= 1:
        return row
    log.warning(
        "twins: %s resumes edge origin %s at change %s (the cloud lost the ones before)",
        row.id,
        change.origin,
        change.seq,
    )
    applied = {**row.replica.applied, change.origin: change.seq - 1}
    return dataclasses.replace(row, replica=dataclasses.replace(row.replica, applied=applied))


def _same_origin(value: object, origin: str, device: str) -> None:
    if value != origin:
        raise _RejectedError("origin must be the session's edge origin", device=device)


def _refusal(model: DeviceModel | None, change: TwinChange, name: str) -> tuple[str, str] | None:
    """(reason word, text) of why the cloud does not apply a change's values (rules 3, 7)."""
    try:
        _check_values(model, change)
    except ValidationError as error:
        return "invalid_value", _describe(error)
    # Desired is the cloud's; the edge writes it only for a model that allows it, and a model
    # this cloud does not hold cannot be checked for that.
    allowed = model is not None and model.local_control
    if change.section is Section.DESIRED and change.values and not allowed:
        text = f"desired written at the edge, and model {name} does not allow local control"
        return "local_control_not_allowed", text
    return None


def _check_values(model: DeviceModel | None, change: TwinChange) -> None:
    if model is None:  # a model only the edge knows: the edge validated it
        return
    values = dict(change.values)
    if change.section is Section.DESIRED:
        model.validate_desired(values)
    else:
        model.validate_reported(values)
